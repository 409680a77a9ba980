"""A whole `grpo train` run under torchrun that writes what each rank's prompt sampler holds at the end
(tests/tasks/test_sampling_torchrun.py).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/support/dist_sampling_worker.py OUT override...

Each rank writes OUT/rank<r>.json: its sampler's state (estimates, curriculum) and the ids it drew
each time (every rank draws the whole step's prompts, then keeps its share).
"""

import json
import sys
from pathlib import Path

import torch

from grpo.config import load_config
from grpo.training.trainer import Trainer


def main(out: str, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    trainer = Trainer.build(load_config(None, overrides))
    drawn: list[list[str]] = []
    take = trainer.data.take

    def recording_take(n):
        examples = take(n)
        drawn.append([ex.id for ex in examples])
        return examples

    trainer.data.take = recording_take
    try:
        trainer.run()
        record = {"state": trainer.data.state(), "drawn": drawn}
        (Path(out) / f"rank{trainer.world.rank}.json").write_text(json.dumps(record))
    finally:
        trainer.collector.close()
        trainer.world.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
