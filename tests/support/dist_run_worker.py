"""A whole `grpo train` run in as many processes as torchrun starts, recording what every rank
holds (tests/compute/test_distributed.py, tests/serve/test_rollout_server_torchrun.py).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/support/dist_run_worker.py OUT override...

Each rank writes OUT/rank<r>.pt: a digest of its weights just before `World.prepare` (after the
bf16 master-weight dither: the shards fsdp keeps come from each rank's own copy, so the dither
must be the same everywhere) and its whole weights after the run (fsdp: gathered). The test
compares the ranks bit for bit.
"""

import hashlib
import sys
from pathlib import Path

import torch

from grpo.compute.distributed import World
from grpo.config import load_config
from grpo.training.trainer import Trainer


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def main(out: str, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    before: list[str] = []
    prepare = World.prepare

    def recording_prepare(self, model):
        before.append(digest(model))
        return prepare(self, model)

    World.prepare = recording_prepare
    trainer = Trainer.build(load_config(None, overrides))
    try:
        trainer.run()
        with trainer.world.full_weights(trainer.model):
            after = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        torch.save({"before": before, "after": after, "version": trainer.state.num_updates},
                   Path(out) / f"rank{trainer.world.rank}.pt")
    finally:
        trainer.collector.close()
        trainer.world.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
