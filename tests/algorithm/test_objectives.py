"""The surrogate objectives (clip with dual clip, CISPO, SAPO) against hand-computed values."""

import math

import pytest
import torch

from grpo.algorithm import policy_loss

# Two sequences x three tokens, old log-probs 0, so ratio r = exp(logprobs):
#   sequence 1, A = +1: r = [0.5, 1.27, 1.29]   (1.27 / 1.29: either side of 1 + epsilon_high = 1.28)
#   sequence 2, A = -1: r = [0.79, 2.9, 3.1]    (0.79: below 1 - epsilon = 0.8; 2.9 / 3.1: either side of c = 3)
# bnpo: every loss and gradient below is over the 6 tokens, so the tests multiply gradients by 6.
RATIOS = torch.tensor([[0.5, 1.27, 1.29], [0.79, 2.9, 3.1]], dtype=torch.float64)
ADV = torch.tensor([1.0, -1.0], dtype=torch.float64)
MASK = torch.ones(2, 3, dtype=torch.float64)
CLIP = dict(epsilon=0.2, epsilon_high=0.28, loss_type="bnpo")


def loss_and_grad(**kw):
    lp = torch.log(RATIOS).requires_grad_(True)
    loss, metrics = policy_loss(lp, torch.zeros_like(lp), ADV, MASK, **{**CLIP, **kw})
    (grad,) = torch.autograd.grad(loss, lp)
    return loss.item(), grad * 6, {k: v.item() for k, v in metrics.items()}


def test_clip_objective_is_the_default_and_unchanged():
    # l = -min(r A, clip(r, 0.8, 1.28) A):
    #   A = +1: r 0.5 -> -0.5 (grad -r = -0.5); 1.27 -> -1.27 (grad -1.27); 1.29 -> -1.28 (clipped: grad 0)
    #   A = -1: r 0.79 -> max(0.79, 0.8) = 0.8 (clipped: grad 0); 2.9 -> 2.9 (grad r); 3.1 -> 3.1 (grad r)
    # sum -0.5 - 1.27 - 1.28 + 0.8 + 2.9 + 3.1 = 3.75 -> / 6 = 0.625
    loss, grad, m = loss_and_grad()
    assert loss == pytest.approx(0.625)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -1.27, 0.0], [0.0, 2.9, 3.1]], dtype=torch.float64))
    assert (m["clip/low"], m["clip/high"]) == (pytest.approx(1 / 6), pytest.approx(1 / 6))
    named_loss, named_grad, _ = loss_and_grad(objective="clip")
    assert "clip/dual" not in m and named_loss == loss and torch.equal(named_grad, grad)


def test_dual_clip_caps_the_loss_of_negative_advantages_by_hand():
    # c = 3, only where A < 0: min(l, -A c) = min(l, 3): r 2.9 -> 2.9 (below c: grad 2.9 kept);
    # r 3.1 -> 3 (constant: grad 0). Positive advantages untouched.
    # sum 3.75 - 3.1 + 3 = 3.65 -> / 6 = 0.608333; one token of six dual clipped
    loss, grad, m = loss_and_grad(dual_clip=3.0)
    assert loss == pytest.approx(3.65 / 6)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -1.27, 0.0], [0.0, 2.9, 0.0]], dtype=torch.float64))
    assert m["clip/dual"] == pytest.approx(1 / 6)
    # a cap at or below 1 + epsilon_high would bite inside the trust region: refused
    with pytest.raises(ValueError, match="dual_clip=1.2 must exceed 1 \\+ epsilon_high"):
        loss_and_grad(dual_clip=1.2)


def test_dual_clip_at_sequence_level_caps_the_sequence_ratio():
    # one completion, A = -1, log-ratios [1.1, 1.3]: s = e^1.2 = 3.3201 > c = 3 -> loss 3, no gradient;
    # with c = 4 it is below the cap: loss s, d/d logp_t = s / 2 = 1.66006 (grpo mean over 1 sequence)
    lp = torch.tensor([[1.1, 1.3]], requires_grad=True)
    kw = dict(epsilon=3e-4, epsilon_high=4e-4, importance_sampling_level="sequence")
    loss, m = policy_loss(lp, torch.zeros(1, 2), torch.tensor([-1.0]), torch.ones(1, 2), dual_clip=3.0, **kw)
    (grad,) = torch.autograd.grad(loss, lp)
    assert loss.item() == pytest.approx(3.0) and grad.abs().max().item() == 0.0 and m["clip/dual"].item() == 1.0
    loss, _ = policy_loss(lp, torch.zeros(1, 2), torch.tensor([-1.0]), torch.ones(1, 2), dual_clip=4.0, **kw)
    (grad,) = torch.autograd.grad(loss, lp)
    torch.testing.assert_close(grad, torch.full((1, 2), math.exp(1.2) / 2))


def test_cispo_by_hand():
    # w = sg(clip(r, 0.8, 1.28)): A = +1 -> [0.8, 1.27, 1.28]; A = -1 -> [0.8, 1.28, 1.28]
    # l = -w A log r; d l / d logp = -w A: every token keeps a gradient, the clipped ones too
    # loss = [-(0.8 ln 0.5 + 1.27 ln 1.27 + 1.28 ln 1.29) + (0.8 ln 0.79 + 1.28 ln 2.9 + 1.28 ln 3.1)] / 6
    #      = 2.547471 / 6 = 0.424578; clipped: 0.5, 1.29, 0.79, 2.9, 3.1 -> 5 of 6
    loss, grad, m = loss_and_grad(objective="cispo", cispo_epsilon_low=0.2, cispo_epsilon_high=0.28)
    assert loss == pytest.approx(2.547471 / 6, abs=1e-6)
    torch.testing.assert_close(grad, torch.tensor([[-0.8, -1.27, -1.28], [0.8, 1.28, 1.28]], dtype=torch.float64))
    assert m["clip/cispo"] == pytest.approx(5 / 6)
    # no lower bound (cispo_epsilon_low None, MiniMax-M1's choice): 0.5 and 0.79 are kept as they are
    # loss 2.341884 / 6; clipped 1.29, 2.9, 3.1 -> 3 of 6
    loss, grad, m = loss_and_grad(objective="cispo", cispo_epsilon_high=0.28)
    assert loss == pytest.approx(2.341884 / 6, abs=1e-6)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -1.27, -1.28], [0.79, 1.28, 1.28]], dtype=torch.float64))
    assert m["clip/cispo"] == pytest.approx(0.5)


def test_cispo_at_ratio_one_is_the_policy_gradient():
    # r = 1 (first update of a step): w = 1 and d l / d logp = -A, as with the clipped surrogate
    lp = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    grads = []
    for objective in ("clip", "cispo", "sapo"):
        loss, m = policy_loss(lp, lp.detach(), ADV, MASK, loss_type="bnpo", objective=objective)
        grads.append(torch.autograd.grad(loss, lp)[0])
    expected = -ADV[:, None].expand(2, 3) / 6
    for grad in grads:
        torch.testing.assert_close(grad, expected)
    assert m["sapo/gate"].item() == pytest.approx(1.0)


def test_cispo_at_sequence_level_weighs_each_completion_once():
    # log-ratios [0.1, 0.3]: s = e^0.2 = 1.221403 > 1 + 0.1 -> w = 1.1 for both tokens, A = +1
    # grpo, one sequence of 2 tokens: loss = -1.1 (lp_1 + lp_2) / 2, d/d logp_t = -0.55
    old = torch.tensor([[-1.0, -2.0]])
    lp = (old + torch.tensor([[0.1, 0.3]])).requires_grad_(True)
    loss, m = policy_loss(lp, old, torch.tensor([1.0]), torch.ones(1, 2), importance_sampling_level="sequence",
                          objective="cispo", cispo_epsilon_high=0.1)
    (grad,) = torch.autograd.grad(loss, lp)
    assert loss.item() == pytest.approx(-1.1 * (-0.9 - 1.7) / 2)
    torch.testing.assert_close(grad, torch.tensor([[-0.55, -0.55]]))
    assert m["clip/cispo"].item() == 1.0


def test_sapo_by_hand():
    # tau 1 for A = +1, 1.05 for A = -1; s = sigmoid(tau (r - 1)); l = -A (4 / tau) s
    #   A = +1: r 0.5 -> s 0.377541, l -1.510163; 1.27 -> s 0.567093, l -2.268372; 1.29 -> s 0.571996, l -2.287985
    #   A = -1: r 0.79 -> s 0.445097, l 1.695609; 2.9 -> s 0.880271, l 3.353414; 3.1 -> s 0.900698, l 3.431229
    # sum 2.413733 -> / 6 = 0.402289
    # gate g = 4 s (1 - s): [0.940015, 0.981994, 0.979266], [0.987943, 0.421576, 0.357766], mean 0.778093
    # d l / d logp = -A g r: [-0.470007, -1.247133, -1.263253], [0.780475, 1.222569, 1.109074]
    loss, grad, m = loss_and_grad(objective="sapo")
    assert loss == pytest.approx(2.413733 / 6, abs=1e-6)
    expected = torch.tensor([[-0.470007, -1.247133, -1.263253], [0.780475, 1.222569, 1.109074]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=0)
    assert m["sapo/gate"] == pytest.approx(0.778093, abs=1e-6)
    # a hotter negative temperature damps the far-off-policy negative tokens harder (SAPO's asymmetry)
    _, hotter, _ = loss_and_grad(objective="sapo", sapo_temperature_neg=2.0)
    assert (hotter[1, 1:].abs() < grad[1, 1:].abs()).all() and torch.equal(hotter[0], grad[0])


def test_sapo_refuses_the_sequence_ratio():
    lp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="objective='sapo' needs importance_sampling_level='token'"):
        policy_loss(lp, lp, torch.ones(1), torch.ones(1, 2), objective="sapo", importance_sampling_level="sequence")
    with pytest.raises(ValueError, match="allowed: clip, cispo, sapo"):
        policy_loss(lp, lp, torch.ones(1), torch.ones(1, 2), objective="ppo")


def random_batch():
    torch.manual_seed(0)
    lp = (torch.randn(2, 3, dtype=torch.float64) * 0.3).requires_grad_(True)
    old = lp.detach() + 0.4 * torch.randn(2, 3, dtype=torch.float64)
    ref = lp.detach() + 0.3 * torch.randn(2, 3, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
    return lp, old, ref, mask, torch.tensor([0.7, -1.3], dtype=torch.float64)


@pytest.mark.parametrize("kw", [dict(dual_clip=1.5), dict(objective="sapo", sapo_temperature_neg=2.0)],
                         ids=["dual", "sapo"])
def test_objectives_match_finite_differences_and_ignore_padding(kw):
    lp, old, ref, mask, adv = random_batch()

    def f(x):
        return policy_loss(x, old, adv, mask, ref_logprobs=ref, beta=0.1, loss_type="dapo", **kw)[0]

    assert torch.autograd.gradcheck(f, (lp,))
    padded = lp.detach().clone()
    padded[1, 2] = float("nan")  # a padded position never reaches the loss
    assert f(padded).item() == pytest.approx(f(lp).item())


def test_cispo_gradient_is_the_weighted_policy_gradient_plus_kl():
    # CISPO's value is not a function whose derivative is its gradient (w is held constant), so no
    # finite differences: the gradient must be -w A m / #tokens plus the KL term's, w = clip(r, 0.5, 1.28)
    lp, old, ref, mask, adv = random_batch()
    loss, _ = policy_loss(lp, old, adv, mask, ref_logprobs=ref, beta=0.1, loss_type="dapo", objective="cispo",
                          cispo_epsilon_low=0.5, cispo_epsilon_high=0.28)
    (grad,) = torch.autograd.grad(loss, lp)
    x = lp.detach().clone().requires_grad_(True)
    w = torch.exp(x - old).clamp(0.5, 1.28).detach()
    kl = torch.exp(ref - x) - (ref - x) - 1
    written = (((-w * adv[:, None] * x + 0.1 * kl) * mask).sum() / mask.sum())
    (want,) = torch.autograd.grad(written, x)
    torch.testing.assert_close(grad, want)
    assert loss.item() == pytest.approx(written.item())
