"""Several rewards into advantages (algorithm.REWARD_AGGREGATIONS) against hand-computed values."""

import math

import pytest
import torch

from grpo import algorithm
from grpo.algorithm import (
    decoupled_advantages,
    decoupled_signal,
    decoupled_sum,
    group_advantages,
    summed_advantages,
    summed_signal,
    weighted_sum,
)

# f1 [1, 0, 0 | 1, 1, 0], f2 [0, 2, 2 | 0, 0, 0], weights [2, 1]: totals [2, 2, 2 | 2, 2, 0]
SCORES = torch.tensor([[1.0, 0, 0, 1, 1, 0], [0, 2, 2, 0, 0, 0]])
WEIGHTS = torch.tensor([2.0, 1.0], dtype=torch.float64)


def test_weighted_sum_counts_a_failed_call_as_zero():
    # [[1, NaN], [0.5, 2]], weights [1, 2] -> [1 + 2 * 0.5, 0 + 2 * 2] = [2, 4]
    scores = torch.tensor([[1.0, float("nan")], [0.5, 2.0]])
    assert weighted_sum(scores, torch.tensor([1.0, 2.0])).tolist() == [2.0, 4.0]
    assert weighted_sum(torch.zeros(0, 3), torch.zeros(0)).tolist() == [0.0, 0.0, 0.0]


def test_normalize_then_sum_two_rewards_two_groups_by_hand():
    # f1: g1 mean 1/3, std 1/sqrt(3) -> [2, -1, -1] / sqrt(3); g2 [1, 1, 0] -> [1, 1, -2] / sqrt(3)
    # f2: g1 [0, 2, 2] -> [-2, 1, 1] / sqrt(3); g2 all equal -> 0
    # S = 2 f1 + f2 = [2, -1, -1, 2, 2, -4] / sqrt(3); sum of squares 30 / 3 = 10, / (6 - 1) -> std sqrt(2)
    # -> A = [2, -1, -1, 2, 2, -4] / sqrt(6)
    s3, s6 = math.sqrt(3), math.sqrt(6)
    torch.testing.assert_close(decoupled_sum(SCORES, WEIGHTS, 3, eps=0.0),
                               torch.tensor([2, -1, -1, 2, 2, -4]) / s3)
    torch.testing.assert_close(decoupled_advantages(SCORES, WEIGHTS, 3, eps=0.0),
                               torch.tensor([2, -1, -1, 2, 2, -4]) / s6)
    # sum_then_normalize: group 1's total [2, 2, 2] is constant -> 0; group 2 [2, 2, 0]: mean 4/3,
    # std sqrt(4/3) -> [2/3, 2/3, -4/3] / 1.1547 = [0.5774, 0.5774, -1.1547]
    torch.testing.assert_close(summed_advantages(SCORES, WEIGHTS, 3, eps=0.0),
                               torch.tensor([0, 0, 0, 1, 1, -2]) / s3)


def test_eps_is_added_to_every_std():
    # f1 g2: 1/sqrt(3) -> 1/sqrt(3) + eps; the batch std of S likewise: the hand values move by eps
    eps = 0.1
    a, b = 1 / math.sqrt(3) + eps, 2 / math.sqrt(3) + eps  # std of [1, 0, 0], of [0, 2, 2]
    f1 = torch.tensor([2 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3, -2 / 3]) / a
    f2 = torch.tensor([-4 / 3, 2 / 3, 2 / 3, 0, 0, 0]) / b
    total = 2 * f1 + f2
    torch.testing.assert_close(decoupled_advantages(SCORES, WEIGHTS, 3, eps=eps), total / (total.std() + eps))


def test_a_failed_call_scores_zero_as_in_the_total():
    failed = SCORES.clone()
    failed[1, 3] = float("nan")  # f2 failed on row 3, where it scored 0
    for aggregation in algorithm.REWARD_AGGREGATIONS.values():
        assert torch.equal(aggregation.advantages(failed, WEIGHTS, 3), aggregation.advantages(SCORES, WEIGHTS, 3))
    failed[0, 0] = float("nan")  # f1's only 1 of group 1 failed: f1 no longer varies there
    assert torch.equal(decoupled_sum(failed, WEIGHTS, 3)[:3],
                       WEIGHTS[1].float() * group_advantages(torch.tensor([0.0, 2, 2]), 3))


def test_one_reward_is_sum_then_normalize_over_its_batch_std():
    # one function of weight w: A_sum = sign(w) A_f; normalize_then_sum = w A_f / std(w A_f) (eps 0)
    torch.manual_seed(0)
    scores = torch.randint(0, 4, (1, 24)).float()
    for w in (3.0, -0.5):
        weights = torch.tensor([w], dtype=torch.float64)
        summed = summed_advantages(scores, weights, 4, eps=0.0)
        assert summed.abs().sum() > 0
        torch.testing.assert_close(decoupled_advantages(scores, weights, 4, eps=0.0) * summed.std(), summed)


def test_scale_none_is_sum_then_normalize_and_batch_divides_by_each_functions_batch_std():
    torch.manual_seed(1)
    scores, weights = torch.rand(3, 12), torch.tensor([1.0, 0.5, -2.0], dtype=torch.float64)
    torch.testing.assert_close(decoupled_advantages(scores, weights, 4, scale="none"),
                               summed_advantages(scores, weights, 4, scale="none"))
    # batch: f1 [1, 0 | 3, 3] -> centred [0.5, -0.5, 0, 0] / std 1.5; f2 [0, 2 | 1, 1] -> [-1, 1, 0, 0] / std 0.8165
    # S = [1/3 - 1.2247, -(1/3 - 1.2247), 0, 0] = [-0.8914, 0.8914, 0, 0]; its std sqrt(2 * 0.8914^2 / 3)
    batch = torch.tensor([[1.0, 0, 3, 3], [0, 2, 1, 1]])
    s = 1 / 3 - 1 / math.sqrt(2 / 3)
    expected = torch.tensor([s, -s, 0, 0]) / math.sqrt(2 * s * s / 3)
    torch.testing.assert_close(decoupled_advantages(batch, torch.ones(2), 2, scale="batch", eps=0.0), expected)


def test_weights_zero_drops_a_function_and_a_common_factor_cancels():
    third = torch.tensor([[5.0, 1, 2, 0, 0, 9]])
    with_zero = torch.cat([SCORES, third])
    zero = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    assert torch.equal(decoupled_advantages(with_zero, zero, 3), decoupled_advantages(SCORES, WEIGHTS, 3))
    assert torch.equal(decoupled_signal(with_zero, zero, 3), decoupled_signal(SCORES, WEIGHTS, 3))
    # the batch division takes out any common factor of the weights (up to eps)
    torch.testing.assert_close(decoupled_advantages(SCORES, 10 * WEIGHTS, 3, eps=0.0),
                               decoupled_advantages(SCORES, WEIGHTS, 3, eps=0.0))


def test_rewards_that_cancel_give_exact_zeros_not_rounding_noise():
    # f1 [1, 0, 0], f2 [0, 1, 1] of equal weight: A_f2 = -A_f1, S = 0 (float leaves ~1e-7)
    scores, weights = torch.tensor([[1.0, 0, 0, 1, 0, 0], [0, 1, 1, 0, 0, 0]]), torch.ones(2, dtype=torch.float64)
    residue = sum(group_advantages(row, 3) for row in scores)[:3]
    assert residue.abs().max() > 0  # what the cancellation test is there for
    advantages = decoupled_advantages(scores, weights, 3, eps=0.0)
    assert advantages[:3].tolist() == [0.0, 0.0, 0.0] and advantages[3:].abs().min() > 0
    assert decoupled_signal(scores, weights, 3).tolist() == [False, True]


def test_signal_follows_the_aggregation():
    # group 1: total constant, rewards vary and do not cancel -> signal only for normalize_then_sum
    assert summed_signal(SCORES, WEIGHTS, 3).tolist() == [False, True]
    assert decoupled_signal(SCORES, WEIGHTS, 3).tolist() == [True, True]
    # a varying total whose rewards cancel once normalized: f1 [1, 0, 0], f2 [0, 2, 2], weights 1, 1
    # (exactly at eps 0; eps leaves ~eps / std of them when their stds differ, as in GDPO and TRL)
    cancel = torch.ones(2, dtype=torch.float64)
    assert summed_signal(SCORES[:, :3], cancel, 3).tolist() == [True]
    assert decoupled_signal(SCORES[:, :3], cancel, 3, eps=0.0).tolist() == [False]
    assert decoupled_advantages(SCORES[:, :3], cancel, 3, eps=0.0).tolist() == [0.0, 0.0, 0.0]
    # tolerance is in each reward's own units: f1's std 0.577 and f2's 1.155 -> at 0.6 only f2 counts
    assert decoupled_signal(SCORES, WEIGHTS, 3, tolerance=0.6).tolist() == [True, False]
    assert decoupled_signal(SCORES, WEIGHTS, 3, tolerance=2.0).tolist() == [False, False]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("name", list(algorithm.REWARD_AGGREGATIONS))
def test_at_tolerance_zero_signal_is_exactly_nonzero_advantages(name, scale):
    aggregation = algorithm.REWARD_AGGREGATIONS[name]
    torch.manual_seed(2)
    for _ in range(20):  # small integer rewards: equal, constant-total and cancelling groups all occur
        scores = torch.randint(0, 2, (2, 24)).float() * torch.tensor([[1.0], [2.0]])
        weights = torch.tensor([[1.0, 1.0], [2.0, 1.0], [1.0, -0.5]][_ % 3], dtype=torch.float64)
        advantages = aggregation.advantages(scores, weights, 3, scale, 1e-4).view(-1, 3)
        assert torch.equal(aggregation.with_signal(scores, weights, 3, 0.0, scale, 1e-4), (advantages != 0).any(1))


def test_no_reward_no_signal_and_bad_input():
    assert decoupled_advantages(torch.zeros(0, 4), torch.zeros(0), 2).tolist() == [0.0] * 4
    assert decoupled_signal(torch.zeros(0, 4), torch.zeros(0), 2).tolist() == [False, False]
    assert decoupled_advantages(torch.ones(2, 4), torch.ones(2), 2, eps=0.0).tolist() == [0.0] * 4  # no 0 / 0
    with pytest.raises(ValueError, match="scale"):
        decoupled_advantages(SCORES, WEIGHTS, 3, scale="median")
