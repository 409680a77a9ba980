"""Entropy in the objective against hand-computed values: the differentiable token entropy, the
bonus aggregated like the loss, the adaptive coefficient and high-entropy token selection."""

import math

import pytest
import torch

from grpo import algorithm

LN3 = math.log(3)


# --------------------------------------------------------------------------- token entropy


def test_token_entropy_value_and_gradient_by_hand():
    # z [ln 3, 0]: p [0.75, 0.25]; H = 0.75 ln(4/3) + 0.25 ln 4 = 0.215762 + 0.346574 = 0.562335
    # E_p[z] = 0.75 ln 3 = 0.823959; dH/dz = -p (z - E_p[z]) = [-0.75 * 0.274653, -0.25 * -0.823959]
    #                                                      = [-0.205990, 0.205990]
    # z [0, 0]: H = ln 2 and the gradient is 0 (the maximum)
    logits = torch.tensor([[[LN3, 0.0], [0.0, 0.0]]], requires_grad=True)
    h = algorithm.token_entropy(logits)
    torch.testing.assert_close(h, torch.tensor([[0.562335, math.log(2)]]), atol=1e-6, rtol=0)
    h.sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[[-0.205990, 0.205990], [0.0, 0.0]]]), atol=1e-6, rtol=0)


def test_token_entropy_temperature_scales_the_logits_and_the_gradient():
    # logits [2 ln 3, 0] at temperature 2 are z [ln 3, 0]: the same H; dH/dlogits = dH/dz / 2
    logits = torch.tensor([[[2 * LN3, 0.0]]], requires_grad=True)
    h = algorithm.token_entropy(logits, temperature=2.0)
    assert h.item() == pytest.approx(0.562335, abs=1e-6)
    h.sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[[-0.102995, 0.102995]]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk", [1, 2, 1024])  # one position, a row cut in two, whole rows per block
def test_token_entropy_gradient_equals_autograd_of_the_formula(monkeypatch, chunk):
    monkeypatch.setattr(algorithm, "LOGPROB_CHUNK_TOKENS", chunk)
    torch.manual_seed(0)
    full = torch.randn(3, 5, 11, dtype=torch.float64)
    a = full[:, :-1].clone().requires_grad_(True)  # [3, 4, 11]
    b = a.detach().clone().requires_grad_(True)
    weights = torch.randn(3, 4, dtype=torch.float64)
    (algorithm.token_entropy(a, 0.7) * weights).sum().backward()
    p = torch.softmax(b / 0.7, -1)
    (-(p * torch.log_softmax(b / 0.7, -1)).sum(-1) * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    # a non-contiguous view (the plain path's logits[:, :-1]) gives the same values
    view = full[:, :-1]
    assert not view.is_contiguous()
    torch.testing.assert_close(algorithm.token_entropy(view, 0.7), algorithm.token_entropy(view.contiguous(), 0.7))
    assert torch.autograd.gradcheck(lambda t: algorithm.token_entropy(t, 1.3), (a.detach().requires_grad_(),))


def test_token_entropy_keeps_only_the_logits_for_backward():
    # the saved tensors of the graph are the logits themselves: no [B, T, V] float32 temporaries
    logits = torch.randn(2, 3, 5, dtype=torch.bfloat16, requires_grad=True)
    h = algorithm.token_entropy(logits)
    assert h.dtype == torch.float32
    saved = h.grad_fn.saved_tensors
    assert len(saved) == 1 and saved[0].data_ptr() == logits.data_ptr()
    h.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


# --------------------------------------------------------------------------- the bonus

ENTROPY = torch.tensor([[1.0, 2.0], [3.0, float("nan")]])  # the padding position holds NaN: it must not leak
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])


@pytest.mark.parametrize(("loss_type", "num_items", "value", "grad"), [
    # grpo, 2 sequences: (3/2 + 3/1) / 2 = 2.25 -> -0.225; dH = -0.1 [[1/4, 1/4], [1/2, 0]]
    ("grpo", 2, -0.225, [[-0.025, -0.025], [-0.05, 0.0]]),
    # dapo / bnpo, 3 tokens: 6 / 3 = 2 -> -0.2; dH = -0.1 / 3 on each token
    ("dapo", 3, -0.2, [[-0.1 / 3, -0.1 / 3], [-0.1 / 3, 0.0]]),
    ("bnpo", 3, -0.2, [[-0.1 / 3, -0.1 / 3], [-0.1 / 3, 0.0]]),
    # dr_grpo, 2 sequences, max length 2: 6 / (2 * 2) = 1.5 -> -0.15; dH = -0.1 / 4
    ("dr_grpo", 2, -0.15, [[-0.025, -0.025], [-0.025, 0.0]]),
])
def test_entropy_bonus_by_hand(loss_type, num_items, value, grad):
    h = ENTROPY.clone().requires_grad_(True)
    bonus = algorithm.entropy_bonus(h, MASK, 0.1, loss_type, num_items, max_completion_length=2)
    assert bonus.item() == pytest.approx(value, abs=1e-7)
    bonus.backward()
    torch.testing.assert_close(h.grad, torch.tensor(grad), atol=1e-7, rtol=0)


@pytest.mark.parametrize("loss_type", algorithm.LOSS_TYPES)
def test_entropy_bonus_of_micro_batches_adds_up_to_the_whole_batch(loss_type):
    # with the global count as num_items, row-wise pieces sum to the whole batch's term
    torch.manual_seed(1)
    h, mask = torch.rand(4, 5), (torch.rand(4, 5) > 0.3).float()
    mask[:, 0] = 1
    n = algorithm.AGGREGATIONS[loss_type].count(mask)
    whole = algorithm.entropy_bonus(h, mask, 0.3, loss_type, n, max_completion_length=5)
    parts = sum(algorithm.entropy_bonus(h[i : i + 2], mask[i : i + 2], 0.3, loss_type, n, 5) for i in (0, 2))
    torch.testing.assert_close(parts, whole)


def test_entropy_bonus_names_the_allowed_loss_types():
    with pytest.raises(ValueError, match="allowed: grpo, bnpo, dr_grpo, dapo"):
        algorithm.entropy_bonus(ENTROPY, MASK, 0.1, "ppo", 3)


# --------------------------------------------------------------------------- the adaptive coefficient


def test_adapted_entropy_coef_by_hand():
    # coef 0.01, target 1.0, lr 0.05: entropy 0.6 -> 0.01 + 0.05 * 0.4 = 0.03
    assert algorithm.adapted_entropy_coef(0.01, 0.6, 1.0, 0.05) == pytest.approx(0.03)
    # entropy 1.5 -> 0.01 - 0.025 < 0 -> 0: the bonus never turns into a penalty
    assert algorithm.adapted_entropy_coef(0.01, 1.5, 1.0, 0.05) == 0.0
    # on target: unchanged; no measurement: unchanged
    assert algorithm.adapted_entropy_coef(0.01, 1.0, 1.0, 0.05) == 0.01
    assert algorithm.adapted_entropy_coef(0.01, float("nan"), 1.0, 0.05) == 0.01


# --------------------------------------------------------------------------- high-entropy tokens


def test_entropy_threshold_by_hand():
    values = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7])
    # top 0.4 of 5 -> k = 2 -> the 2nd largest, 0.7
    assert algorithm.entropy_threshold(values, 0.4).item() == pytest.approx(0.7)
    # top 0.2 of 10 is 2 tokens (0.2 * 10 is not rounded up to 3); top 0.25 of 10 -> ceil(2.5) = 3
    ten = torch.arange(10.0)
    assert algorithm.entropy_threshold(ten, 0.2).item() == 8.0
    assert algorithm.entropy_threshold(ten, 0.25).item() == 7.0
    # a tiny fraction keeps at least the top token; 1.0 keeps the smallest; nothing -> +inf
    assert algorithm.entropy_threshold(values, 1e-6).item() == pytest.approx(0.9)
    assert algorithm.entropy_threshold(values, 1.0).item() == pytest.approx(0.1)
    assert algorithm.entropy_threshold(torch.zeros(0), 0.2).item() == math.inf


def test_high_entropy_mask_by_hand():
    # H [[0.1, 0.9], [0.7, pad]], threshold 0.7 -> [[False, True], [True, False]]; the NaN pad stays out
    h = torch.tensor([[0.1, 0.9], [0.7, float("nan")]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert algorithm.high_entropy_mask(h, mask, torch.tensor(0.7)).tolist() == [[False, True], [True, False]]
    # ties at the threshold are all kept
    tied = torch.tensor([[0.5, 0.5], [0.5, 0.1]])
    assert algorithm.high_entropy_mask(tied, torch.ones(2, 2), 0.5).sum().item() == 3


def test_selected_tokens_weigh_only_the_surrogate():
    # policy_loss with the selection as token_weights: the surrogate of unselected tokens has no
    # gradient, the KL term still reaches every token, and the normalizer still counts every token
    torch.manual_seed(2)
    lp = (torch.randn(2, 3) * 0.1 - 1).requires_grad_(True)
    old, ref = lp.detach() - 0.05, lp.detach() + 0.1
    mask = torch.ones(2, 3)
    selected = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    loss, _ = algorithm.policy_loss(lp, old, torch.tensor([1.0, -1.0]), mask, token_weights=selected,
                                    loss_type="dapo", num_items=6.0)
    loss.backward()
    assert (lp.grad[selected == 0] == 0).all() and (lp.grad[selected == 1] != 0).all()
    lp.grad = None
    loss, _ = algorithm.policy_loss(lp, old, torch.tensor([1.0, -1.0]), mask, token_weights=selected,
                                    loss_type="dapo", num_items=6.0, ref_logprobs=ref, beta=0.5)
    loss.backward()
    assert (lp.grad != 0).all()
