"""The GRPO math against hand-computed values (worked out in the comments)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo import algorithm
from grpo.algorithm import group_advantages, kl_divergence, policy_loss, token_logprobs

# --------------------------------------------------------------------------- advantages


def test_group_advantages_issue_example():
    # one group [1, 0, 0, 0, 1, 0]: mean 1/3; deviations 2/3 (x2) and -1/3 (x4)
    # sample variance = (2*(4/9) + 4*(1/9)) / 5 = (12/9)/5 = 0.26667 -> std 0.516398
    # -> A = 0.666667 / (0.516398 + 1e-4) = 1.29074 ; -0.333333 / 0.516498 = -0.64537
    adv = group_advantages(torch.tensor([1.0, 0, 0, 0, 1, 0]), group_size=6)
    expected = torch.tensor([1.29074, -0.64537, -0.64537, -0.64537, 1.29074, -0.64537])
    torch.testing.assert_close(adv, expected, atol=1e-4, rtol=0)


def test_group_advantages_design_example_and_groups_are_independent():
    # group 1 [1, 0, 0, 0]: mean 0.25, sample std 0.5 -> [1.5, -0.5, -0.5, -0.5] (eps=0)
    # group 2 [2, 4, 2, 4]: mean 3, sample std sqrt(4/3)=1.1547 -> [-0.8660, 0.8660, ...]
    rewards = torch.tensor([1.0, 0, 0, 0, 2, 4, 2, 4])
    adv = group_advantages(rewards, group_size=4, eps=0.0)
    s = 1 / math.sqrt(4 / 3)
    expected = torch.tensor([1.5, -0.5, -0.5, -0.5, -s, s, -s, s])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)


def test_group_advantages_equal_rewards_give_zeros_not_nan():
    for eps in (1e-4, 0.0):
        adv = group_advantages(torch.tensor([0.5, 0.5, 0.5, 1.0, 0.0, 1.0]), 3, eps=eps)
        assert not torch.isnan(adv).any()
        assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    adv = group_advantages(torch.zeros(8), 4, scale="batch", eps=0.0)
    assert adv.tolist() == [0.0] * 8


def test_group_advantages_batch_and_none_scales():
    # rewards [1, 0 | 3, 3]: group means 0.5 and 3 -> centred [0.5, -0.5, 0, 0]
    # batch std of [1, 0, 3, 3]: mean 1.75, var = (0.5625+3.0625+1.5625+1.5625)/3 = 2.25 -> 1.5
    r = torch.tensor([1.0, 0.0, 3.0, 3.0])
    assert group_advantages(r, 2, scale="none").tolist() == [0.5, -0.5, 0.0, 0.0]
    torch.testing.assert_close(
        group_advantages(r, 2, scale="batch", eps=0.0), torch.tensor([1 / 3, -1 / 3, 0.0, 0.0])
    )


def test_group_advantages_rejects_bad_input():
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="median")
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(torch.zeros(5), 2)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=2, max_size=6), st.integers(1, 4))
def test_group_advantages_properties(group, num_groups):
    rewards = torch.tensor(group * num_groups)
    adv = group_advantages(rewards, len(group)).view(num_groups, -1)
    assert torch.isfinite(adv).all()
    # every group is centred, and groups with identical rewards give identical advantages
    assert adv.sum(1).abs().max() < 1e-3
    assert torch.allclose(adv, adv[0:1].expand_as(adv))


# --------------------------------------------------------------------------- KL


def test_kl_estimators_by_hand():
    # logp = log 0.5, ref = log 0.25 -> log_ratio = ln(0.5) = -0.693147
    # k1 = 0.693147 ; k2 = 0.480453/2 = 0.240227 ; k3 = 0.5 + 0.693147 - 1 = 0.193147
    logp, ref = torch.log(torch.tensor([[0.5]])), torch.log(torch.tensor([[0.25]]))
    assert kl_divergence(logp, ref, "k1").item() == pytest.approx(0.693147, abs=1e-5)
    assert kl_divergence(logp, ref, "k2").item() == pytest.approx(0.240227, abs=1e-5)
    assert kl_divergence(logp, ref, "k3").item() == pytest.approx(0.193147, abs=1e-5)
    with pytest.raises(ValueError, match="k3"):
        kl_divergence(logp, ref, "k4")


def test_kl_estimators_are_unbiased_for_true_kl():
    # sample from p, average k1 and k3: both approach KL(p||q) = sum p log(p/q)
    torch.manual_seed(0)
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    true_kl = (p * (p / q).log()).sum().item()
    x = torch.multinomial(p, 200_000, replacement=True)
    logp, ref = p.log()[x], q.log()[x]
    assert kl_divergence(logp, ref, "k1").mean().item() == pytest.approx(true_kl, rel=0.02)
    assert kl_divergence(logp, ref, "k3").mean().item() == pytest.approx(true_kl, rel=0.02)
    assert (kl_divergence(logp, ref, "k3") >= 0).all()


# --------------------------------------------------------------------------- log-probs


def test_token_logprobs_matches_log_softmax_and_chunks(monkeypatch):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    ids = torch.randint(0, 11, (3, 5))
    full = torch.log_softmax(logits / 0.7, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    monkeypatch.setattr(algorithm.tokens, "LOGPROB_CHUNK_TOKENS", 4)  # 15 tokens -> 4 chunks
    got = token_logprobs(logits, ids, temperature=0.7)
    torch.testing.assert_close(got, full)


def test_token_logprobs_by_hand():
    # logits [0, ln 3] -> softmax [0.25, 0.75]; token 1 -> ln 0.75 = -0.287682
    logits = torch.tensor([[[0.0, math.log(3)]]])
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(-0.287682, abs=1e-6)


def test_token_logprobs_gradient_matches_log_softmax():
    torch.manual_seed(1)
    a = torch.randn(2, 3, 7, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    ids = torch.randint(0, 7, (2, 3))
    token_logprobs(a, ids).sum().backward()
    torch.log_softmax(b, -1).gather(-1, ids.unsqueeze(-1)).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_token_entropy_by_hand():
    # uniform over 4 -> ln 4 = 1.386294; one-hot-ish -> ~0
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]])
    h = algorithm.token_entropy(logits)
    assert h[0, 0].item() == pytest.approx(math.log(4), abs=1e-6)
    assert h[0, 1].item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- policy loss

# Two sequences, T=3; the second has one padding token.
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ADV = torch.tensor([1.0, -2.0])


def test_policy_loss_ratio_one_each_loss_type():
    # ratio = 1 everywhere, no KL: per-token loss = -A -> seq 1: [-1,-1,-1], seq 2: [2, 2, (pad)]
    lp = torch.zeros(2, 3)
    # grpo: seq means -1 and 2 -> (-1 + 2)/2 = 0.5
    # bnpo / dapo: sum = -3 + 4 = 1 over 5 tokens = 0.2
    # dr_grpo: 1 / (2 * 4) = 0.125 with max_completion_length 4
    expect = {"grpo": 0.5, "bnpo": 0.2, "dapo": 0.2, "dr_grpo": 0.125}
    for loss_type, value in expect.items():
        loss, m = policy_loss(lp, lp, ADV, MASK, loss_type=loss_type, max_completion_length=4)
        assert loss.item() == pytest.approx(value), loss_type
        assert m["ratio_mean"].item() == pytest.approx(1.0)
        assert m["clip/region"].item() == 0.0
        assert "kl" not in m


def test_policy_loss_num_items_is_the_normalizer():
    lp = torch.zeros(2, 3)
    # dapo with a global token count of 10 -> 1 / 10
    loss, _ = policy_loss(lp, lp, ADV, MASK, loss_type="dapo", num_items=10)
    assert loss.item() == pytest.approx(0.1)
    # grpo with 4 sequences in the global batch -> (-1 + 2) / 4
    loss, _ = policy_loss(lp, lp, ADV, MASK, loss_type="grpo", num_items=4)
    assert loss.item() == pytest.approx(0.25)


def test_policy_loss_clipping_by_hand():
    # one sequence, one token each case; epsilon 0.2, epsilon_high 0.28
    # (a) A=+1, ratio 1.5: min(1.5, 1.28) = 1.28 -> loss -1.28, clipped high
    # (b) A=-1, ratio 0.5: min(-0.5, -0.8) = -0.8 -> loss 0.8, clipped low
    # (c) A=-1, ratio 1.5: min(-1.5, -1.28) = -1.5 -> loss 1.5, not clipped (pessimistic side)
    old = torch.zeros(3, 1)
    lp = torch.log(torch.tensor([[1.5], [0.5], [1.5]]))
    adv = torch.tensor([1.0, -1.0, -1.0])
    mask = torch.ones(3, 1)
    loss, m = policy_loss(lp, old, adv, mask, epsilon=0.2, epsilon_high=0.28, loss_type="bnpo")
    assert loss.item() == pytest.approx((-1.28 + 0.8 + 1.5) / 3, abs=1e-6)
    assert m["clip/high"].item() == pytest.approx(1 / 3)
    assert m["clip/low"].item() == pytest.approx(1 / 3)
    assert m["clip/region"].item() == pytest.approx(2 / 3)
    # clipped tokens get no gradient; the unclipped one gets -A * ratio = 1.5 (/3)
    lp = lp.clone().requires_grad_(True)
    loss, _ = policy_loss(lp, old, adv, mask, epsilon=0.2, epsilon_high=0.28, loss_type="bnpo")
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0], [0.0], [0.5]]))


def test_policy_loss_kl_term_and_beta_zero_ignores_reference():
    # ratio 1, A = 0, ref = logp + ln 2 on every token:
    # k3 = exp(ln 2) - ln 2 - 1 = 0.306853 per token; grpo mean = 0.306853; times beta 0.1
    lp = torch.zeros(2, 3)
    ref = lp + math.log(2)
    zero_adv = torch.zeros(2)
    loss, m = policy_loss(lp, lp, zero_adv, MASK, ref_logprobs=ref, beta=0.1)
    assert loss.item() == pytest.approx(0.0306853, abs=1e-6)
    assert m["kl"].item() == pytest.approx(0.306853, abs=1e-6)
    garbage = torch.full((2, 3), float("nan"))
    loss0, m0 = policy_loss(lp, lp, zero_adv, MASK, ref_logprobs=garbage, beta=0.0)
    assert loss0.item() == 0.0 and "kl" not in m0
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(lp, lp, zero_adv, MASK, beta=0.1)


def test_policy_loss_padding_is_ignored():
    torch.manual_seed(0)
    lp = torch.randn(2, 3)
    changed = lp.clone()
    changed[1, 2] = -60.0  # a padded position, wildly different
    for lt in algorithm.LOSS_TYPES:
        a, _ = policy_loss(lp, lp.detach() - 0.1, ADV, MASK, loss_type=lt, max_completion_length=3)
        b, _ = policy_loss(changed, lp.detach() - 0.1, ADV, MASK, loss_type=lt, max_completion_length=3)
        assert a.item() == pytest.approx(b.item()), lt


def test_policy_loss_gradient_is_the_policy_gradient():
    # With old = logp.detach() the ratio is 1 and never clipped, so for grpo
    # d loss / d logp_it = -A_i * m_it / (|o_i| * B): the REINFORCE gradient.
    torch.manual_seed(0)
    lp = torch.randn(2, 3, requires_grad=True)
    loss, _ = policy_loss(lp, lp.detach(), ADV, MASK)
    loss.backward()
    lengths = MASK.sum(1, keepdim=True)
    expected = -ADV[:, None] * MASK / (lengths * 2)
    torch.testing.assert_close(lp.grad, expected)


def test_policy_loss_gradient_matches_finite_differences():
    torch.manual_seed(0)
    lp = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    old = lp.detach() + 0.05 * torch.randn(2, 3, dtype=torch.float64)
    ref = lp.detach() + 0.3 * torch.randn(2, 3, dtype=torch.float64)
    mask = MASK.double()

    def f(x):
        return policy_loss(x, old, ADV.double(), mask, ref_logprobs=ref, beta=0.2, loss_type="dapo")[0]

    assert torch.autograd.gradcheck(f, (lp,))


def test_micro_batches_with_global_normalizer_sum_to_the_big_batch_loss():
    torch.manual_seed(0)
    lp = torch.randn(4, 5)
    old = lp + 0.1 * torch.randn(4, 5)
    ref = lp + 0.1 * torch.randn(4, 5)
    adv = torch.randn(4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]]).float()
    for lt, n in (("grpo", 4), ("dr_grpo", 4), ("dapo", mask.sum()), ("bnpo", mask.sum())):
        kw = dict(ref_logprobs=None, beta=0.0, loss_type=lt, max_completion_length=5)
        big, _ = policy_loss(lp, old, adv, mask, **{**kw, "ref_logprobs": ref, "beta": 0.04})
        parts = [
            policy_loss(lp[s], old[s], adv[s], mask[s], **{**kw, "ref_logprobs": ref[s], "beta": 0.04}, num_items=n)[0]
            for s in (slice(0, 1), slice(1, 4))
        ]
        assert sum(parts).item() == pytest.approx(big.item(), abs=1e-6), lt


def test_policy_loss_rejects_unknown_loss_type():
    lp = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="dapo"):
        policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 1), loss_type="ppo")
    with pytest.raises(ValueError, match="max_completion_length"):
        policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 1), loss_type="dr_grpo")


# --------------------------------------------------------------------------- GSPO, sampler correction


def test_sequence_level_ratio_by_hand():
    # seq 1: logp - old = [0.1, 0.3] -> mean 0.2 -> s = e^0.2 = 1.221403, A = +1, within 1.28: loss -1.221403
    #        d/d logp_t = -s / 2 = -0.610701 per token
    # seq 2: logp - old = [-0.1] (one token, then padding) -> s = e^-0.1 = 0.904837, A = -1, above 0.8:
    #        loss +0.904837, d/d logp = s = 0.904837
    # grpo: mean over the two sequences -> (-1.221403 + 0.904837) / 2 = -0.158283; gradients halved
    old = torch.tensor([[-1.0, -2.0], [-1.0, 0.0]])
    lp = (old + torch.tensor([[0.1, 0.3], [-0.1, 5.0]])).requires_grad_(True)
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, m = policy_loss(lp, old, torch.tensor([1.0, -1.0]), mask, epsilon=0.2, epsilon_high=0.28,
                          importance_sampling_level="sequence")
    assert loss.item() == pytest.approx(-0.158283, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.305351, -0.305351], [0.452419, 0.0]]), atol=1e-6, rtol=0)
    assert m["ratio_mean"].item() == pytest.approx((2 * 1.221403 + 0.904837) / 3, abs=1e-6)
    # GSPO's own epsilons clip both: seq 1 above 1 + 4e-4, seq 2 below 1 - 3e-4 -> no gradient
    lp.grad = None
    loss, m = policy_loss(lp, old, torch.tensor([1.0, -1.0]), mask, epsilon=3e-4, epsilon_high=4e-4,
                          importance_sampling_level="sequence")
    loss.backward()
    assert lp.grad.abs().max().item() == 0.0 and m["clip/region"].item() == 1.0


def test_sequence_level_gradient_equals_autograd_of_the_written_formula():
    torch.manual_seed(0)
    lp = (torch.randn(3, 5) * 0.1 - 2).requires_grad_(True)
    old, adv = lp.detach() + torch.randn(3, 5) * 0.05, torch.tensor([0.5, -1.0, 2.0])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    loss, _ = policy_loss(lp, old, adv, mask, epsilon=0.03, epsilon_high=0.04, importance_sampling_level="sequence")
    (grad,) = torch.autograd.grad(loss, lp)
    # GSPO, written out: s_i = exp(mean_t (lp - old)), J = mean_i min(s_i A_i, clip(s_i) A_i)
    x = lp.detach().clone().requires_grad_(True)
    s = torch.exp(((x - old) * mask).sum(1) / mask.sum(1))
    written = -torch.min(s * adv, s.clamp(1 - 0.03, 1 + 0.04) * adv).mean()
    (want,) = torch.autograd.grad(written, x)
    assert loss.item() == pytest.approx(written.item(), rel=1e-6)
    torch.testing.assert_close(grad, want)


def test_token_weights_scale_the_surrogate_only():
    # ratio 1, A = +1, weights [0.5, 2]: surrogate [-0.5, -2]; bnpo over 2 tokens -> -1.25
    lp = torch.full((1, 2), -1.0)
    loss, _ = policy_loss(lp, lp, torch.ones(1), torch.ones(1, 2), loss_type="bnpo",
                          token_weights=torch.tensor([[0.5, 2.0]]))
    assert loss.item() == pytest.approx(-1.25)
    # with beta: the KL term is added unweighted. ref - logp = [ln 2, 0]: k3 = [2 - ln 2 - 1, 0] = [0.306853, 0]
    ref = lp + torch.tensor([[math.log(2.0), 0.0]])
    loss, _ = policy_loss(lp, lp, torch.ones(1), torch.ones(1, 2), loss_type="bnpo", beta=1.0, ref_logprobs=ref,
                          token_weights=torch.tensor([[0.5, 2.0]]))
    assert loss.item() == pytest.approx((-0.5 - 2.0 + 0.306853) / 2, abs=1e-6)


def test_sampler_correction_weights_by_hand():
    # d = old - q = [0, ln 3, ln 0.25] -> w = [1, 3, 0.25], cap 2
    q = torch.tensor([[-1.0, -2.0, -0.5]])
    old = q + torch.tensor([[0.0, math.log(3.0), math.log(0.25)]])
    mask = torch.ones(1, 3)
    w, s = algorithm.sampler_correction_weights(old, q, mask, "truncate", "token", 2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0, 0.25]]))  # TIS: 3 -> 2
    assert s["num_corrected"].item() == 1 and s["w_max"].item() == pytest.approx(3.0)
    w, s = algorithm.sampler_correction_weights(old, q, mask, "mask", "token", 2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 0.0]]))  # MIS: 3 > 2 and 0.25 < 1/2 leave
    assert s["num_corrected"].item() == 2
    # k3 of KL(q || pi_old) per token: exp(d) - d - 1 = [0, 3 - ln 3 - 1, 0.25 - ln 0.25 - 1]
    assert s["kl_sum"].item() / 3 == pytest.approx((0 + 0.901388 + 0.636294) / 3, abs=1e-5)
    # sequence level: the mean of d, ln(0.75) / 3 -> w = 0.75 ** (1/3) = 0.908560 on every token
    w, _ = algorithm.sampler_correction_weights(old, q, mask, "truncate", "sequence", 2.0)
    torch.testing.assert_close(w, torch.full((1, 3), 0.908560))


def test_sampler_correction_masks_tokens_without_a_log_prob():
    q = torch.tensor([[-1.0, float("nan"), -0.5], [-1.0, -1.0, -1.0]])
    old = torch.tensor([[-1.0, -1.0, -0.5], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # row 1's last token is padding: its values do not count
    w, s = algorithm.sampler_correction_weights(old, q, mask, "truncate", "token", 2.0)
    assert w.tolist() == [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]] and s["num_nonfinite"].item() == 1
    w, s = algorithm.sampler_correction_weights(old, q, mask, "truncate", "sequence", 2.0)
    assert w.tolist() == [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]  # one bad token voids its completion
    assert torch.isfinite(w).all() and s["num_tokens"].item() == 2
