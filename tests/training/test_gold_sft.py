"""SFT on gold demonstrations (algorithm.aux_losses gold_sft): the demonstration rows by hand, the updater's
gradient against one plain forward of prompt + demonstration whatever the micro-batching, short runs that
log it and lower its NLL, exact resume, and the multi-turn refusal."""

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from grpo import algorithm
from grpo.compute.distributed import World
from grpo.config import AlgorithmConfig, AuxLossSpec
from grpo.training.loss import AuxiliaryLosses, PolicyLoss
from grpo.training.teachers import GoldDemonstrations
from grpo.training.trainer import train
from grpo.training.update import UpdateBatch, Updater, UpdateSettings
from tests.support.runs import assert_same_final_weights, read_metrics, tiny_config
from tests.training.test_update import CPU, plain_logits, setup  # noqa: F401 (setup: the fixture)

DEMOS = ["<think> 3 + 4 = 7 </think> <answer> 7 </answer>", "<think> 12 + 30 = 42, 42 + 7 = 49 </think> <answer> 49 </answer>"]


def example(text):
    return SimpleNamespace(demonstration=text)


def test_gold_demonstrations_by_hand(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = tokenizer.eos_token_id
    gold = GoldDemonstrations(tokenizer, eos, "<think>", max_tokens=64)
    ids = tokenizer(" 3 + 4 = 7 </think> <answer> 7 </answer>", add_special_tokens=False)["input_ids"]
    assert gold.tokens(example(DEMOS[0])) == ids + [eos]  # the prompt's prefix is not trained again
    assert GoldDemonstrations(tokenizer, eos, "", 64).tokens(example(DEMOS[0])) == (
        tokenizer(DEMOS[0], add_special_tokens=False)["input_ids"] + [eos])
    assert gold.tokens(example(None)) is None  # an example without a demonstration gives no row
    assert GoldDemonstrations(tokenizer, eos, "<think>", len(ids)).tokens(example(DEMOS[0])) is None  # too long
    assert GoldDemonstrations(tokenizer, eos, "<think>", len(ids) + 1).tokens(example(DEMOS[0])) is not None
    # groups of sizes [3, 1, 2]: rows 0, 3 and 4 start them; the middle example has no demonstration
    prompts = torch.arange(6 * 2).reshape(6, 2)
    rows = _Rows(prompts, torch.ones(6, 2, dtype=torch.long))
    batch = GoldDemonstrations(tokenizer, eos, "", 64).batch(rows, [example(DEMOS[0]), example(None), example(DEMOS[1])],
                                                             [3, 1, 2])
    assert batch.prompt_rows.tolist() == [0, 4]
    assert torch.equal(batch.prompt_ids, prompts[[0, 4]])
    lengths = [len(tokenizer(d, add_special_tokens=False)["input_ids"]) + 1 for d in DEMOS]
    assert batch.completion_mask.sum(1).tolist() == lengths
    assert batch.completion_ids[0, lengths[0] - 1] == eos and batch.completion_ids.shape[1] == max(lengths)
    assert GoldDemonstrations(tokenizer, eos, "", 64).batch(rows, [example(None)] * 3, [3, 1, 2]) is None


class _Rows:
    """A stand-in trajectory: its prompts, one row each."""

    def __init__(self, prompt_ids, prompt_mask):
        self.prompt_ids, self.prompt_mask = prompt_ids, prompt_mask

    def __len__(self):
        return len(self.prompt_ids)


def gold_batch(trajectory, tokenizer):
    """The setup fixture's two groups of 4, a demonstration each."""
    gold = GoldDemonstrations(tokenizer, tokenizer.eos_token_id, "", 64)
    return gold.batch(trajectory, [example(d) for d in DEMOS], 4)


def plain_gold_logprobs(model, trajectory, gold):
    """Log-probs of the demonstration tokens from one plain forward of prompt + demonstration: [M, D]."""
    rows = SimpleNamespace(prompt_ids=trajectory.prompt_ids[gold.prompt_rows],
                           prompt_mask=trajectory.prompt_mask[gold.prompt_rows],
                           completion_ids=gold.completion_ids, completion_mask=gold.completion_mask)
    return algorithm.token_logprobs(plain_logits(model, rows), gold.completion_ids)


@pytest.mark.parametrize("loss_type", algorithm.LOSS_TYPES)
def test_gold_sft_gives_the_plain_forward_gradient_whatever_the_micro_batching(setup, tiny_model_dir,  # noqa: F811
                                                                             loss_type):
    # policy_loss + 0.4 * SFT(demonstrations), against one plain forward of the samples and one of the demonstrations
    model, trajectory, _ = setup
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    gold = gold_batch(trajectory, tokenizer)
    a = AlgorithmConfig(loss_type=loss_type, aux_losses=[AuxLossSpec("gold_sft", 0.4)])
    loss, aux = PolicyLoss.from_config(a, 64), AuxiliaryLosses.from_config(a, 10, 64)
    params = [p for p in model.parameters() if p.requires_grad]
    advantages = torch.linspace(-1, 1, len(trajectory))
    plan = aux.plan(torch.arange(8.0), trajectory.loss_mask, 4, 0, World(), demonstrations=gold)
    assert plan.roles["gold_sft"].tolist() == [0] * 8  # no sampled row
    count = float(algorithm.AGGREGATIONS[loss_type].count(gold.completion_mask.float()))
    assert plan.counts["gold_sft"] == count and plan.metrics["aux/gold_sft/groups"] == 1.0
    logprobs = algorithm.token_logprobs(plain_logits(model, trajectory), trajectory.completion_ids)
    value, _ = loss(logprobs, logprobs.detach(), advantages, trajectory.loss_mask, None,
                    loss.local_items(trajectory.loss_mask))
    gold_logprobs = plain_gold_logprobs(model, trajectory, gold)
    sft = algorithm.sft_loss(gold_logprobs, None, gold.completion_mask, torch.ones(2, dtype=torch.long),
                             torch.zeros(2), count, algorithm.AuxOptions(loss_type, 64))
    nll = -(gold_logprobs * gold.completion_mask).sum() / gold.completion_mask.sum()
    if loss_type in ("bnpo", "dapo"):  # token-level: the mean NLL per demonstration token
        assert sft.item() == pytest.approx(nll.item(), rel=1e-6)
    (value + 0.4 * sft).backward()
    want = [p.grad.clone() for p in params]
    scale = max(w.abs().max().item() for w in want)
    for micro in (1, 3):
        model.zero_grad(set_to_none=True)
        updater = Updater(model, params, loss, World(), UpdateSettings(micro, 1.0, CPU))
        got = updater.accumulate_gradients(UpdateBatch(trajectory, advantages, aux=plan))
        assert got["loss"] == pytest.approx((value + 0.4 * sft).item(), rel=1e-5)
        assert got["aux/gold_sft"] == pytest.approx(sft.item(), rel=1e-5)
        for p, w in zip(params, want, strict=True):
            torch.testing.assert_close(p.grad, w, atol=1e-5 * scale, rtol=0)


def test_without_demonstrations_the_term_adds_nothing(setup):  # noqa: F811
    model, trajectory, _ = setup
    a = AlgorithmConfig(aux_losses=[AuxLossSpec("gold_sft", 1.0)])
    params = [p for p in model.parameters() if p.requires_grad]
    updater = Updater(model, params, PolicyLoss.from_config(a, 10), World(), UpdateSettings(3, 1.0, CPU))
    plan = AuxiliaryLosses.from_config(a, 10, 10).plan(torch.arange(8.0), trajectory.loss_mask, 4, 0, World())
    got = updater.accumulate_gradients(UpdateBatch(trajectory, torch.zeros(8), aux=plan))
    assert got["aux/gold_sft"] == 0.0 and got["aux/gold_sft/groups"] == 0.0
    assert all(p.grad is None or (p.grad == 0).all() for p in params)


GOLD = "algorithm.aux_losses=[{name: gold_sft, weight: 1.0}]"


def run(tmp_path, tiny_model_dir, data_file, where, *overrides):
    cfg = tiny_config(tmp_path / where, tiny_model_dir, data_file, "eval.num_examples=0", "rollout.max_new_tokens=72",
                      *overrides)
    train(cfg)
    return read_metrics(cfg.output_dir)


def test_a_short_gold_sft_run_lowers_the_demonstrations_nll(tmp_path, tiny_model_dir, data_file):
    # zero reward weights: the advantages are 0 and the gold term is the only signal
    metrics = run(tmp_path, tiny_model_dir, data_file, "gold", GOLD, "train.num_steps=4",
                  "rewards=[{name: format, weight: 0}]")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(m["aux/gold_sft/groups"] == 1.0 and math.isfinite(m["aux/gold_sft"]) for m in metrics)
    nll = [m["aux/gold_sft"] for m in metrics]
    assert nll[-1] < nll[0] * 0.9, nll  # lr 1e-3 on a tiny model: the demonstrations' tokens become likely
    # a completion budget too small for any demonstration trains none
    short = run(tmp_path, tiny_model_dir, data_file, "short", GOLD, "rollout.max_new_tokens=6")  # a demonstration is 66 tokens
    assert all(m["aux/gold_sft/groups"] == 0.0 and m["aux/gold_sft"] == 0.0 for m in short)


def test_resume_is_exact_with_gold_sft(tmp_path, tiny_model_dir, data_file):
    whole = run(tmp_path, tiny_model_dir, data_file, "full", "train.num_steps=4", GOLD)
    run(tmp_path, tiny_model_dir, data_file, "half", "train.num_steps=2", GOLD)
    resumed = run(tmp_path, tiny_model_dir, data_file, "half", "train.num_steps=4", "resume=true", GOLD)
    assert resumed == whole
    assert_same_final_weights(tmp_path / "full" / "run", tmp_path / "half" / "run")
