"""Warnings about a run that goes on but learns nothing: read from each step's metrics.

    watch = StepWatch(cfg)
    for message in watch.observe(step, metrics):
        log.print(message)

Each condition is reported once per run (the metrics carry the per-step numbers; the
message is there to explain them, not to repeat them):
  - every group had identical rewards (frac_reward_zero_std == 1): all advantages are 0,
    the policy-gradient term is 0, and the step teaches nothing;
  - an update was skipped because the loss or the gradient was not finite (counted in
    `skipped_updates`; train.max_bad_steps in a row stop the run with a checkpoint);
  - a reward function failed (counted in `reward/<name>/errors`; the harness warns per
    example, this says once which metric to watch).
"""

from __future__ import annotations

from typing import Any

from grpo.config import Config


class StepWatch:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.reported: set[str] = set()
        self.skipped = 0

    def observe(self, step: int, metrics: dict[str, Any]) -> list[str]:
        out: list[str] = []
        G = self.cfg.rollout.group_size
        if metrics.get("frac_reward_zero_std") == 1 and self._first("zero_std"):
            out.append(
                f"warning: step {step}: in every group all {G} completions got the same total reward "
                f"(frac_reward_zero_std = 1), so every advantage is 0 and this step gives no learning "
                f"signal (the update only moves the KL term, if algorithm.beta > 0). Usual causes: the "
                f"task is too hard (every answer wrong) or too easy (every answer right) for the model, "
                f"or the rewards cannot tell completions apart; try an easier or harder task, a larger "
                f"rollout.group_size, a higher rollout.temperature, or a partial-credit reward such as "
                f"format. Reported once per run; watch frac_reward_zero_std in the metrics."
            )
        skipped = int(metrics.get("skipped_updates", 0) or 0)
        if skipped > self.skipped:
            self.skipped = skipped
            if self._first("skipped"):
                out.append(
                    f"warning: step {step}: the loss or gradient was not finite, so the update was "
                    f"skipped and the weights left unchanged (counted in skipped_updates; "
                    f"train.max_bad_steps = {self.cfg.train.max_bad_steps} in a row stop the run "
                    f"with a checkpoint). Reported once per run."
                )
        for key, value in metrics.items():
            if key.startswith("reward/") and key.endswith("/errors") and value and self._first(key):
                name = key[len("reward/"):-len("/errors")]
                out.append(
                    f"warning: step {step}: reward `{name}` failed on {value} completion(s) (raised, "
                    f"timed out after reward_timeout = {self.cfg.reward_timeout:g} s, or returned a "
                    f"non-number); they score 0 for it. Counted per step in {key}. Reported once per run."
                )
        return out

    def _first(self, key: str) -> bool:
        if key in self.reported:
            return False
        self.reported.add(key)
        return True
