"""LoRA by config, end to end, and gradient checkpointing, on the tiny random Llama.

The reference of a LoRA policy is the same model with its adapters switched off (no second
copy); training moves only the adapters; the final directory holds the adapters (for peft)
and the merged weights (for plain transformers), which agree; resume is exact; gradient
checkpointing changes memory, not gradients.
"""

import gc
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from grpo.compute import models
from grpo.config import LoraConfig, ModelConfig, load_config
from grpo.rollout import SamplingParams, TransformersEngine
from grpo.training.logprobs import completion_logprobs, make_micro_batch, prompt_cache
from grpo.training.trainer import LocalReference, Trainer
from tests.support import REWARDS_FILE

LENGTH_REWARD = f"{REWARDS_FILE}:length_reward"
TARGETS = ["q_proj", "v_proj", "down_proj"]
PROMPTS = ["<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n", "Hi there"]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                            for a in range(6) for b in range(5)))
    return path


def lora_config(out, tiny_model_dir, data_file, *overrides):
    return load_config(None, [
        f"model.path={tiny_model_dir}", "task.source=file", f"task.path={data_file}", "task.num_eval=2",
        f"rewards=[{{name: '{LENGTH_REWARD}'}}]", "rollout.group_size=4", "rollout.max_new_tokens=6",
        "train.prompts_per_step=2", "train.micro_batch_size=4", "train.num_steps=2", "train.learning_rate=1e-2",
        "algorithm.beta=0.1", "model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8",
        f"model.lora.target_modules={TARGETS}", "eval.num_examples=0", "log.progress=false",
        "log.tensorboard=false", "checkpoint.every=1", f"output_dir={out}", *overrides,
    ])


def base_name(peft_name):
    """peft parameter name -> the plain model's: base_model.model.X.q_proj.base_layer.weight -> X.q_proj.weight"""
    return peft_name.removeprefix("base_model.model.").replace(".base_layer", "")


def perturb_adapters(model, seed=0):
    """Fresh LoRA is a no-op (B = 0); give B values so the adapters change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def generate(model, tokenizer, group_size=4):
    params = SamplingParams(group_size, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=6, seed=0)
    return TransformersEngine(model, tokenizer).generate(PROMPTS, params)


def live_parameter_ptrs():
    gc.collect()
    return {o.data_ptr() for o in gc.get_objects() if type(o) is torch.nn.Parameter}


# --------------------------------------------------------------------------- the reference


def test_lora_reference_is_the_base_with_adapters_off_and_no_second_copy(tmp_path, tiny_model_dir, data_file):
    before = live_parameter_ptrs()
    trainer = Trainer.build(lora_config(tmp_path / "run", tiny_model_dir, data_file))
    new_ptrs = live_parameter_ptrs() - before
    # the only new weights are the policy's (base + adapters): the reference added none
    assert new_ptrs == {p.data_ptr() for p in trainer.model.parameters()}
    assert isinstance(trainer.reference, LocalReference)
    assert isinstance(trainer.reference.model, models.AdapterDisabledReference)
    assert trainer.reference.model.policy is trainer.model

    perturb_adapters(trainer.model)
    batch = generate(trainer.model, trainer.tokenizer)
    base = models.load_frozen(ModelConfig(path=str(tiny_model_dir)))
    expected = LocalReference(base, 8, torch.device("cpu"), 1.0).logprobs(batch)
    torch.testing.assert_close(trainer.reference.logprobs(batch), expected, rtol=0, atol=1e-5)
    policy = LocalReference(trainer.model, 8, torch.device("cpu"), 1.0).logprobs(batch)
    assert (policy - expected).abs().max() > 1e-2  # the adapters matter, and were switched off
    assert trainer.model.training  # the reference pass restored the policy's mode


# --------------------------------------------------------------------------- a LoRA run


def test_lora_run_trains_only_adapters_and_saves_adapter_and_merged_model(tmp_path, tiny_model_dir, data_file):
    cfg = lora_config(tmp_path / "run", tiny_model_dir, data_file)
    trainer = Trainer.build(cfg)
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.run()
    original = load_file(Path(tiny_model_dir) / "model.safetensors")
    changed = set()
    for name, p in trainer.model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad
            changed |= {name} if not torch.equal(p, initial[name]) else set()
        else:  # every base weight is still the file's, bit for bit
            assert not p.requires_grad and torch.equal(p, original[base_name(name)]), name
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    metrics = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and metrics[1]["kl"] > 0

    final = Path(cfg.output_dir) / "final"
    assert (final / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(final)  # plain transformers, no peft
    assert not any("lora" in n for n, _ in merged.named_parameters())
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), final / "adapter")
    trainer.model.eval()
    ids = trainer.tokenizer(PROMPTS[0], return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        want = trainer.model(input_ids=ids).logits
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(input_ids=ids).logits
        torch.testing.assert_close(merged(input_ids=ids).logits, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(adapted(input_ids=ids).logits, want, rtol=1e-4, atol=1e-5)
    assert (want - base_logits).abs().max() > 1e-3  # training moved the model


def test_lora_resume_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, data_file):
    full = lora_config(tmp_path / "full", tiny_model_dir, data_file, "train.num_steps=4")
    Trainer.build(full).run()
    Trainer.build(lora_config(tmp_path / "half", tiny_model_dir, data_file, "train.num_steps=2")).run()
    resumed = lora_config(tmp_path / "half", tiny_model_dir, data_file, "train.num_steps=4", "resume=true")
    trainer = Trainer.build(resumed)
    assert trainer.state.step == 2
    trainer.run()

    def metrics(cfg):
        lines = (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if not k.startswith(("time", "memory"))} for x in lines]

    assert metrics(resumed) == metrics(full)
    for name in ("adapter/adapter_model.safetensors", "model.safetensors"):
        a, b = (load_file(Path(c.output_dir) / "final" / name) for c in (full, resumed))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


# --------------------------------------------------------------------------- gradient checkpointing


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients(tiny_model_dir, lora):
    grads, recomputed = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same LoRA initialization in both models
        cfg = ModelConfig(path=str(tiny_model_dir), gradient_checkpointing=checkpointing,
                          lora=LoraConfig(enabled=lora, r=4, alpha=8, target_modules=TARGETS))
        model, tokenizer = models.load_policy(cfg)
        perturb_adapters(model)  # with B = 0 the gradient of A would be 0 and prove nothing
        batch = generate(model, tokenizer)
        # Count the layer's forward calls by wrapping forward: module hooks do not fire when
        # torch.utils.checkpoint recomputes.
        layer = (model.get_base_model() if lora else model).model.layers[0]
        calls, forward = [], layer.forward
        layer.forward = lambda *a, _f=forward, _c=calls, **k: _c.append(1) or _f(*a, **k)
        model.train()
        mb = make_micro_batch(batch, torch.arange(len(batch)), torch.device("cpu"))  # one micro-batch
        prompts = prompt_cache(model, batch, torch.device("cpu"))  # None with checkpointing
        logprobs, _ = completion_logprobs(model, batch, mb, prompts, 1.0)
        in_forward = len(calls)
        (logprobs * mb.completion_mask).sum().backward()
        if prompts is not None:
            prompts.backward()
        recomputed.append(len(calls) - in_forward)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert recomputed[0] == 0 and recomputed[1] >= 1  # checkpointing re-runs the layer in backward
    assert grads[0].keys() == grads[1].keys() and (not lora or all("lora_" in n for n in grads[0]))
    # Without checkpointing each prompt runs once for its group (shared KV cache), with it
    # every row runs prompt + completion: the same sums in another order, so compare norms.
    for name, g in grads[0].items():
        assert (grads[1][name] - g).norm() <= 1e-5 * g.norm() + 1e-8, name
    assert sum(g.abs().sum() for g in grads[0].values()) > 0


@pytest.mark.parametrize("lora", ["false", "true"])
def test_a_training_step_runs_with_gradient_checkpointing(tmp_path, tiny_model_dir, data_file, lora):
    cfg = lora_config(tmp_path / "run", tiny_model_dir, data_file, "model.gradient_checkpointing=true",
                      f"model.lora.enabled={lora}")
    trainer = Trainer.build(cfg)
    assert (trainer.model.get_base_model() if lora == "true" else trainer.model).is_gradient_checkpointing
    metrics, _ = trainer.train_step()
    assert torch.isfinite(torch.tensor([metrics["loss"], metrics["grad_norm"], metrics["kl"]])).all()
    assert metrics["grad_norm"] > 0
