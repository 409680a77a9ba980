"""The update on trajectories with inserted tokens: loss_mask decides what is trained and counted."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo import algorithm
from grpo.compute.distributed import World
from grpo.config import AlgorithmConfig
from grpo.rollout import SamplingParams, SharedPrefixEngine
from grpo.training.loss import PolicyLoss
from grpo.training.update import UpdateBatch, Updater, UpdateSettings, mean_over_iterations
from tests.support.trajectories import render

CPU = torch.device("cpu")


@pytest.fixture
def setup(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = SharedPrefixEngine(model, tokenizer)
    engine.eos_ids = engine.eos_ids + [tokenizer.convert_tokens_to_ids("Ġ+")]  # rows of different lengths
    prompts = render(tokenizer, ["What is 3 + 4?", "What is 12 + 30 + 7?"])
    trajectory = engine.generate(prompts, SamplingParams(4, 1.0, 1.0, 0, 10, seed=3))
    # tokens 2-4 of every row that reaches them stand for a tool's reply: in the input, not trained on
    inserted = torch.zeros_like(trajectory.loss_mask, dtype=torch.bool)
    inserted[:, 2:5] = True
    trajectory.loss_mask = trajectory.loss_mask.masked_fill(inserted, 0)
    assert (trajectory.completion_mask.bool() & inserted).any() and trajectory.loss_mask.sum() > 0
    return model, trajectory, inserted & trajectory.completion_mask.bool()


def plain_logits(model, trajectory):
    """The logits predicting every completion token from one plain forward of every row: [N, C, V]."""
    ids = torch.cat([trajectory.prompt_ids, trajectory.completion_ids], 1)
    mask = torch.cat([trajectory.prompt_mask, trajectory.completion_mask], 1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    return logits[:, -trajectory.completion_ids.shape[1] - 1 : -1]


def plain_loss(model, trajectory, advantages, old, ref, loss):
    """The same loss from one plain forward of every row: the reference the update must equal."""
    logits = plain_logits(model, trajectory)
    logprobs = algorithm.token_logprobs(logits, trajectory.completion_ids)
    entropy = algorithm.token_entropy(logits.detach())
    num_items = loss.local_items(trajectory.loss_mask)
    value, metrics = loss(logprobs, old, advantages, trajectory.loss_mask, ref, num_items)
    return value, metrics, algorithm.masked_mean(entropy, trajectory.loss_mask)


@pytest.mark.parametrize("loss_type", algorithm.LOSS_TYPES)
def test_inserted_tokens_get_no_gradient_and_are_not_counted(setup, loss_type):
    model, trajectory, inserted = setup
    loss = PolicyLoss.from_config(AlgorithmConfig(loss_type=loss_type, beta=0.1), 10)
    params = [p for p in model.parameters() if p.requires_grad]
    advantages = torch.linspace(-1, 1, len(trajectory))
    torch.manual_seed(0)
    old = torch.randn(trajectory.completion_ids.shape) * 0.1 - 3
    ref = torch.randn(trajectory.completion_ids.shape) * 0.1 - 3
    value, expected, entropy = plain_loss(model, trajectory, advantages, old, ref, loss)
    value.backward()
    want = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    # poison the inserted positions: NaN or huge values there must not reach the loss or gradient
    old[inserted], ref[inserted] = float("nan"), 1e30
    updater = Updater(model, params, loss, World(), UpdateSettings(3, 1.0, CPU))
    got = updater.accumulate_gradients(UpdateBatch(trajectory, advantages, old, ref), with_entropy=True)
    assert got["loss"] == pytest.approx(value.item(), rel=1e-5)
    for key in ("kl", "clip/region", "ratio_mean"):
        assert got[key] == pytest.approx(expected[key].item(), rel=1e-4, abs=1e-6), key
    assert got["entropy"] == pytest.approx(entropy.item(), rel=1e-5)
    scale = max(w.abs().max().item() for w in want)  # two summation orders: 1e-5 of the largest element
    for p, w in zip(params, want, strict=True):
        assert torch.isfinite(p.grad).all()
        torch.testing.assert_close(p.grad, w, atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize("loss_type", algorithm.LOSS_TYPES)
def test_entropy_bonus_and_token_selection_give_the_plain_forward_gradient(setup, loss_type):
    # the update (prompt cache, micro-batches of 3 rows) against one plain forward of
    # policy_loss with the selection as token weights, minus 0.05 * the entropy aggregated like the loss
    model, trajectory, _ = setup
    loss = PolicyLoss.from_config(AlgorithmConfig(loss_type=loss_type), 10)
    params = [p for p in model.parameters() if p.requires_grad]
    advantages = torch.linspace(-1, 1, len(trajectory))
    torch.manual_seed(0)
    old = torch.randn(trajectory.completion_ids.shape) * 0.1 - 3
    selected = (torch.rand(trajectory.completion_ids.shape) > 0.5).float()
    logits = plain_logits(model, trajectory)
    logprobs = algorithm.token_logprobs(logits, trajectory.completion_ids)
    num_items = loss.local_items(trajectory.loss_mask)
    value, _ = loss(logprobs, old, advantages, trajectory.loss_mask, None, num_items, selected)
    value = value + loss.entropy_term(algorithm.token_entropy(logits), trajectory.loss_mask, num_items, 0.05)
    value.backward()
    want = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    updater = Updater(model, params, loss, World(), UpdateSettings(3, 1.0, CPU))
    got = updater.accumulate_gradients(UpdateBatch(trajectory, advantages, old, selected=selected, entropy_coef=0.05))
    assert got["loss"] == pytest.approx(value.item(), rel=1e-5)
    scale = max(w.abs().max().item() for w in want)
    for p, w in zip(params, want, strict=True):
        torch.testing.assert_close(p.grad, w, atol=1e-5 * scale, rtol=0)


def test_no_selected_token_and_no_bonus_leave_no_gradient(setup):
    model, trajectory, _ = setup
    params = [p for p in model.parameters() if p.requires_grad]
    updater = Updater(model, params, PolicyLoss.from_config(AlgorithmConfig(), 10), World(), UpdateSettings(3, 1.0, CPU))
    none = torch.zeros(trajectory.completion_ids.shape)
    updater.accumulate_gradients(UpdateBatch(trajectory, torch.linspace(-1, 1, len(trajectory)), selected=none))
    assert all(p.grad is None or (p.grad == 0).all() for p in params)
    updater.accumulate_gradients(UpdateBatch(trajectory, torch.zeros(len(trajectory)), entropy_coef=0.1))
    assert any(p.grad is not None and (p.grad != 0).any() for p in params)  # the bonus alone moves the weights


def test_a_masked_token_gets_exactly_zero_gradient():
    # two sequences of three tokens; token (0, 1) was inserted, (1, 2) is padding
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]], requires_grad=True)
    old = torch.tensor([[-1.1, float("nan"), -0.4], [-0.3, -0.9, float("inf")]])
    ref = torch.tensor([[-1.0, 1e30, -0.6], [-0.2, -0.7, float("nan")]])
    loss_mask = torch.tensor([[1, 0, 1], [1, 1, 0]])
    for loss_type in algorithm.LOSS_TYPES:
        logprobs.grad = None
        loss = PolicyLoss.from_config(AlgorithmConfig(loss_type=loss_type, beta=0.04), 3)
        value, metrics = loss(logprobs, old, torch.tensor([1.0, -1.0]), loss_mask, ref, loss.local_items(loss_mask))
        value.backward()
        assert logprobs.grad[0, 1].item() == 0.0 and logprobs.grad[1, 2].item() == 0.0, loss_type
        assert (logprobs.grad[loss_mask.bool()] != 0).all(), loss_type
        assert all(torch.isfinite(v) for v in metrics.values()), loss_type
    # the normalizers count sequences or loss-masked tokens, never the inserted ones
    assert PolicyLoss.from_config(AlgorithmConfig(loss_type="dapo"), 3).local_items(loss_mask) == 4
    assert PolicyLoss.from_config(AlgorithmConfig(loss_type="grpo"), 3).local_items(loss_mask) == 2


def test_rollout_metrics_count_sampled_tokens_only(setup):
    from types import SimpleNamespace

    from grpo.training.step_metrics import rollout_metrics

    _, trajectory, _ = setup
    n = len(trajectory)
    scores = SimpleNamespace(total=torch.arange(n, dtype=torch.float32), per_function={}, errors={})
    m = rollout_metrics(trajectory, scores, torch.zeros(n), 4, World())
    assert m["tokens_generated"] == int(trajectory.loss_mask.sum()) < int(trajectory.completion_mask.sum())
    assert m["completion_length/max"] == trajectory.loss_mask.sum(1).max().item()


def test_metrics_are_averaged_over_iterations():
    # loss 1 and 3 -> 2; entropy only on the first update -> its value
    assert mean_over_iterations([{"loss": 1.0, "entropy": 5.0}, {"loss": 3.0}]) == {"loss": 2.0, "entropy": 5.0}
