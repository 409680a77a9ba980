"""Adaptive group sizes: the allocation by hand and against brute force."""

import itertools

import pytest

from grpo.algorithm.allocation import (
    GROUP_POLICIES,
    adaptive_sizes,
    informative_probability,
    marginal_gain,
)


def test_informative_probability_and_gain_by_hand():
    # p 0.5: f(2) = 1 - 0.25 - 0.25 = 0.5, f(3) = 1 - 2/8 = 0.75 -> gain 0.25 = 0.25 (0.5 + 0.5)
    assert informative_probability(0.5, 2) == 0.5 and informative_probability(0.5, 3) == 0.75
    assert marginal_gain(0.5, 2) == 0.25
    # p 0.9, G 2: f = 1 - 0.81 - 0.01 = 0.18; f(3) = 1 - 0.729 - 0.001 = 0.27 -> gain 0.09
    assert marginal_gain(0.9, 2) == pytest.approx(0.09)
    assert informative_probability(0.0, 5) == 0.0 and marginal_gain(1.0, 3) == 0.0


def test_gains_never_increase_so_greedy_is_optimal():
    for p in (0.01, 0.2, 0.5, 0.77, 0.99):
        gains = [marginal_gain(p, G) for G in range(1, 30)]
        assert all(a >= b for a, b in zip(gains, gains[1:], strict=False))
        for G in range(1, 10):
            assert marginal_gain(p, G) == pytest.approx(informative_probability(p, G + 1) - informative_probability(p, G))


def test_docstring_example_by_hand():
    # p (0.5, 0.9, 0.99), budget 9, G in [2, 5]: start (2, 2, 2); gains 0.25, 0.09, 0.0099
    # 1st -> prompt 0 (its next gain 0.125), 2nd -> prompt 0 (next 0.0625), 3rd -> prompt 1 (0.09)
    assert adaptive_sizes([0.5, 0.9, 0.99], 9, 2, 5) == [4, 3, 2]


def _best_by_brute_force(rates, budget, low, high):
    """The largest expected number of informative groups over every split of the budget."""
    return max(sum(informative_probability(p, G) for p, G in zip(rates, sizes, strict=True))
               for sizes in itertools.product(range(low, high + 1), repeat=len(rates)) if sum(sizes) == budget)


@pytest.mark.parametrize("rates", [(0.5, 0.9), (0.1, 0.5, 0.95), (0.3, 0.3, 0.8), (0.02, 0.6, 0.99)])
def test_greedy_matches_brute_force(rates):
    for budget in range(2 * len(rates), 8 * len(rates) + 1):
        sizes = adaptive_sizes(list(rates), budget, 2, 8)
        assert sum(sizes) == budget and all(2 <= G <= 8 for G in sizes)
        value = sum(informative_probability(p, G) for p, G in zip(rates, sizes, strict=True))
        assert value == pytest.approx(_best_by_brute_force(rates, budget, 2, 8), abs=1e-12)


def test_equal_estimates_give_the_fixed_sizes():
    # ties go to the earlier prompt: round-robin, so budget n * G gives each prompt G
    assert adaptive_sizes([0.5] * 4, 16, 2, 8) == [4, 4, 4, 4]
    assert adaptive_sizes([0.5] * 4, 14, 2, 8) == [4, 4, 3, 3]
    assert GROUP_POLICIES["fixed"]([0.1, 0.9], 0, 0, 0, 6) == [6, 6]


def test_max_caps_a_prompt_and_the_rest_goes_elsewhere():
    # p 0.999 gains ~0.001 a completion, p 0.5 gains 0.25, 0.125, 0.0625 at G = 2, 3, 4: prompt 0
    # takes 3 and stops at max 5; the 4th goes to prompt 1 whatever its gain
    assert adaptive_sizes([0.5, 0.999], 9, 2, 5) == [5, 4]


def test_budget_outside_the_bounds_is_refused():
    with pytest.raises(ValueError, match="expected 4 to 10"):
        adaptive_sizes([0.5, 0.5], 11, 2, 5)
    with pytest.raises(ValueError, match="expected 4 to 10"):
        adaptive_sizes([0.5, 0.5], 3, 2, 5)


def test_a_token_budget_by_hand():
    # the module docstring's example: p (0.5, 0.5), costs (10, 40), budget 140, G in [2, 8]
    # start (2, 2) = 100 tokens; gains per token 0.025 vs 0.00625: prompt 0 takes 3 (130 tokens), then
    # prompt 1's 40 no longer fits in the 10 left, prompt 0 takes the last 10 -> (6, 2), 140 tokens
    assert adaptive_sizes([0.5, 0.5], 140, 2, 8, costs=[10, 40]) == [6, 2]
    # equal costs: the count budget's sizes (budget / cost completions)
    for rates in ((0.5, 0.9), (0.1, 0.5, 0.95)):
        for budget in range(2 * len(rates), 8 * len(rates) + 1):
            assert adaptive_sizes(list(rates), budget * 7.0, 2, 8, costs=[7.0] * len(rates)) == adaptive_sizes(
                list(rates), budget, 2, 8)
    # every prompt keeps min_group_size even where that alone is over the budget
    assert adaptive_sizes([0.5, 0.5], 50, 2, 8, costs=[20, 20]) == [2, 2]
    with pytest.raises(ValueError, match="numbers > 0"):
        adaptive_sizes([0.5, 0.5], 50, 2, 8, costs=[20, 0])


def _best_within(rates, costs, budget, low, high):
    values = [sum(informative_probability(p, G) for p, G in zip(rates, sizes, strict=True))
              for sizes in itertools.product(range(low, high + 1), repeat=len(rates))
              if sum(c * G for c, G in zip(costs, sizes, strict=True)) <= budget]
    return max(values)


@pytest.mark.parametrize("rates,costs", [((0.5, 0.9), (12, 30)), ((0.1, 0.5, 0.95), (40, 10, 25)),
                                         ((0.3, 0.3, 0.8), (5, 50, 20))])
def test_a_token_budget_stays_within_it_and_near_the_best(rates, costs):
    # greedy by gain per token is a knapsack's greedy: within the budget, and short of the best split
    # by less than the largest single completion's gain
    for budget in range(2 * sum(costs), 8 * sum(costs) + 1, 7):
        sizes = adaptive_sizes(list(rates), budget, 2, 8, costs=list(costs))
        assert sum(c * G for c, G in zip(costs, sizes, strict=True)) <= budget and all(2 <= G <= 8 for G in sizes)
        value = sum(informative_probability(p, G) for p, G in zip(rates, sizes, strict=True))
        assert value >= _best_within(rates, costs, budget, 2, 8) - max(marginal_gain(p, 2) for p in rates) - 1e-12
