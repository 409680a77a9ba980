"""Load the policy, the reference model and the tokenizer.

    model, tokenizer = load_policy(cfg.model)        # train mode; LoRA-wrapped when enabled
    reference = load_reference(cfg.model, model)     # only when algorithm.beta > 0
    logits = reference(input_ids=ids, attention_mask=mask).logits

`model.path` may be
  - a directory written from a model handed over as an object (grpo.train(model=, tokenizer=)):
    `save_loaded` writes it into <run>/base_model, with given.json saying what the object was;
    the policy is that object itself (trained in place, as TRL does), and everything that needs
    the initial weights from disk reads the copy: the reference model (beta > 0), vLLM, a resume
    from the CLI, `grpo eval` of a checkpoint;
  - null: the bundled SmolLM2-135M-Instruct, converted once from its GGUF file into a cache
    (grpo.compute.gguf_cache);
  - a local Hugging Face model directory;
  - a `.gguf` file, converted the same way into the cache.

Directories this module writes (save_loaded, save_final) are committed atomically, as the
cache's conversions are (gguf_cache.cached_conversion).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from grpo.compute.attention import attention_for
from grpo.compute.chunked_head import ModelParts, split_model
from grpo.compute.dtypes import resolve_dtype, weight_dtype
from grpo.compute.gguf_cache import bundled_model_dir, cached_conversion, gguf_model_dir
from grpo.compute.lm_head import keep_head_float32
from grpo.config import ModelConfig

_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")


# --------------------------------------------------------------------------- devices


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; otherwise any torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"config field `model.device` = {name!r} is invalid: expected auto, cpu, cuda, cuda:N ({e})"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"config field `model.device` = {name!r} is invalid: CUDA is not available here")
    return device


# --------------------------------------------------------------------------- loading


def resolve_model_dir(path: str | None, name: str = "model.path") -> Path:
    """model.path (or the config field `name`) -> a local HF directory (converting the bundled model / a .gguf file)."""
    if path is None:
        return bundled_model_dir()
    p = Path(path).expanduser()
    field = f"config field `{name}` = {path!r}"
    if not p.exists():
        raise ValueError(f"{field} is invalid: no such file or directory")
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ValueError(f"{field} is invalid: expected a model directory or a .gguf file")
        return gguf_model_dir(p)
    if not (p / "config.json").is_file():
        hint = " (for a GGUF file, give the .gguf path itself)" if any(p.glob("*.gguf")) else ""
        raise ValueError(f"{field} is invalid: the directory has no config.json{hint}")
    if not any(any(p.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        raise ValueError(f"{field} is invalid: the directory has no weights (*.safetensors or *.bin)")
    return p


def load_tokenizer(path: Path) -> Any:
    """The tokenizer of a model directory: left padding, pad token set (eos when the model has none)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ValueError(f"could not load the tokenizer of model.path {str(path)!r}: {e}") from e
    return prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding and a pad token, in place (a loaded tokenizer is copied first)."""
    # Batched generation pads prompts on the left so every row's last token is its own.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _model_from(path: Path, dtype: torch.dtype, device: torch.device) -> PreTrainedModel:
    attention = attention_for(device)  # grouped-query SDPA without key/value copies on CPU
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attention)
        except ValueError:  # an architecture without transformers' attention interface
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as e:
        raise ValueError(f"could not load the model in model.path {str(path)!r}: {e}") from e
    return model.to(device)


@torch.no_grad()
def _own_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The policy's CPU weights copied into the process's own memory, once, in place.

    transformers maps a safetensors file into memory and its tensors stay backed by the file
    until written: the first write of each 4 KiB page (dithering the master weights, or the
    first optimizer step) then takes a read fault and a copy-on-write fault. One sequential
    copy per tensor costs a fraction of that (bench/RESULTS.md, "Start-up"). While it runs the
    mapped pages and the copies are both resident (twice the weights, once at start-up: below
    the training peak, which holds weights, gradients and two AdamW moments). A frozen
    reference is never written, so it keeps the mapping (load_frozen)."""
    for param in model.parameters():  # a tied weight is one Parameter: copied once
        if param.device.type == "cpu":
            param.data = param.data.clone()
    return model


@dataclass
class LoadedModel:
    """A transformers model and its tokenizer handed over as objects (grpo.train / grpo.evaluate)."""

    model: PreTrainedModel
    tokenizer: Any

    @classmethod
    def check(cls, model: Any, tokenizer: Any) -> LoadedModel:
        if not isinstance(model, PreTrainedModel):
            kind = "a peft model" if hasattr(model, "peft_config") else type(model).__name__
            raise ValueError(f"model= takes a transformers PreTrainedModel (AutoModelForCausalLM...); got {kind}"
                             "; for LoRA pass the base model and set model.lora.enabled=true")
        if tokenizer is None or not callable(getattr(tokenizer, "apply_chat_template", None)):
            raise ValueError("model= needs its tokenizer too: grpo.train(model=model, tokenizer=tokenizer) "
                             f"(got {type(tokenizer).__name__}); nothing is downloaded to find one")
        return cls(model, tokenizer)

    def describe(self) -> dict[str, Any]:
        """What the object was, for <run>/base_model/given.json."""
        first = next(self.model.parameters())
        return {"given_as": "a loaded model object (grpo.train(model=..., tokenizer=...))",
                "class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
                "name_or_path": getattr(self.model.config, "_name_or_path", None) or None,
                "tokenizer_class": type(self.tokenizer).__qualname__,
                "tokenizer_name_or_path": getattr(self.tokenizer, "name_or_path", None),
                "num_parameters": sum(p.numel() for p in self.model.parameters()),
                "dtype": str(first.dtype).removeprefix("torch."), "device": str(first.device)}


def save_loaded(loaded: LoadedModel, out_dir: Path) -> Path:
    """The object's weights, config and tokenizer as an HF directory (atomic; replaces an older one)."""
    out_dir = Path(out_dir)

    def build(tmp: Path) -> None:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        (tmp / "given.json").write_text(json.dumps(loaded.describe(), indent=1) + "\n")

    if out_dir.exists():
        shutil.rmtree(out_dir)
    return cached_conversion(out_dir, build)


def load_policy(cfg: ModelConfig, loaded: LoadedModel | None = None) -> tuple[nn.Module, Any]:
    """The trainable policy (train mode) and its tokenizer.

    With cfg.lora.enabled the model is a peft PeftModel whose base weights are frozen.
    loaded: a model object is the policy itself (moved only to a model.device / model.dtype
    that is not auto; auto keeps where it is), its tokenizer a prepared copy; cfg.path, when
    set, is the directory with its initial weights (save_loaded), which vLLM reads.
    """
    if loaded is not None:
        model, tokenizer = loaded.model, prepare_tokenizer(copy.deepcopy(loaded.tokenizer))
        if cfg.device != "auto":
            model.to(resolve_device(cfg.device))
        if cfg.dtype != "auto":
            model.to(resolve_dtype(cfg.dtype, next(model.parameters()).device))
        if cfg.path is not None:
            model.config._name_or_path = str(cfg.path)
    else:
        device = resolve_device(cfg.device)
        path = resolve_model_dir(cfg.path)
        tokenizer = load_tokenizer(path)
        model = _own_copy(_model_from(path, weight_dtype(cfg.dtype), device))
    if cfg.lm_head_fp32:  # before LoRA: the head's class switch, not a wrapper (grpo.compute.lm_head)
        keep_head_float32(model)
    if cfg.gradient_checkpointing:
        # non-reentrant: works when the inputs need no grad (frozen embeddings under LoRA)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        model = _add_lora(model, cfg)
    model.train()
    return model, tokenizer


def _add_lora(model: PreTrainedModel, cfg: ModelConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as e:
        raise ValueError(
            f"config field `model.lora.target_modules` = {lora.target_modules!r} is invalid: {e}"
        ) from None


# --------------------------------------------------------------------------- reference


class AdapterDisabledReference:
    """The reference model of a LoRA policy: the policy itself with its adapters switched off.

    No second copy of the weights. Called like a model; runs under no_grad and in eval
    mode, restoring the policy's mode afterwards. Deliberately not an nn.Module, so that
    `.eval()`, `.to()` or `.parameters()` on the reference can never reach the policy.
    """

    def __init__(self, policy: nn.Module):
        self.policy = policy

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self._base():
            return self.policy(*args, **kwargs)

    @contextmanager
    def _base(self):
        was_training = self.policy.training
        self.policy.eval()
        try:
            with torch.no_grad(), self.policy.disable_adapter():
                yield
        finally:
            self.policy.train(was_training)

    def model_parts(self) -> ModelParts:
        """The policy's body/head split (grpo.compute.chunked_head), each part run with the adapters off."""
        policy = split_model(self.policy, self.policy.get_decoder(), self.policy.get_output_embeddings())
        me = weakref.ref(self)  # the parts are cached per reference object: they must not keep it alive

        def body(*args: Any, **kwargs: Any) -> Any:
            with me()._base():
                return policy.body(*args, **kwargs)

        def head(hidden: torch.Tensor) -> torch.Tensor:
            with me()._base():
                return policy.head(hidden)

        return dataclasses.replace(policy, body=body, head=head, head_params=())


def load_reference(cfg: ModelConfig, policy: nn.Module, dtype: torch.dtype | None = None) -> Any:
    """The frozen reference model for the KL term (call only when algorithm.beta > 0).

    LoRA policy: an AdapterDisabledReference over the policy (no extra memory). Otherwise a
    fresh load of cfg.path (not a copy of `policy`, which may already have been trained, e.g.
    after resuming) on the policy's device, in `dtype` (the compute dtype, grpo.compute.precision: a
    frozen model needs no float32 master copy; None = the policy's dtype), in eval mode with
    requires_grad False.
    Either way `reference(input_ids=..., attention_mask=...).logits` gives reference logits.
    """
    if hasattr(policy, "disable_adapter") and hasattr(policy, "peft_config"):
        return AdapterDisabledReference(policy)
    return load_frozen_beside(cfg, policy, dtype)


def load_frozen_beside(cfg: ModelConfig, policy: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """cfg.path frozen (load_frozen) on the policy's device, in `dtype` (None = the policy's), its LM head in
    float32 where the policy's is (model.lm_head_fp32): the reference, or a distillation teacher (cfg.path
    its directory), whose log-probs are compared with the policy's."""
    weight = next(policy.parameters())
    frozen = load_frozen(cfg, dtype or weight.dtype, weight.device)
    return keep_head_float32(frozen) if cfg.lm_head_fp32 else frozen  # log-probs as the policy's


def load_frozen(cfg: ModelConfig, dtype: torch.dtype | None = None, device: torch.device | None = None) -> nn.Module:
    """cfg.path for inference only (eval mode, requires_grad False), as the reference and
    `grpo serve-ref` use it; device and dtype default to cfg.device and cfg.dtype."""
    device = device if device is not None else resolve_device(cfg.device)
    dtype = dtype if dtype is not None else resolve_dtype(cfg.dtype, device)
    model = _model_from(resolve_model_dir(cfg.path), dtype, device)
    model.eval()
    model.requires_grad_(False)
    return model


def save_final(model: nn.Module, tokenizer: Any, out_dir: Path, state_dict: dict | None = None) -> Path:
    """The trained model as a plain HF directory that transformers loads without grpo.

    A LoRA policy is saved twice: its adapters (`out_dir/adapter`, for peft users) and the
    merged weights (`out_dir`). Written into a temp sibling and renamed, like checkpoints.
    `state_dict`: the gathered weights of a sharded (fsdp) model.
    """
    out_dir = Path(out_dir)

    def build(tmp: Path) -> None:
        plain = model
        if hasattr(model, "merge_and_unload"):  # peft
            model.save_pretrained(tmp / "adapter")
            plain = copy.deepcopy(model).merge_and_unload()
        plain.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    return cached_conversion(out_dir, build)
