"""grpo.tasks.difficulty by hand: pass-rate estimates, bands, allocation, the curriculum's step."""

import pytest

from grpo.tasks import difficulty


def test_pass_rate_is_the_beta_posterior_mean():
    # prior Beta(1, 1): unseen 1/2; 4 of 4 -> 5/6; 0 of 4 -> 1/6; 3 of 4 -> 4/6
    assert difficulty.pass_rate(0, 0, (1, 1)) == 0.5
    assert difficulty.pass_rate(4, 4, (1, 1)) == pytest.approx(5 / 6)
    assert difficulty.pass_rate(0, 4, (1, 1)) == pytest.approx(1 / 6)
    assert difficulty.pass_rate(3, 4, (1, 1)) == pytest.approx(4 / 6)
    # prior Beta(1, 3) (a pessimistic 1/4): 2 of 4 -> 3/8
    assert difficulty.pass_rate(2, 4, (1, 3)) == pytest.approx(3 / 8)


def test_a_visit_decays_the_old_counts():
    # decay 0.5: (4, 4) then 2 of 4 -> (0.5*4 + 2, 0.5*4 + 4) = (4, 6), estimate (1 + 4) / (2 + 6) = 5/8
    counts = difficulty.decayed((4, 4), (2, 4), 0.5)
    assert counts == (4, 6) and difficulty.pass_rate(*counts, (1, 1)) == pytest.approx(5 / 8)
    assert difficulty.decayed((4, 4), (2, 4), 0.0) == (2, 4)  # only the last visit (prime-rl)
    assert difficulty.decayed((4, 4), (2, 4), 1.0) == (6, 8)  # every visit alike


def test_bands_by_estimate():
    # edges belong to learnable: 0.2 and 0.8 are learnable, 5/6 easy, 1/6 hard
    assert [difficulty.band(r, 0.2, 0.8) for r in (5 / 6, 0.8, 0.5, 0.2, 1 / 6)] == [
        "easy", "learnable", "learnable", "learnable", "hard"]


@pytest.mark.parametrize("n, weights, sizes, expected", [
    # 8 * (0.1, 0.8, 0.1) = (0.8, 6.4, 0.8): floors (0, 6, 0), remainders 0.8, 0.4, 0.8 -> the two 0.8s
    (8, [0.1, 0.8, 0.1], [10, 30, 10], [1, 6, 1]),
    # the hard pool is empty: 8 * (1/9, 8/9) = (0.89, 7.11) -> (0, 7) + the larger remainder -> [1, 7, 0]
    (8, [0.1, 0.8, 0.1], [5, 30, 0], [1, 7, 0]),
    # the learnable pool holds 3: [1, 7] caps it at 3, its 4 left over go to the easy pool -> [5, 3, 0]
    (8, [0.1, 0.8, 0.1], [5, 3, 0], [5, 3, 0]),
    # weight 0 is never drawn: all 4 from learnable
    (4, [0.0, 1.0, 0.0], [9, 9, 9], [0, 4, 0]),
    # more draws (5) than weighted prompts (2 + 1): one pass takes all 3, the second splits 2 by weight
    # 2 * (0.5, 0.5) over the pools of size (2, 1) -> (1, 1)
    (5, [0.5, 0.5, 0.0], [2, 1, 4], [3, 2, 0]),
])
def test_allocation_by_hand(n, weights, sizes, expected):
    assert difficulty.allocate(n, weights, sizes) == expected


def test_allocation_without_a_weighted_prompt_says_so():
    with pytest.raises(ValueError, match="no pool with a positive weight"):
        difficulty.allocate(2, [1.0, 0.0, 0.0], [0, 5, 5])


def test_the_curriculum_rises_at_the_threshold_once_its_window_is_full():
    # window 2, threshold 0.75: 7/8 and exactly 6/8 rise, 5/8 does not; one step alone is not a full window
    assert difficulty.next_level(0, 5, [(3, 4), (4, 4)], 2, 0.75) == 1
    assert difficulty.next_level(0, 5, [(2, 4), (4, 4)], 2, 0.75) == 1
    assert difficulty.next_level(0, 5, [(2, 4), (3, 4)], 2, 0.75) == 0
    assert difficulty.next_level(0, 5, [(4, 4)], 2, 0.75) == 0
    assert difficulty.next_level(0, 5, [(0, 4), (4, 4), (4, 4)], 2, 0.75) == 1  # only the last 2 steps count
    assert difficulty.next_level(5, 5, [(4, 4), (4, 4)], 2, 0.75) == 5  # the last level stays
