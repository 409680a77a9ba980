"""Off-policy sequence masking and the importance-weighted (unbiased) KL, by hand (DeepSeek-V3.2)."""

import math

import pytest
import torch

from grpo.algorithm import kl_divergence, off_policy_sequence_mask, policy_loss

LN2 = math.log(2.0)

# --------------------------------------------------------------------------- off-policy sequence mask


def test_off_policy_mask_by_hand():
    # q - logp = [[0.1, 0.3], [1.0, 2.0], [1.0, 2.0]] -> KL_i = [0.2, 1.5, 1.5]; A = [-1, -1, +1], delta 0.5:
    # row 0 is close (kept), row 1 negative and far (masked), row 2 far but positive (kept)
    logp = torch.full((3, 2), -2.0)
    q = logp + torch.tensor([[0.1, 0.3], [1.0, 2.0], [1.0, 2.0]])
    keep, s = off_policy_sequence_mask(logp, q, torch.tensor([-1.0, -1.0, 1.0]), torch.ones(3, 2), 0.5)
    assert keep.tolist() == [[1.0], [0.0], [1.0]]
    assert (s["num_sequences"], s["num_masked"], s["num_measured"], s["num_unmeasured"]) == (3, 1, 3, 0)
    assert s["kl_sum"].item() == pytest.approx(0.2 + 1.5 + 1.5, abs=1e-5)


def test_off_policy_mask_is_strict_and_per_token_with_per_token_advantages():
    logp = torch.zeros(1, 2)
    q = torch.full((1, 2), 0.5)  # KL exactly 0.5: not above delta 0.5, kept
    keep, _ = off_policy_sequence_mask(logp, q, torch.tensor([-1.0]), torch.ones(1, 2), 0.5)
    assert keep.tolist() == [[1.0]]
    # process advantages A = [[+1, -1]], KL 1.5 > 0.5: only the negative token leaves (M_it of the paper)
    keep, s = off_policy_sequence_mask(logp, torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, -1.0]]),
                                       torch.ones(1, 2), 0.5)
    assert keep.tolist() == [[1.0, 0.0]] and s["num_masked"] == 1
    # a negative KL estimate (the policy gained mass on the sampled tokens) never masks at delta 0
    keep, _ = off_policy_sequence_mask(logp, torch.full((1, 2), -0.1), torch.tensor([-1.0]), torch.ones(1, 2), 0.0)
    assert keep.tolist() == [[1.0]]


def test_off_policy_mask_reads_only_finite_trained_tokens_and_keeps_what_it_cannot_measure():
    nan, inf = float("nan"), float("inf")
    logp = torch.tensor([[-2.0, -2.0, -2.0], [-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    q = torch.tensor([
        [nan, 0.0, -60.0],  # NaN sampler log-prob left out; the last token is padding: KL = 0 - (-2) = 2
        [nan, nan, nan],  # no sampler log-prob at all (an engine that cannot give them): kept, unmeasured
        [-inf, 0.0, 0.0],  # -inf left out too: KL = 1
        [0.0, 0.0, 0.0],  # loss-masked entirely (e.g. truncated): not a sequence trained on
    ])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [0, 0, 0]])
    keep, s = off_policy_sequence_mask(logp, q, -torch.ones(4), mask, 1.5)
    assert keep.tolist() == [[0.0], [1.0], [1.0], [1.0]]
    assert (s["num_sequences"], s["num_masked"], s["num_measured"], s["num_unmeasured"]) == (3, 1, 2, 1)
    assert s["kl_sum"].item() == pytest.approx(2.0 + 1.0)


def test_a_masked_sequence_loses_its_surrogate_but_keeps_its_kl_and_its_place_in_the_normalizer():
    # two one-token completions, ratio 1, A = [+1, -1]; the second is masked (KL 1 > 0.5)
    # grpo over 2 sequences, beta 0.1, ref = logp + ln 2: k3 = 2 - ln 2 - 1 = 0.306853, d k3 / d logp = 1 - 2 = -1
    # loss = (-1 + 0.1 * 0.306853 + 0 + 0.1 * 0.306853) / 2 = -0.469315
    # d loss / d logp = [(-1 - 0.1) / 2, (0 - 0.1) / 2] = [-0.55, -0.05] (unmasked it would be [-0.55, +0.45])
    lp = torch.full((2, 1), -1.0, requires_grad=True)
    mask, adv = torch.ones(2, 1), torch.tensor([1.0, -1.0])
    keep, _ = off_policy_sequence_mask(lp, lp.detach() + torch.tensor([[0.0], [1.0]]), adv, mask, 0.5)
    loss, _ = policy_loss(lp, lp.detach(), adv, mask, ref_logprobs=lp.detach() + LN2, beta=0.1,
                          token_weights=keep.expand_as(lp), num_items=2)
    loss.backward()
    assert loss.item() == pytest.approx((-1 + 2 * 0.1 * 0.306853) / 2, abs=1e-6)
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.55], [-0.05]]))
    assert not keep.requires_grad  # a 0/1 weight: no gradient of its own


# --------------------------------------------------------------------------- importance-weighted KL


def test_importance_weighted_kl_value_and_gradient_by_hand():
    # p = 0.5, ref = 0.25, old = 0.25: k3 = 0.5 + ln 2 - 1 = 0.193147; ratio p / old = 2 -> 0.386294
    # d/dlogp [r * k3] = r * k3 + r * (1 - ref / p) = 0.386294 + 2 * 0.5 = 1.386294 = r * ln(p / ref) = 2 ln 2
    lp = torch.log(torch.tensor([[0.5]])).requires_grad_(True)
    ref, old = torch.log(torch.tensor([[0.25]])), torch.log(torch.tensor([[0.25]]))
    kl = kl_divergence(lp, ref, "k3", old)
    kl.sum().backward()
    assert kl.item() == pytest.approx(0.386294, abs=1e-6)
    assert lp.grad.item() == pytest.approx(2 * LN2, abs=1e-6)
    # old = logp (one update per batch): the value is k3's, the gradient ln(p / ref) = ln 2, not k3's 1 - ref/p = 0.5
    lp.grad = None
    kl = kl_divergence(lp, ref, "k3", lp.detach())
    kl.sum().backward()
    assert kl.item() == pytest.approx(0.193147, abs=1e-6) and lp.grad.item() == pytest.approx(LN2, abs=1e-6)


def test_importance_weighted_k3_is_unbiased_in_value_and_gradient_from_old_samples():
    # theta -> p = softmax(theta); tokens drawn from pi_old != p. The weighted k3's mean and its gradient
    # approach KL(p || ref) and its exact gradient; the plain k3 on the same samples does not.
    torch.manual_seed(0)
    theta = torch.tensor([0.5, 0.0, -0.5], requires_grad=True)
    old, ref = torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.2, 0.5, 0.3])
    x = torch.multinomial(old, 400_000, replacement=True)

    def estimate(weighted):
        logp = torch.log_softmax(theta, 0)
        value = kl_divergence(logp[x], ref.log()[x], "k3", old.log()[x] if weighted else None).mean()
        return value.item(), torch.autograd.grad(value, theta)[0]

    p = torch.softmax(theta, 0)
    exact = (p * (p.log() - ref.log())).sum()
    (exact_grad,) = torch.autograd.grad(exact, theta)
    value, grad = estimate(weighted=True)
    assert value == pytest.approx(exact.item(), rel=0.03)
    torch.testing.assert_close(grad, exact_grad, atol=0.01, rtol=0.03)
    biased, _ = estimate(weighted=False)
    assert abs(biased - exact.item()) > 0.1 * exact.item()
    # a detached ratio would fix the value but not the gradient: E_p[(1 - ref/p) d logp], k3's own bias
    logp = torch.log_softmax(theta, 0)
    detached = (torch.exp(logp[x] - old.log()[x]).detach() * kl_divergence(logp[x], ref.log()[x], "k3")).mean()
    (grad_detached,) = torch.autograd.grad(detached, theta)
    assert not torch.allclose(grad_detached, exact_grad, atol=0.01, rtol=0.03)


def test_policy_loss_weighs_the_kl_by_the_token_ratio_at_either_level():
    # two tokens, p = 0.5 each, old = [0.25, 0.5] -> token ratios [2, 1], ref = 0.25: k3 = 0.193147 each
    # weighted KL = [0.386294, 0.193147]; A = 0; bnpo over 2 tokens, beta 1 -> 0.289721, at token and at
    # sequence level alike (the sequence ratio sqrt 2 weighs only the surrogate)
    lp = torch.log(torch.full((1, 2), 0.5)).requires_grad_(True)
    old = torch.log(torch.tensor([[0.25, 0.5]]))
    ref = torch.log(torch.full((1, 2), 0.25))
    for level in ("token", "sequence"):
        loss, m = policy_loss(lp, old, torch.zeros(1), torch.ones(1, 2), ref_logprobs=ref, beta=1.0, loss_type="bnpo",
                              importance_sampling_level=level, kl_importance_weighted=True)
        assert loss.item() == pytest.approx((0.386294 + 0.193147) / 2, abs=1e-6), level
        assert m["kl"].item() == pytest.approx(loss.item(), abs=1e-7)
        (grad,) = torch.autograd.grad(loss, lp)
        # per token r * ln(p / ref) / 2 = [2 ln 2, ln 2] / 2
        torch.testing.assert_close(grad, torch.tensor([[LN2, LN2 / 2]]))
    plain, _ = policy_loss(lp, old, torch.zeros(1), torch.ones(1, 2), ref_logprobs=ref, beta=1.0, loss_type="bnpo")
    assert plain.item() == pytest.approx(0.193147, abs=1e-6)  # off: the unweighted k3
