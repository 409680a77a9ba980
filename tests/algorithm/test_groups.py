"""Unequal groups (rollout.group_policy = adaptive) by hand; equal groups bit for bit as the [B, G] code."""

import math

import pytest
import torch

from grpo import algorithm
from grpo.algorithm.groups import Groups


def test_groups_by_hand():
    g = Groups.of([2, 3], 5)
    assert g.ids.tolist() == [0, 0, 1, 1, 1] and g.starts == [0, 2] and g.uniform is None
    x = torch.tensor([1.0, 0, 1, 1, 0])
    # means 1/2, 2/3; stds sqrt(0.5 / 1) = 0.7071, sqrt((2/9 + 4/9) / 2) = 0.5774
    torch.testing.assert_close(g.mean(x), torch.tensor([0.5, 2 / 3]))
    torch.testing.assert_close(g.std(x), torch.tensor([math.sqrt(0.5), math.sqrt(1 / 3)]))
    assert g.constant(torch.tensor([2.0, 2, 1, 1, 1])).tolist() == [True, True]
    assert g.constant(x).tolist() == [False, False]
    assert g.rows([1]) == [2, 3, 4] and g.select([1, 0]).sizes == (3, 2)
    assert g.first_true(torch.tensor([False, True, False, True, True])).tolist() == [1, 3]
    assert g.amax(x).tolist() == [1.0, 1.0] and g.amin(x).tolist() == [0.0, 0.0]
    assert Groups.cat([g, Groups.of(4, 8)]).sizes == (2, 3, 4, 4)
    assert Groups.of(4, 8).uniform == 4


def test_groups_reject_sizes_that_do_not_match_the_rows():
    with pytest.raises(ValueError, match="add up to 5 rows, not 6"):
        Groups.of([2, 3], 6)
    with pytest.raises(ValueError, match="divisible by group_size=4"):
        Groups.of(4, 6)


def test_unequal_group_advantages_by_hand():
    # sizes [2, 3], rewards [1, 0 | 1, 1, 0], eps 0:
    # group 1: mean 1/2, std 0.7071 -> [0.7071, -0.7071]
    # group 2: mean 2/3, std 0.5774 -> [(1/3) / 0.5774, same, (-2/3) / 0.5774] = [0.5774, 0.5774, -1.1547]
    adv = algorithm.group_advantages(torch.tensor([1.0, 0, 1, 1, 0]), [2, 3], eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([0.7071, -0.7071, 0.5774, 0.5774, -1.1547]), atol=1e-4, rtol=0)
    # scale none: centred only -> [0.5, -0.5, 1/3, 1/3, -2/3]; batch: / std of all five (0.5477)
    none = algorithm.group_advantages(torch.tensor([1.0, 0, 1, 1, 0]), [2, 3], scale="none")
    torch.testing.assert_close(none, torch.tensor([0.5, -0.5, 1 / 3, 1 / 3, -2 / 3]))
    batch = algorithm.group_advantages(torch.tensor([1.0, 0, 1, 1, 0]), [2, 3], scale="batch", eps=0.0)
    torch.testing.assert_close(batch, none / math.sqrt(0.3))
    # an equal group of 3 beside a group of 2: exact zeros
    adv = algorithm.group_advantages(torch.tensor([1.0, 0, 1, 1, 1]), [2, 3], eps=0.0)
    assert adv[2:].tolist() == [0.0, 0.0, 0.0]


def test_unequal_groups_match_each_group_alone():
    torch.manual_seed(0)
    sizes = [2, 5, 3, 7]
    rewards = torch.randint(0, 3, (sum(sizes),)).float()
    scores = torch.randint(0, 2, (2, sum(sizes))).float()
    weights = torch.tensor([1.0, 0.5])
    for scale in ("group", "none"):  # "batch" reads the whole batch, not one group
        joined = algorithm.group_advantages(rewards, sizes, scale)
        alone = torch.cat([algorithm.group_advantages(part, len(part), scale) for part in rewards.split(sizes)])
        torch.testing.assert_close(joined, alone)
        decoupled = algorithm.decoupled_sum(scores, weights, sizes, scale)
        each = torch.cat([algorithm.decoupled_sum(part, weights, part.shape[1], scale) for part in scores.split(sizes, 1)])
        torch.testing.assert_close(decoupled, each)
    signal = algorithm.groups_with_signal(rewards, sizes)
    assert signal.tolist() == [bool(algorithm.groups_with_signal(p, len(p))) for p in rewards.split(sizes)]
    both = algorithm.decoupled_signal(scores, weights, sizes)
    assert both.tolist() == [bool(algorithm.decoupled_signal(p, weights, p.shape[1])) for p in scores.split(sizes, 1)]


def _old_group_advantages(rewards, G, eps):  # the [B, G] code before unequal groups, scale "group"
    grouped = rewards.float().view(-1, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    equal = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)
    return torch.where(equal, torch.zeros_like(centred), centred / (std + eps)).flatten()


def _old_decoupled_sum(scores, weights, G, eps):
    normalized = torch.stack([_old_group_advantages(row, G, eps) for row in scores])
    terms = weights.float().unsqueeze(1) * normalized
    total = terms.sum(0).view(-1, G)
    largest = terms.abs().amax(0).view(-1, G).amax(1, keepdim=True)
    cancelled = (total.abs() <= algorithm.CANCELLED * largest).all(1, keepdim=True)
    return torch.where(cancelled, 0.0, total).flatten()


def test_fixed_group_size_is_bit_identical_to_the_reshape_code():
    torch.manual_seed(1)
    rewards = torch.rand(24) * torch.randint(0, 2, (24,))
    scores = torch.rand(3, 24)
    weights = torch.tensor([1.0, 0.3, 2.0])
    for G in (2, 4, 8):
        assert torch.equal(algorithm.group_advantages(rewards, G), _old_group_advantages(rewards, G, 1e-4))
        assert torch.equal(algorithm.group_advantages(rewards, [G] * (24 // G)), _old_group_advantages(rewards, G, 1e-4))
        assert torch.equal(algorithm.decoupled_sum(scores, weights, G), _old_decoupled_sum(scores, weights, G, 1e-4))


def test_unequal_process_advantages_by_hand():
    # sizes [1, 2]: group 0 is row 0 (steps [1, 0]), group 1 rows 1, 2 (steps [0] and [1], eps 0)
    # group 0: mean 1/2, std 0.7071 -> [0.7071, -0.7071]; group 1: mean 1/2, std 0.7071 -> [-0.7071, 0.7071]
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    rows, tokens = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 0])
    a = algorithm.process_advantages(rewards, rows, tokens, 3, 2, [1, 2], eps=0.0)
    s = math.sqrt(0.5)
    # row 0: token 0 sums both steps (0), token 1 the second (-s); row 1: -s on both; row 2: s then 0
    torch.testing.assert_close(a, torch.tensor([[0.0, -s], [-s, -s], [s, 0.0]]), atol=1e-6, rtol=0)


def test_unequal_group_extremes_by_hand():
    # sizes [2, 3], rewards [1, 3 | 2, 0, 0]: best [1, 2], worst [0, 3]; a group with one eligible row: no pair
    rewards = torch.tensor([1.0, 3, 2, 0, 0])
    best, worst, distinct = algorithm.group_extremes(rewards, [2, 3], torch.ones(5, dtype=torch.bool))
    assert best.tolist() == [1, 2] and worst.tolist() == [0, 3] and distinct.tolist() == [True, True]
    eligible = torch.tensor([True, False, True, True, False])
    best, worst, distinct = algorithm.group_extremes(rewards, [2, 3], eligible)
    assert best.tolist() == [0, 2] and worst.tolist() == [0, 3] and distinct.tolist() == [False, True]
    roles = algorithm.preference_pair_roles(rewards, [2, 3], torch.ones(5, dtype=torch.bool))
    assert roles.tolist() == [-1, 1, 1, -1, 0]
