"""A few vLLM training steps in as many processes as torchrun starts (tests/compute/test_distributed.py).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/support/vllm_dist_worker.py OUT_DIR override...

Every rank builds the trainer (its own vLLM engine, in the trainer's process group), takes
the configured number of steps (each ends with the weights pushed into every rank's engine),
then samples fixed prompts greedily from its engine. Rank 0 writes OUT_DIR/result.pt (each
rank's greedy completion ids, the sampler-correction metrics of each step on each rank) and
the trained weights to OUT_DIR/final, so the test can build a one-process engine on them.
"""

import sys
from pathlib import Path

import torch

from grpo.compute import models
from grpo.config import load_config
from grpo.rollout.base import SamplingParams
from grpo.training.trainer import Trainer

QUESTIONS = ["What is 3 + 4?", "What is 12 + 30 + 7? Think step by step.", "1 + 1", "What is 5 + 5?"]
GREEDY = SamplingParams(1, 0.0, 1.0, 0, 16)


def render(tokenizer) -> list[str]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in QUESTIONS]


def main(out: Path, overrides: list[str]) -> None:
    cfg = load_config(None, ["model.precision=float32", *overrides])  # as the in-process runs (tests/conftest.py)
    trainer = Trainer.build(cfg)
    world = trainer.world
    steps = []
    for _ in range(cfg.train.num_steps):
        metrics, _ = trainer.train_step()
        steps.append({k: v for k, v in metrics.items() if k.startswith(("is_weight", "sampler_kl"))})
    greedy = trainer.engine.generate(render(trainer.tokenizer), GREEDY)
    ranks = world.gather_objects({"greedy": greedy.completion_ids.tolist(), "steps": steps,
                                  "version": greedy.policy_version.tolist(),
                                  "backend": trainer.engine.llm.llm_engine.vllm_config.parallel_config
                                  .distributed_executor_backend})
    weights = world.full_state_dict(trainer.model)  # fsdp: gathered onto rank 0; otherwise None
    if world.is_main:
        models.save_final(trainer.model, trainer.tokenizer, out / "final", weights)
        torch.save(ranks, out / "result.pt")
    trainer.engine.close()  # after the last collective: it ends the process group too
    world.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
