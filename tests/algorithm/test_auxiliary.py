"""Auxiliary losses against hand-computed values: the rows each term trains, the SFT term
aggregated like the policy loss, in-group DPO and the weight schedules."""

import math

import pytest
import torch

from grpo import algorithm
from grpo.algorithm import AuxOptions

LN2, LN4 = math.log(2), math.log(4)
ALL = torch.ones(8, dtype=torch.bool)


# --------------------------------------------------------------------------- the rows


def test_group_extremes_and_roles_by_hand():
    # group 0 [1, 3, 3, 0]: best row 1 (the first of two 3s), worst row 3; group 1 all 2: no pair
    rewards = torch.tensor([1.0, 3.0, 3.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    best, worst, distinct = algorithm.group_extremes(rewards, 4, ALL)
    assert best.tolist() == [1, 4] and worst.tolist() == [3, 4] and distinct.tolist() == [True, False]
    assert algorithm.best_completion_roles(rewards, 4, ALL).tolist() == [0, 1, 0, 0, 0, 0, 0, 0]
    assert algorithm.preference_pair_roles(rewards, 4, ALL).tolist() == [0, 1, 0, -1, 0, 0, 0, 0]
    # min_reward: the best (3) must reach it
    assert algorithm.best_completion_roles(rewards, 4, ALL, min_reward=3.0).tolist() == [0, 1, 0, 0, 0, 0, 0, 0]
    assert algorithm.best_completion_roles(rewards, 4, ALL, min_reward=4.0).sum() == 0


def test_rows_with_nothing_to_train_are_never_chosen():
    # row 1 (a best) has an empty loss mask: row 2 is the best; row 3 too: row 0 (1) is the worst
    rewards = torch.tensor([1.0, 3.0, 3.0, 0.0, 2.0, 5.0, 2.0, 2.0])
    eligible = torch.tensor([True, False, True, False, False, True, False, False])
    assert algorithm.preference_pair_roles(rewards, 4, eligible).tolist() == [-1, 0, 1, 0, 0, 0, 0, 0]
    # group 1 has one eligible row: nothing to beat, no SFT row, no pair
    assert algorithm.best_completion_roles(rewards, 4, eligible).tolist() == [0, 0, 1, 0, 0, 0, 0, 0]


# --------------------------------------------------------------------------- SFT


LOGP = [[math.log(0.5), math.log(0.25)], [math.log(0.5), float("nan")]]
MASK = torch.tensor([[1, 1], [1, 0]])
SFT_CASES = {
    # loss_type: (num_items, loss, gradient of each token of row 0)
    "grpo": (1.0, (LN2 + LN4) / 2, -0.5),  # one sequence: its mean NLL
    "bnpo": (2.0, (LN2 + LN4) / 2, -0.5),  # two tokens
    "dapo": (2.0, (LN2 + LN4) / 2, -0.5),
    "dr_grpo": (1.0, (LN2 + LN4) / 4, -0.25),  # one sequence x max_completion_length 4
}


@pytest.mark.parametrize("loss_type", algorithm.LOSS_TYPES)
def test_sft_loss_value_and_gradient_by_hand(loss_type):
    # logp [[ln 0.5, ln 0.25], [ln 0.5, nan]], roles [1, 0]: only row 0 is trained
    num_items, want, grad = SFT_CASES[loss_type]
    logprobs = torch.tensor(LOGP, requires_grad=True)
    loss = algorithm.sft_loss(logprobs, None, MASK, torch.tensor([1, 0]), torch.tensor([0, 1]), num_items,
                              AuxOptions(loss_type, 4))
    assert loss.item() == pytest.approx(want, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[grad, grad], [0.0, 0.0]]))


def test_sft_count_is_what_the_aggregation_counts_on_the_trained_rows():
    roles, mask = torch.tensor([1, 0, 1]), torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    assert algorithm.AUX_LOSSES["sft"].count(roles, mask, "grpo") == 2  # two sequences
    assert algorithm.AUX_LOSSES["sft"].count(roles, mask, "dapo") == 3  # 2 + 1 tokens


def test_sft_micro_batches_add_up_to_the_whole_batch():
    torch.manual_seed(0)
    logprobs = -torch.rand(6, 5)
    mask = (torch.rand(6, 5) > 0.3).long()
    roles = torch.tensor([1, 0, 0, 1, 1, 0])
    for loss_type in algorithm.LOSS_TYPES:
        options = AuxOptions(loss_type, 5)
        n = algorithm.AUX_LOSSES["sft"].count(roles, mask, loss_type)
        whole = algorithm.sft_loss(logprobs, None, mask, roles, torch.zeros(6), n, options)
        parts = sum(algorithm.sft_loss(logprobs[s], None, mask[s], roles[s], torch.zeros(3), n, options)
                    for s in (slice(0, 3), slice(3, 6)))
        assert parts.item() == pytest.approx(whole.item(), rel=1e-6), loss_type


# --------------------------------------------------------------------------- DPO


def test_dpo_pair_loss_value_and_gradient_by_hand():
    # beta 0.5, h_w 1, h_l -1: -log sigmoid(0.5 * 2) = log(1 + e^-1) = 0.313262
    # d/dh_w = -0.5 * sigmoid(-1) = -0.5 * 0.268941 = -0.134471; d/dh_l = +0.134471
    h_w, h_l = torch.tensor([1.0], requires_grad=True), torch.tensor([-1.0], requires_grad=True)
    loss = algorithm.dpo_pair_losses(h_w, h_l, 0.5)
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)
    loss.sum().backward()
    assert h_w.grad.item() == pytest.approx(-0.134471, abs=1e-6)
    assert h_l.grad.item() == pytest.approx(0.134471, abs=1e-6)


def test_in_group_dpo_on_tokens_by_hand():
    # rows: chosen (group 0) logp [-0.5, -0.5] -> -1; rejected (group 0) [-1, -2] -> -3; row 2 untouched
    # reference sums: -2 and -2 -> h_w = 1, h_l = -1, beta 0.5 -> 0.313262 (as above), one pair
    # each token of the chosen row gets -0.134471, of the rejected row +0.134471; the padding NaN gets 0
    logprobs = torch.tensor([[-0.5, -0.5], [-1.0, -2.0], [-4.0, float("nan")]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0], [-1.0, -1.0], [0.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 0]])
    roles, groups = torch.tensor([1, -1, 0]), torch.tensor([0, 0, 1])
    assert algorithm.sequence_logprobs(logprobs, mask).tolist() == [-1.0, -3.0, -4.0]
    loss = algorithm.dpo_loss(logprobs, ref, mask, roles, groups, 1.0, AuxOptions(dpo_beta=0.5))
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)
    loss.backward()
    g = 0.134471
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-g, -g], [g, g], [0.0, 0.0]]), atol=1e-6, rtol=0)


def test_dpo_pairs_rows_by_group_whatever_their_order():
    # two pairs listed out of order: (rows 3, 0) in group 5 and (rows 1, 2) in group 2; num_items 2
    torch.manual_seed(0)
    logprobs, ref, mask = -torch.rand(4, 3), -torch.rand(4, 3), torch.ones(4, 3)
    roles, groups = torch.tensor([-1, 1, -1, 1]), torch.tensor([5, 2, 2, 5])
    seq, ref_seq = logprobs.sum(1), ref.sum(1)
    h = seq - ref_seq
    want = (algorithm.dpo_pair_losses(h[[3, 1]], h[[0, 2]], 0.1)).sum() / 2
    got = algorithm.dpo_loss(logprobs, ref, mask, roles, groups, 2.0, AuxOptions(dpo_beta=0.1))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert algorithm.AUX_LOSSES["dpo"].count(roles, mask, "grpo") == 2
    with pytest.raises(ValueError, match="same micro-batch"):
        algorithm.dpo_loss(logprobs[:3], ref[:3], mask[:3], roles[:3], groups[:3], 2.0, AuxOptions())


# --------------------------------------------------------------------------- distillation


def test_distillation_rows_by_hand():
    # distill: every row with a token to train on
    eligible = torch.tensor([True, False, True, True])
    assert algorithm.every_row_roles(torch.zeros(4), 2, eligible).tolist() == [1, 0, 1, 1]
    # self_distill: group 0 [1, 3, 3, 0] has its best at row 1 (SFT's row): rows 0, 2, 3 learn from it;
    # group 1 [2, 2, 2, 2] has no best: no demonstration, nothing trained
    rewards = torch.tensor([1.0, 3.0, 3.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    assert algorithm.demonstrations(rewards, 4, ALL).tolist() == [1, 1, 1, 1, -1, -1, -1, -1]
    assert algorithm.demonstrated_roles(rewards, 4, ALL).tolist() == [1, 0, 1, 1, 0, 0, 0, 0]
    # min_reward 4: 3 is no success, no group has a demonstration
    assert algorithm.demonstrations(rewards, 4, ALL, 4.0).tolist() == [-1] * 8
    assert algorithm.demonstrated_roles(rewards, 4, ALL, 4.0).sum() == 0
    # a row with nothing to train is no demonstration and learns nothing: row 1 out, row 2 is the best
    eligible = torch.tensor([True, False, True, False, True, True, True, True])
    assert algorithm.demonstrations(rewards, 4, eligible).tolist() == [2, 2, 2, 2, -1, -1, -1, -1]
    assert algorithm.demonstrated_roles(rewards, 4, eligible).tolist() == [1, 0, 0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("loss_type", algorithm.LOSS_TYPES)
def test_reverse_kl_loss_value_and_gradient_by_hand(loss_type):
    # logp [[ln 0.5, ln 0.25], [ln 0.5, nan]], teacher [[ln 0.25, ln 0.25], [0, 0]], roles [1, 0]:
    # k = logp - teacher = [ln 2, 0] on row 0; value: k aggregated as SFT's NLL is; gradient sg(k) / items
    num_items = SFT_CASES[loss_type][0]
    per_item = {"grpo": 2, "bnpo": num_items, "dapo": num_items, "dr_grpo": 4}[loss_type]  # what divides the sum
    logprobs = torch.tensor(LOGP, requires_grad=True)
    teacher = torch.tensor([[math.log(0.25), math.log(0.25)], [0.0, 0.0]])
    loss = algorithm.reverse_kl_loss(logprobs, teacher, MASK, torch.tensor([1, 0]), torch.tensor([0, 1]), num_items,
                                     AuxOptions(loss_type, 4))
    assert loss.item() == pytest.approx(LN2 / per_item, abs=1e-6)  # grpo: (ln 2 + 0) / 2 = 0.34657
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[LN2 / per_item, 0.0], [0.0, 0.0]]))


def test_reverse_kl_gradient_is_the_reverse_kl_gradient_in_expectation():
    # one position, vocabulary of 3: the sum over every token o of pi(o) * d l(o) equals d KL(pi || q)
    # (the score-function gradient), with each token's loss computed as if it were the one sampled
    theta = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    q = torch.log_softmax(torch.tensor([0.1, 0.4, -0.3]), 0)
    logp = torch.log_softmax(theta, 0)
    one = torch.ones(3, 1)
    losses = algorithm.reverse_kl_loss(logp[:, None], q[:, None].expand(3, 1), one, torch.ones(3), torch.zeros(3),
                                       1.0, AuxOptions("bnpo"))  # bnpo, num_items 1: the sum of the three
    weights = logp.exp().detach()  # pi(o): the expectation over the sampled token
    expected = sum(w * algorithm.reverse_kl_loss(logp[o:o + 1, None], q[o:o + 1, None], one[:1], torch.ones(1),
                                                 torch.zeros(1), 1.0, AuxOptions("bnpo"))
                   for o, w in enumerate(weights))
    (grad,) = torch.autograd.grad(expected, theta, retain_graph=True)
    kl = (logp.exp() * (logp - q)).sum()
    (want,) = torch.autograd.grad(kl, theta)
    torch.testing.assert_close(grad, want)
    assert losses.item() == pytest.approx((logp - q).sum().item(), rel=1e-6)  # the value is the sum of the k1s


# --------------------------------------------------------------------------- schedules


def test_aux_weight_schedules_by_hand():
    # weight 0.5, until_step 4; progress min(1, step / 4) at steps 0, 2, 4, 9: 0, 0.5, 1, 1
    steps = (0, 2, 4, 9)
    assert [algorithm.aux_weight(0.5, "constant", s, 4) for s in steps] == [0.5, 0.5, 0.5, 0.5]
    assert [algorithm.aux_weight(0.5, "linear_decay", s, 4) for s in steps] == [0.5, 0.25, 0.0, 0.0]
    assert [algorithm.aux_weight(0.5, "linear_warmup", s, 4) for s in steps] == [0.0, 0.25, 0.5, 0.5]
    with pytest.raises(ValueError, match="allowed: constant, linear_decay, linear_warmup"):
        algorithm.aux_weight(0.5, "cosine", 0, 4)


def test_demonstrations_in_groups_of_unequal_size_by_hand():
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 5.0])  # groups of 2, 3 and 1 rows
    eligible = torch.ones(6, dtype=torch.bool)
    sizes = [2, 3, 1]
    # group 0: row 1 beats row 0; group 1: row 2 (first of the two 2s) beats row 4; group 2: alone, no best
    assert algorithm.demonstrations(rewards, sizes, eligible).tolist() == [1, 1, 2, 2, 2, -1]
    assert algorithm.demonstrated_roles(rewards, sizes, eligible).tolist() == [1, 0, 0, 1, 1, 0]
