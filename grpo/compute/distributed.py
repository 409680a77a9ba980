"""Many processes, one run: the few collectives the training loop needs (torch.distributed).

    torchrun --nproc-per-node 2 -m grpo train configs/demo.yaml train.parallel=ddp

torchrun starts the processes (ranks) and sets RANK / WORLD_SIZE / LOCAL_RANK; `World.init`
joins them with gloo on CPU and NCCL on CUDA (one GPU per rank, cuda:LOCAL_RANK). Then:

- Data: every rank reads the same seeded prompt stream and keeps its contiguous share of
  each step's prompts (`shard`), so all G completions of a prompt are generated and scored
  on one rank and group statistics are exact. The stream position is global, so a run
  resumes with any world size that divides train.prompts_per_step.
- Loss: the trainer's normalizers (sequences, or tokens for bnpo/dapo) are global counts
  (`sum`), so the gradients of all ranks *add up* to the single-process gradient of the
  whole batch. That is the reduction used here: a sum, not a mean.
- `parallel=ddp`: every rank holds the full model and optimizer. Gradients are summed with
  one all-reduce per bucket after the last backward of an update (DDP's own collective).
  Not the DistributedDataParallel wrapper: its reducer assumes one backward per forward,
  while the update's two-stage backward (grpo.training.logprobs.PromptCache: micro-batches first,
  then the shared prompt forward) runs several forwards and then a final backward.
- `parallel=fsdp`: FSDP2 (`fully_shard`) on every decoder layer and on the root: parameters,
  gradients and optimizer state are sharded. Weights are gathered once for the whole
  rollout/log-prob/update phase (`gather_weights`), so ranks may run different numbers of
  forwards (their completions end at different lengths) without a collective in each;
  gradients are reduce-scattered in the final backward (`gradient_sync`), and
  `release_weights` reshards before the optimizer steps on the shards.
- Only rank 0 writes logs, samples, checkpoints and the final model; every rank takes part
  in gathering what they hold. A stop signal on any rank stops all ranks after the step.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from grpo.config.rules import launched_world_size

BUCKET_NUMEL = 2**24  # gradient elements per all-reduce (64 MiB of fp32)
PARALLEL_MODES = ("ddp", "fsdp")  # train.parallel: World.prepare broadcasts (ddp) or shards (fsdp)


@dataclass
class World:
    """This process's place in the run; a one-process World makes every method a no-op."""

    rank: int = 0
    size: int = 1
    parallel: str = "ddp"  # "ddp" | "fsdp" (train.parallel)

    @classmethod
    def init(cls, parallel: str, device_name: str) -> World:
        """Join the processes torchrun started (Config.validate checked that the world size
        divides train.prompts_per_step)."""
        size = launched_world_size()
        if size == 1:
            return cls()
        cuda = torch.cuda.is_available() and device_name != "cpu"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), parallel)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def seed_sampling(self, base: int) -> None:
        """Ranks > 0 draw their own sampling randomness (rank 0 keeps the stream it has)."""
        if self.rank > 0:
            torch.manual_seed(1_000_003 * self.rank + base)

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            if dist.get_backend() == "gloo":
                # every rank reaches the end before any tears its pairs down: a rank destroying the
                # group while its peer still sends aborted the peer ("terminate called without an
                # active exception"); monitored, so a rank that died does not hang the others here
                try:
                    dist.monitored_barrier(timeout=timedelta(seconds=60))
                except RuntimeError:
                    pass
            dist.destroy_process_group()

    # ------------------------------------------------------------- data and numbers

    def shard(self, items: list) -> list:
        """This rank's contiguous share of a list whose length the world size divides."""
        n = len(items) // self.size
        return items[self.rank * n : (self.rank + 1) * n]

    def sum(self, value: float) -> float:
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return float(t.item())

    def any(self, flag: bool) -> bool:
        return self.sum(float(bool(flag))) > 0

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor` concatenated along dim 0, in rank order (the other dims equal on
        every rank; dim 0 may differ, as it does when dynamic sampling keeps different counts)."""
        if self.size == 1:
            return tensor
        local = tensor.to(self._device())
        sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(self.size)]
        dist.all_gather(sizes, torch.tensor([local.shape[0]], device=local.device))
        longest = int(max(sizes).item())
        padded = torch.cat([local, local.new_zeros(longest - local.shape[0], *local.shape[1:])])
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[: int(n.item())] for part, n in zip(parts, sizes, strict=True)]).to(tensor.device)

    def gather_objects(self, obj: Any) -> list[Any]:
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

    # ------------------------------------------------------------- the model

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """ddp: rank 0's weights everywhere; fsdp: shard decoder layers and the root. In place."""
        if self.size == 1:
            return model
        if self.parallel == "fsdp":
            assert not hasattr(model, "peft_config"), "Config.validate refuses fsdp with LoRA"
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            device = next(model.parameters()).device
            mesh = init_device_mesh(device.type, (self.size,))
            for module in _decoder_layers(model):
                fully_shard(module, mesh=mesh)
            fully_shard(model, mesh=mesh)
            for module in self._fsdp_modules(model):
                module.set_gradient_divide_factor(1.0)  # a sum: see the module docstring
                module.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
        else:
            with torch.no_grad():
                for p in model.parameters():
                    dist.broadcast(p.data, src=0)
        return model

    def _fsdp_modules(self, model: torch.nn.Module) -> list:
        from torch.distributed.fsdp import FSDPModule

        return [m for m in model.modules() if isinstance(m, FSDPModule)] if self.parallel == "fsdp" else []

    def gather_weights(self, model: torch.nn.Module) -> None:
        """fsdp: all-gather every layer's weights and keep them until `release_weights`."""
        for module in self._fsdp_modules(model):
            module.set_reshard_after_forward(False)
            module.set_reshard_after_backward(False)
            module.unshard()

    def release_weights(self, model: torch.nn.Module) -> None:
        """fsdp: back to shards (before an optimizer step, which updates the shards)."""
        for module in self._fsdp_modules(model):
            module.reshard()

    @contextmanager
    def full_weights(self, model: torch.nn.Module):
        """The whole model on every rank for a while (evaluation, saving the final model)."""
        self.gather_weights(model)
        try:
            yield
        finally:
            self.release_weights(model)

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """fsdp: the whole model's weights on rank 0's CPU (every rank calls); otherwise None."""
        if not self._fsdp_modules(model):
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def gradient_sync(self, model: torch.nn.Module, enabled: bool) -> None:
        """fsdp: reduce-scatter gradients in the next backward only when `enabled` (the last one)."""
        for module in self._fsdp_modules(model):
            module.set_requires_gradient_sync(enabled, recurse=False)

    def reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """ddp: sum every rank's gradients (fsdp did it in the last backward)."""
        if self.size == 1 or self.parallel == "fsdp":
            return
        for p in params:  # every rank must reduce the same list, even where one had no gradient
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        bucket: list[torch.Tensor] = []
        for i, g in enumerate(grads):
            bucket.append(g)
            if sum(t.numel() for t in bucket) >= BUCKET_NUMEL or i == len(grads) - 1:
                flat = torch.cat([t.reshape(-1) for t in bucket])
                dist.all_reduce(flat)
                for t, part in zip(bucket, flat.split([t.numel() for t in bucket]), strict=True):
                    t.copy_(part.view_as(t))
                bucket = []


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks to shard one by one: the classes transformers lists as unsplittable."""
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"train.parallel=fsdp: found no decoder layers to shard in {type(model).__name__} "
                         "(its class lists no _no_split_modules); use train.parallel=ddp")
    return layers
