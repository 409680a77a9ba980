"""Auxiliary losses in the update and the loop: the updater's gradient with SFT and DPO terms equals
one plain forward of the whole batch (whatever the micro-batching), short runs log aux/*, and a
scheduled weight resumes exactly."""

import json
import math
from pathlib import Path

import pytest
import torch

from grpo import algorithm
from grpo.compute.distributed import World
from grpo.config import AlgorithmConfig, AuxLossSpec
from grpo.training.logprobs import pairs_together_rows
from grpo.training.loss import AuxiliaryLosses, PolicyLoss
from grpo.training.trainer import train
from grpo.training.update import UpdateBatch, Updater, UpdateSettings
from tests.support.runs import assert_same_final_weights, read_metrics, tiny_config
from tests.training.test_update import CPU, plain_logits, setup  # noqa: F401 (setup: the fixture)

TERMS = [AuxLossSpec("sft", 0.3), AuxLossSpec("dpo", 0.5, dpo_beta=0.2)]
# two groups of 4: group 0 [0, 1, 1, 0] -> best row 1, worst row 0; group 1 [2, 0, 1, 3] -> best 7, worst 5
REWARDS = torch.tensor([0.0, 1.0, 1.0, 0.0, 2.0, 0.0, 1.0, 3.0])


def test_pairs_together_rows_by_hand():
    # lengths [5, 1, 4, 2], rows 1 and 2 a pair, size 2: units [0] (5), [1, 2] (4), [3] (2)
    class Rows:
        completion_mask = torch.tensor([[1] * 5, [1] + [0] * 4, [1] * 4 + [0], [1] * 2 + [0] * 3])

    chunks = pairs_together_rows(Rows(), 2, torch.tensor([-1, 2, 1, -1]))
    assert [c.tolist() for c in chunks] == [[0], [1, 2], [3]]
    # size 3: [0] and the pair fill the first (3 rows), [3] starts the next
    chunks = pairs_together_rows(Rows(), 3, torch.tensor([-1, 2, 1, -1]))
    assert [c.tolist() for c in chunks] == [[0, 1, 2], [3]]


@pytest.mark.parametrize("loss_type", algorithm.LOSS_TYPES)
def test_aux_terms_give_the_plain_forward_gradient_whatever_the_micro_batching(setup, loss_type):  # noqa: F811
    # the update (prompt cache, micro-batches of 2 or 3 rows, pairs kept together) against one plain
    # forward: policy_loss + 0.3 * SFT(best rows) + 0.5 * DPO(pairs, reference pi_old: the `old` log-probs)
    model, trajectory, _ = setup
    a = AlgorithmConfig(loss_type=loss_type, aux_losses=TERMS)
    loss, aux = PolicyLoss.from_config(a, 10), AuxiliaryLosses.from_config(a, 10, 10)
    params = [p for p in model.parameters() if p.requires_grad]
    advantages = torch.linspace(-1, 1, len(trajectory))
    torch.manual_seed(0)
    old = torch.randn(trajectory.completion_ids.shape) * 0.1 - 3
    plan = aux.plan(REWARDS, trajectory.loss_mask, 4, 0, World())
    assert plan.roles["sft"].tolist() == [0, 1, 0, 0, 0, 0, 0, 1]
    assert plan.roles["dpo"].tolist() == [-1, 1, 0, 0, 0, -1, 0, 1]
    logprobs = algorithm.token_logprobs(plain_logits(model, trajectory), trajectory.completion_ids)
    value, _ = loss(logprobs, old, advantages, trajectory.loss_mask, None, loss.local_items(trajectory.loss_mask))
    groups, mask = torch.arange(8) // 4, trajectory.loss_mask
    sft = algorithm.sft_loss(logprobs, None, mask, plan.roles["sft"], groups, plan.counts["sft"],
                             algorithm.AuxOptions(loss_type, 10))
    dpo = algorithm.dpo_loss(logprobs, old, mask, plan.roles["dpo"], groups, 2.0, algorithm.AuxOptions(dpo_beta=0.2))
    (value + 0.3 * sft + 0.5 * dpo).backward()
    want = [p.grad.clone() for p in params]
    scale = max(w.abs().max().item() for w in want)
    for micro in (2, 3):
        model.zero_grad(set_to_none=True)
        updater = Updater(model, params, loss, World(), UpdateSettings(micro, 1.0, CPU))
        got = updater.accumulate_gradients(UpdateBatch(trajectory, advantages, old, aux=plan))
        assert got["loss"] == pytest.approx((value + 0.3 * sft + 0.5 * dpo).item(), rel=1e-5)
        assert got["aux/sft"] == pytest.approx(sft.item(), rel=1e-5)
        assert got["aux/dpo"] == pytest.approx(dpo.item(), rel=1e-5)
        assert got["aux/sft/weight"] == 0.3 and got["aux/dpo/weight"] == 0.5 and got["aux/dpo/groups"] == 1.0
        for p, w in zip(params, want, strict=True):
            torch.testing.assert_close(p.grad, w, atol=1e-5 * scale, rtol=0)


def test_the_terms_alone_train_the_chosen_rows(setup):  # noqa: F811
    # zero advantages: the policy loss gives no gradient, the SFT term alone moves the weights
    model, trajectory, _ = setup
    a = AlgorithmConfig(aux_losses=[AuxLossSpec("sft", 1.0)])
    params = [p for p in model.parameters() if p.requires_grad]
    updater = Updater(model, params, PolicyLoss.from_config(a, 10), World(), UpdateSettings(3, 1.0, CPU))
    equal = AuxiliaryLosses.from_config(a, 10, 10).plan(torch.ones(8), trajectory.loss_mask, 4, 0, World())
    got = updater.accumulate_gradients(UpdateBatch(trajectory, torch.zeros(8), aux=equal))
    assert got["aux/sft"] == 0.0 and got["aux/sft/groups"] == 0.0  # all-equal rewards: no best completion
    assert all(p.grad is None or (p.grad == 0).all() for p in params)
    plan = AuxiliaryLosses.from_config(a, 10, 10).plan(REWARDS, trajectory.loss_mask, 4, 0, World())
    got = updater.accumulate_gradients(UpdateBatch(trajectory, torch.zeros(8), aux=plan))
    assert got["aux/sft"] > 0 and any(p.grad is not None and (p.grad != 0).any() for p in params)


AUX = "algorithm.aux_losses=[{name: sft, weight: 0.2, schedule: linear_decay, until_step: 4}, {name: dpo, weight: 0.5}]"


def test_a_short_run_with_both_terms_logs_them(tmp_path, tiny_model_dir, data_file):
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, "eval.num_examples=0", AUX, "train.micro_batch_size=2")
    train(cfg)
    metrics = read_metrics(cfg.output_dir)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])
        assert math.isfinite(m["aux/sft"]) and math.isfinite(m["aux/dpo"]) and m["aux/dpo/weight"] == 0.5
        assert 0 <= m["aux/sft/groups"] <= 1 and 0 <= m["aux/dpo/groups"] <= 1
    assert [m["aux/sft/weight"] for m in metrics] == pytest.approx([0.2, 0.15])  # 0.2 * (1 - s / 4), s = 0, 1
    assert any(m["aux/dpo/groups"] > 0 for m in metrics)  # length rewards differ: pairs were trained


def test_a_scheduled_weight_resumes_exactly(tmp_path, tiny_model_dir, data_file):
    def run(where, steps, *more):
        cfg = tiny_config(tmp_path / where, tiny_model_dir, data_file, f"train.num_steps={steps}",
                          "eval.num_examples=0", AUX, *more)
        train(cfg)
        return cfg

    full = run("full", 4)
    run("half", 2)
    resumed = run("half", 4, "resume=true")
    whole = read_metrics(full.output_dir)
    assert read_metrics(resumed.output_dir) == whole
    assert [m["aux/sft/weight"] for m in whole] == pytest.approx([0.2, 0.15, 0.1, 0.05])
    state = json.loads((Path(resumed.output_dir) / "checkpoint-000004" / "trainer_state.json").read_text())
    assert state["step"] == 4  # the schedule follows the step the checkpoint holds: nothing else to save
    assert_same_final_weights(full.output_dir, resumed.output_dir)
