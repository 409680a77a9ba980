"""One update on a fixed batch, in as many processes as torchrun starts (tests/compute/test_distributed.py).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/support/dist_worker.py OUT.pt override...

Every rank builds the same trainer (tiny model, same seed), generates the *whole* batch with
one fixed sampling seed (so all world sizes see identical completions), scores it, and then
updates on its own share of the rows, exactly as `Trainer.train_step` splits a step. Rank 0
saves the parameters after the update, the gradient norm and the loss to OUT.pt; the test
compares them across world sizes and parallel modes.
"""

import sys

import torch

from grpo import algorithm, rewards
from grpo.config import load_config
from grpo.rollout.base import SamplingParams
from grpo.training.trainer import Trainer


def record_gradients(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Fills with every parameter's whole gradient as the optimizer step sees it (clipped)."""
    names = {id(p): n for n, p in trainer.model.named_parameters()}  # the shards, under fsdp
    grads: dict[str, torch.Tensor] = {}
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        for group in trainer.optimizer.param_groups:
            for p in group["params"]:
                g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                grads[names[id(p)]] = g.detach().clone()
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    return grads


def main(out: str, overrides: list[str]) -> None:
    cfg = load_config(None, ["model.precision=float32", *overrides])  # as the in-process runs (tests/conftest.py)
    trainer = Trainer.build(cfg)
    world, G = trainer.world, cfg.rollout.group_size
    grads = record_gradients(trainer)
    examples = trainer.data.take(cfg.train.prompts_per_step)  # the whole step, on every rank
    params = SamplingParams.from_config(cfg.rollout, seed=1234)
    world.gather_weights(trainer.model)
    batch = trainer.sampler.sample(examples, params)
    grouped = [ex for ex in examples for _ in range(G)]
    scores = rewards.score(trainer.reward_fns, batch.completions, grouped, cfg.reward_timeout)
    a = cfg.algorithm
    advantages = algorithm.group_advantages(scores.total, G, a.scale_rewards, a.advantage_eps)
    share = len(examples) // world.size * G  # this rank's rows: whole groups
    mine = slice(world.rank * share, (world.rank + 1) * share)
    metrics = trainer.update(batch.select(mine), advantages[mine], None, None)
    with world.full_weights(trainer.model):
        state = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    if world.is_main:
        torch.save({"params": state, "grads": grads, "grad_norm": metrics["grad_norm"], "loss": metrics["loss"],
                    "completions": [str(c) for c in batch.completions]}, out)
    world.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
