"""One config tree for a run: the sections (grpo.config.sections, .generation) under one root, `Config`.

    cfg = load_config("configs/demo.yaml", ["algorithm.beta=0.04", "train.num_steps=20"])

Values are checked against their annotation when the tree is built (grpo.config.io);
`Config.validate` then runs every field's check (beside the field) and the rules across
fields (grpo.config.rules) before any model is loaded, so a mistake costs a second, not a
model load. Errors are `ValueError`s that name the dotted field and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass

from grpo.config import objective, rules, sections
from grpo.config.checks import SECONDS, above, check_fields, doc, expect
from grpo.config.generation import RolloutConfig
from grpo.config.rules import Facts


@dataclass
class Config:
    output_dir: str = doc("runs/demo", "Run directory: config, metrics, checkpoints, final model.")
    resume: bool = doc(False, "Continue from the newest checkpoint in output_dir.")
    seed: int = doc(0, "Seed for sampling, shuffling and initialization.")
    model: sections.ModelConfig = doc(sections.ModelConfig(), "Policy model.")
    task: sections.TaskConfig = doc(sections.TaskConfig(), "Prompts and answers.")
    rewards: list[sections.RewardSpec] = doc(
        [sections.RewardSpec("format", 1.0), sections.RewardSpec("accuracy", 1.0)], "Reward functions, summed by weight.",
        check=expect(lambda v: len(v) >= 1, "a non-empty list of {name, weight, options}"),
    )
    reward_timeout: float = doc(
        10.0, "Seconds one call of a user reward function (module:fn, file.py:fn) or a rule-based "
        "built-in may take before it is counted as failed (and its thread abandoned). Model rewards "
        "(judge, reward_model) are not limited by it: a forward pass cannot hang, and on a CPU it can "
        "take longer; their option `timeout` (default null: none) sets one per batch.",
        check=above(0, SECONDS),
    )
    rollout: RolloutConfig = doc(RolloutConfig(), "Sampling.")
    algorithm: objective.AlgorithmConfig = doc(objective.AlgorithmConfig(), "GRPO loss.")
    reference: sections.ReferenceConfig = doc(sections.ReferenceConfig(), "Where reference log-probs come from (beta > 0).")
    iterative: sections.IterativeConfig = doc(sections.IterativeConfig(), "Iterative RL: the reward model keeps learning.")
    train: sections.TrainConfig = doc(sections.TrainConfig(), "Optimization.")
    eval: sections.EvalConfig = doc(sections.EvalConfig(), "Held-out evaluation.")
    checkpoint: sections.CheckpointConfig = doc(sections.CheckpointConfig(), "Checkpointing.")
    log: sections.LogConfig = doc(sections.LogConfig(), "Logging.")

    def validate(self, facts: Facts | None = None) -> Config:
        """Every field's check, then the rules across fields; raises ValueError naming the field.
        A data task without evaluation holds out nothing: task.num_eval 0 (rules.held_out_for_evaluation).
        `facts`: what the running process knows (world size, installed packages); None = this one's."""
        facts = facts or Facts.here()
        check_fields(self)
        r, a, t, ref, it = self.rollout, self.algorithm, self.train, self.reference, self.iterative
        rules.micro_batches_divide_the_batch(t, r)
        rules.trackers_installed(self.log, facts.installed)
        rules.tools_or_environment(r)
        rules.file_source_has_a_path(self.task)
        rules.prompt_sampler_fits(self.task, self.rewards, r)
        self.task.num_eval = rules.held_out_for_evaluation(self.task, self.eval)  # none without evaluation
        rules.reference_sync_has_a_reference_to_change(ref, a, self.model)
        rules.kl_weighting_has_a_kl_term(a)
        rules.aux_losses_fit(a, t, r)
        rules.iterative_rewards_are_listed(it, self.rewards)
        rules.reset_reference_has_a_reference_to_reset(it, a, ref, self.model)
        rules.prompts_divide_among_processes(t, facts.world_size)
        rules.fsdp_without_lora(t, self.model)
        rules.objective_options_fit(a)
        engine = rules.engine_choice(r.engine, lambda: facts.installed("vllm"))
        rules.check_engine(r, engine)
        rules.check_staleness(r, a, engine)
        rules.group_policy_fits(r, t, self.task, self.rewards)
        return self
