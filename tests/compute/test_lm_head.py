"""The float32 LM head under bf16 autocast (grpo.compute.lm_head, model.lm_head_fp32): its numbers and
gradients, tied embeddings, LoRA, the reordered rollout path, and a short bf16 training run."""

import pytest
import torch
from torch import nn

from grpo.compute import models
from grpo.compute.lm_head import Float32Head, keep_head_float32
from grpo.compute.packed_linear import packed_dtypes, packed_linears
from grpo.config import ModelConfig
from grpo.training.trainer import Trainer
from tests.support.runs import read_metrics, tiny_config
from tests.support.tiny import make_tiny_model

BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


def test_the_head_runs_in_float32_under_autocast_with_float32_gradients():
    torch.manual_seed(0)
    head = nn.Linear(16, 40, bias=True)
    x = torch.randn(3, 16, requires_grad=True)
    exact = head(x)  # float32 reference, no autocast
    (w_grad,) = torch.autograd.grad(exact.logsumexp(-1).sum(), [head.weight])
    with BF16:
        low = head(x)
    assert low.dtype == torch.bfloat16 and (low.float() - exact).abs().max() > 1e-4  # what the fix is for
    head.__class__ = Float32Head
    with BF16:
        high = head(x)
    assert high.dtype == torch.float32
    torch.testing.assert_close(high, exact, rtol=0, atol=0)  # the same float32 product, bit for bit
    (grad,) = torch.autograd.grad(high.logsumexp(-1).sum(), [head.weight])
    torch.testing.assert_close(grad, w_grad, rtol=0, atol=0)
    x16 = x.detach().bfloat16()  # a bf16 body (model.dtype=bfloat16): upcast, then the float32 product
    torch.testing.assert_close(head(x16), x16.float() @ head.weight.T + head.bias)


def test_a_tied_head_keeps_its_parameter_its_names_and_moves_log_probs_towards_float32():
    model, _ = make_tiny_model()
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    names = list(model.state_dict())
    with torch.no_grad():
        exact = model(input_ids=ids).logits.log_softmax(-1)
        with BF16:
            before = model(input_ids=ids).logits.float().log_softmax(-1)
        keep_head_float32(model)
        assert keep_head_float32(model) is model  # twice: still one switch
        with BF16:
            after = model(input_ids=ids).logits
    head = model.get_output_embeddings()
    assert type(head) is Float32Head and head.weight is model.get_input_embeddings().weight  # still tied
    assert list(model.state_dict()) == names and after.dtype == torch.float32
    # the body still runs in bf16, so not exact, but closer than with a bf16 head
    assert (after.log_softmax(-1) - exact).abs().mean() < (before - exact).abs().mean()


def test_a_head_that_is_not_a_linear_layer_is_a_clear_error():
    class Odd(nn.Module):
        def get_output_embeddings(self):
            return nn.Identity()

    with pytest.raises(ValueError, match=r"model.lm_head_fp32.*Identity"):
        keep_head_float32(Odd())


def test_loaded_policy_reference_and_lora_get_the_float32_head(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir))
    policy, _ = models.load_policy(cfg)
    assert type(policy.get_output_embeddings()) is Float32Head
    reference = models.load_reference(cfg, policy, torch.bfloat16)  # the frozen copy, held in bf16
    assert type(reference.get_output_embeddings()) is Float32Head
    ids = torch.randint(0, 300, (1, 5))
    assert reference(input_ids=ids).logits.dtype == torch.float32
    off, _ = models.load_policy(ModelConfig(path=str(tiny_model_dir), lm_head_fp32=False))
    assert type(off.get_output_embeddings()) is nn.Linear
    cfg.lora.enabled, cfg.lora.target_modules = True, ["q_proj", "v_proj"]
    lora, _ = models.load_policy(cfg)
    assert type(lora.get_output_embeddings()) is Float32Head
    with BF16:
        out = lora(input_ids=ids).logits
    out.float().sum().backward()
    assert out.dtype == torch.float32 and any(p.grad is not None for n, p in lora.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("dtype", packed_dtypes())  # bfloat16 only where this CPU's oneDNN has bf16 kernels
def test_a_rollout_reorders_the_float32_head_in_float32(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.Linear(48, 64, bias=False))
    model[1].__class__ = Float32Head
    x = torch.randn(4, 32)
    with torch.no_grad():
        with packed_linears(model, dtype):
            assert "forward" in vars(model[1])  # the head is reordered too (the fast decode path)
            hidden = model[0](x)  # in `dtype`
            out = model(x)
        assert "forward" not in vars(model[1])
        torch.testing.assert_close(out, model[1](hidden), rtol=1e-5, atol=1e-5)  # the head's product: float32


def test_a_bf16_run_with_the_float32_head_trains(tmp_path, tiny_model_dir, data_file):
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, "model.precision=bfloat16", "model.lm_head_fp32=true",
                      "algorithm.beta=0.05", "checkpoint.every=0")
    trainer = Trainer.build(cfg)
    assert type(trainer.model.get_output_embeddings()) is Float32Head
    assert type(trainer.reference.model.get_output_embeddings()) is Float32Head
    trainer.run()
    metrics = read_metrics(cfg.output_dir)
    assert len(metrics) == 2 and all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    assert metrics[-1]["skipped_updates"] == 0
