"""Dynamic loss scaling under float16 compute (grpo.compute.loss_scale, model.precision=float16): the
scaled backward and unscaled step by hand, an overflow skipped without stopping the run, exact resume."""

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from grpo.compute.distributed import World
from grpo.compute.loss_scale import build_loss_scaler, overflowed
from grpo.training.trainer import Trainer, train
from grpo.training.update import optimizer_step
from tests.support.runs import read_metrics, tiny_config

FP16 = "model.precision=float16"


def test_only_float16_compute_gets_a_scaler_and_it_needs_float32_weights():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert build_loss_scaler(torch.float32, "cpu", params, World(), 2.0**16, 2000) is None
    assert build_loss_scaler(torch.bfloat16, "cpu", params, World(), 2.0**16, 2000) is None
    scaler = build_loss_scaler(torch.float16, "cpu", params, World(), 1024.0, 7)
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.get_scale() == 1024.0
    assert scaler.get_growth_interval() == 7
    with pytest.raises(ValueError, match=r"`model.dtype` gives float16.*model.dtype=auto"):
        build_loss_scaler(torch.float16, "cpu", [torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))], World(),
                          2.0**16, 2000)


def test_which_skips_are_the_scalers():
    assert overflowed(65536.0, 0.3)  # finite loss, scaled gradients overflowed: halve and retry
    assert not overflowed(65536.0, math.nan)  # the loss itself is broken: a bad step
    assert not overflowed(1.0, 0.3)  # non-finite even unscaled: a bad step
    assert not overflowed(None, 0.3)  # no scaler (float32 / bf16): every skip is a bad step


def one_update(scale: float, factor: float):
    """y = w . x with w = [1, 2], x = [3, -4]; loss = factor * y -> dloss/dw = factor * x."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = torch.optim.AdamW([w], lr=0.1, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=1000)
    loss = factor * (w * torch.tensor([3.0, -4.0])).sum()
    scaler.scale(loss).backward()
    assert w.grad.tolist() == [3.0 * factor * scale, -4.0 * factor * scale] or not w.grad.isfinite().all()
    norm, applied = optimizer_step(optimizer, scheduler, [w], 100.0, loss.item(), scaler)
    return w.detach(), norm, applied, scaler.get_scale(), scheduler.last_epoch


def test_the_step_unscales_before_clipping_and_an_overflow_halves_the_scale():
    # scale 2^4: grads [48, -64] unscale to [3, -4] exactly (a power of 2): the norm is the true 5;
    # AdamW's first step moves each weight by lr * sign(g) = 0.1: w -> [0.9, 2.1]
    w, norm, applied, scale, updates = one_update(16.0, 1.0)
    assert (norm, applied, scale, updates) == (5.0, True, 16.0, 1)
    torch.testing.assert_close(w, torch.tensor([0.9, 2.1]))
    # scale 2^126 times loss factor 1e10: the scaled gradient is inf in float32 -> skipped, the
    # weights untouched, the schedule not advanced, the scale halved to 2^125
    w, norm, applied, scale, updates = one_update(2.0**126, 1e10)
    assert (math.isfinite(norm), applied, scale, updates) == (False, False, 2.0**125, 0)
    assert w.tolist() == [1.0, 2.0]


def test_overflowing_float16_updates_are_skipped_counted_and_do_not_stop_the_run(tmp_path, tiny_model_dir,
                                                                               data_file):
    # 2^126 overflows every float16 backward; max_bad_steps=1 would stop at the first bad step
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, FP16, "train.fp16_initial_scale=8.507059173023462e37",
                      "train.max_bad_steps=1", "train.num_steps=3", "eval.num_examples=0", "checkpoint.every=0")
    trainer = Trainer.build(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.run()
    metrics = read_metrics(cfg.output_dir)
    assert [m["fp16/scale"] for m in metrics] == [2.0**125, 2.0**124, 2.0**123]
    assert [m["fp16/skipped"] for m in metrics] == [1, 2, 3]
    assert all(m["skipped_updates"] == 0 and math.isfinite(m["loss"]) for m in metrics)
    assert trainer.state.num_updates == 0 and trainer.state.bad_steps_in_a_row == 0
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


def test_a_float16_run_trains_grows_its_scale_and_resumes_exactly(tmp_path, tiny_model_dir, data_file):
    common = (FP16, "train.fp16_growth_interval=3", "eval.num_examples=0")
    full = tiny_config(tmp_path / "full", tiny_model_dir, data_file, *common, "train.num_steps=4")
    train(full)
    metrics = read_metrics(full.output_dir)
    # 3 clean updates in a row double the scale; a resume that lost the growth count would not
    assert [m["fp16/scale"] for m in metrics] == [2.0**16, 2.0**16, 2.0**17, 2.0**17]
    assert all(m["fp16/skipped"] == 0 and m["skipped_updates"] == 0 and math.isfinite(m["loss"]) for m in metrics)
    half = tiny_config(tmp_path / "half", tiny_model_dir, data_file, *common, "train.num_steps=2")
    train(half)
    resumed = tiny_config(tmp_path / "half", tiny_model_dir, data_file, *common, "train.num_steps=4", "resume=true")
    train(resumed)
    assert read_metrics(resumed.output_dir) == metrics
    w_full = AutoModelForCausalLM.from_pretrained(Path(full.output_dir) / "final").state_dict()
    w_res = AutoModelForCausalLM.from_pretrained(Path(resumed.output_dir) / "final").state_dict()
    assert all(torch.equal(w_full[n], w_res[n]) for n in w_full)
