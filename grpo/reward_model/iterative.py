"""Iterative RL (DeepSeekMath section 4.1.4): the reward model keeps learning from the policy.

Every `iterative.retrain_every` steps:
  1. the samples of those steps, labelled by a rule-based reward (`iterative.label`, e.g.
     accuracy), are split: `held_out` of them measure the reward model before and after;
  2. the reward model (the `reward_model` entry of `rewards`, trained in place) is trained
     on the rest plus replayed older samples, `replay` of the mix (the paper's 10%), with
     transformers' Trainer (grpo.reward_model.training.fit, which leaves the global RNG as it was);
  3. the reference is reset to the current policy (iterative.reset_reference, beta > 0);
and the run continues, scoring with the new reward model. Every rank gathers every rank's
samples and trains the same model on them in the same order.

Checkpoints hold the reward model's weights (reward_model.safetensors) and the samples
(iterative.json: the replay buffer and the samples since the last retraining, plain JSON),
so a killed run resumes exactly, in the middle of a retraining interval too.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from grpo.reward_model.training import LabelledSample, RewardModelTraining, accuracy_of, fit
from grpo.training.checkpoint import load_weights, parameter_state

RM_FILE, SAMPLES_FILE = "reward_model.safetensors", "iterative.json"


class IterativeRL:
    """The samples, the replay buffer, and the retraining of one run's reward model."""

    def __init__(self, cfg: Any, reward_fn: Any, seed: int):
        self.cfg, self.seed = cfg, seed  # cfg: IterativeConfig
        self.held = reward_fn.held  # grpo.rewards.model_rewards._Lazy: (tokenizer, model, label index)
        self.fresh: list[LabelledSample] = []  # since the last retraining
        self.buffer: list[LabelledSample] = []  # older ones, for replay

    @classmethod
    def from_config(cls, cfg: Any, reward_fns: list) -> IterativeRL | None:
        it = cfg.iterative
        if not it.retrain_every:
            return None
        fn = next(r.fn for r in reward_fns if r.name == it.reward)
        return cls(it, fn, cfg.seed)

    def observe(self, examples: list, completions: list[str], labels: torch.Tensor, world: Any) -> None:
        """This step's samples (examples[i] answered by completions[i], labels [N] with NaN where
        the label reward failed), gathered from every rank in rank order."""
        mine = [asdict(LabelledSample(ex.prompt, c, float(v >= 0.5)))
                for ex, c, v in zip(examples, completions, labels.tolist(), strict=True) if not math.isnan(v)]
        for part in world.gather_objects(mine):
            self.fresh += [LabelledSample(**x) for x in part]

    def due(self, step: int) -> bool:
        return step % self.cfg.retrain_every == 0

    def retrain(self, step: int) -> dict[str, float]:
        """Steps 1-2 above; the metrics. The caller resets the reference (step 3)."""
        it = self.cfg
        rng = random.Random(self.seed * 1_000_003 + step)  # its own stream: the policy's is untouched
        order = list(range(len(self.fresh)))
        rng.shuffle(order)
        cut = int(round(len(order) * it.held_out))
        test = [self.fresh[i] for i in order[:cut]]
        train = [self.fresh[i] for i in order[cut:]]
        wanted = int(round(len(train) * it.replay / (1 - it.replay)))  # replay: that share of the mix
        replayed = rng.sample(self.buffer, min(wanted, len(self.buffer)))
        settings = RewardModelTraining(it.epochs, it.learning_rate, it.batch_size, seed=self.seed + step)
        with self.held.lock:
            tokenizer, model, _ = self.held.get()
            before = accuracy_of(model, tokenizer, test, settings)
            if train:
                fit(model, tokenizer, train + replayed, settings)
            after = accuracy_of(model, tokenizer, test, settings)
        self.buffer = (self.buffer + self.fresh)[-it.buffer_size:] if it.buffer_size else []
        self.fresh = []
        return {"iterative/rm_accuracy_before": before, "iterative/rm_accuracy_after": after,
                "iterative/rm_samples": len(train), "iterative/replayed": len(replayed),
                "iterative/held_out": len(test)}

    # ------------------------------------------------------------------ checkpoints

    def save(self, directory: Path) -> None:
        with self.held.lock:
            _, model, _ = self.held.get()
            save_file(parameter_state(model), directory / RM_FILE)
        (directory / SAMPLES_FILE).write_text(json.dumps(
            {"fresh": [asdict(x) for x in self.fresh], "buffer": [asdict(x) for x in self.buffer]}))

    def load(self, directory: Path) -> None:
        """Restore what `save` wrote (a checkpoint from before iterative RL was on: nothing to restore)."""
        if not (directory / RM_FILE).is_file():
            return
        try:
            saved = json.loads((directory / SAMPLES_FILE).read_text())
            self.fresh = [LabelledSample(**x) for x in saved["fresh"]]
            self.buffer = [LabelledSample(**x) for x in saved["buffer"]]
        except Exception as e:  # noqa: BLE001 - any unreadable file means the same to the user
            raise ValueError(f"checkpoint {str(directory)!r}: its iterative-RL samples cannot be read "
                             f"({type(e).__name__}: {e}); resume from an earlier checkpoint") from None
        with self.held.lock:
            _, model, _ = self.held.get()
            load_weights(directory, model, RM_FILE, every_parameter=True)
