"""Rules across fields, one named function each, run by Config.validate before any model loads.

What only the running process knows (how many processes torchrun started, which packages are
installed) comes in as `Facts`; `Facts.here()` reads the real ones with the standard library
(WORLD_SIZE, importlib.util.find_spec: nothing is imported), so a test states any machine.
Every rule raises a ValueError that names the field and what to change.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec

from grpo.config.generation import RolloutConfig
from grpo.config.objective import AlgorithmConfig
from grpo.config.sections import (
    EvalConfig,
    IterativeConfig,
    LogConfig,
    ModelConfig,
    ReferenceConfig,
    RewardSpec,
    TaskConfig,
    TrainConfig,
)
from grpo.config.values import ENGINE_NAMES, TRACKER_EXTRA, TRACKER_PACKAGES


def launched_world_size() -> int:
    """The number of processes torchrun started (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


@dataclass(frozen=True)
class Facts:
    world_size: int  # processes in the run (torchrun's WORLD_SIZE)
    installed: Callable[[str], bool]  # import name -> is the package there

    @classmethod
    def here(cls) -> Facts:
        return cls(launched_world_size(), lambda package: find_spec(package) is not None)


def _invalid(name: str, value: object, expected: str) -> ValueError:
    return ValueError(f"config field `{name}` = {value!r} is invalid: expected {expected}")


def micro_batches_divide_the_batch(train: TrainConfig, rollout: RolloutConfig) -> None:
    """Under a fixed G every step holds prompts_per_step * G rows; adaptive groups change that count
    each step, and the micro-batch cuts take any count (grpo.training.logprobs.length_sorted_rows)."""
    if rollout.group_policy.name != "fixed":
        return
    batch = train.prompts_per_step * rollout.group_size
    if batch % train.micro_batch_size:
        raise _invalid("train.micro_batch_size", train.micro_batch_size,
                       f"a divisor of prompts_per_step * group_size = {batch}")


def trackers_installed(log: LogConfig, installed: Callable[[str], bool]) -> None:
    """A tracker whose package is missing fails now, not after minutes of loading."""
    for name in log.report_to:
        packages, pip_names = TRACKER_PACKAGES[name]
        missing = [p for p in packages if not installed(p)]
        if missing:
            raise ValueError(
                f"config field `log.report_to` lists {name!r}, but {', '.join(missing)} is not installed: "
                f"`pip install -e '.[{TRACKER_EXTRA}]'` (or `pip install {pip_names}`), or remove {name!r} from "
                "log.report_to")


def tools_or_environment(rollout: RolloutConfig) -> None:
    if not set(rollout.tool_options) <= set(rollout.tools):
        raise _invalid("rollout.tool_options", rollout.tool_options, "options keyed by names listed in rollout.tools")
    if rollout.tools and rollout.environment:
        raise _invalid("rollout.environment", rollout.environment,
                       "null when rollout.tools is set (the tools are the built-in environment)")


def file_source_has_a_path(task: TaskConfig) -> None:
    if task.source == "file" and task.path is None:
        raise _invalid("task.path", task.path, "a data file path when task.source=file")


def held_out_for_evaluation(task: TaskConfig, eval_: EvalConfig) -> int:
    """The number of held-out examples the task takes: task.num_eval, or none where they would
    come out of the training data (source=file without task.eval_path; source=hub, whose cached
    dataset may have no test split) and no evaluation scores them (eval.num_examples = 0), so
    a run without evaluation loses no training row to it. Otherwise the split is the one it
    always was (a resumed run trains on the same rows). Procedural tasks and a held-out file
    keep task.num_eval: their held-out examples cost no training row. Config.validate stores
    the result in task.num_eval, so the run's config.yaml says what was held out."""
    if eval_.every and not eval_.num_examples:
        raise ValueError(f"config field `eval.every` = {eval_.every} evaluates with eval.num_examples = 0 "
                         "(no held-out examples): set eval.num_examples > 0, or eval.every to 0")
    if task.source == "reasoning_gym" or task.eval_path is not None:
        return task.num_eval
    return task.num_eval if eval_.num_examples else 0


def reference_sync_has_a_reference_to_change(ref: ReferenceConfig, algorithm: AlgorithmConfig,
                                             model: ModelConfig) -> None:
    if not ref.sync_every:
        return
    why = ("algorithm.beta = 0 loads no reference" if algorithm.beta == 0 else
           "reference.url serves a reference this run cannot change" if ref.url else
           "a LoRA policy's reference is its own base weights (adapters off)" if model.lora.enabled else None)
    if why:
        raise ValueError(f"config field `reference.sync_every` = {ref.sync_every} needs a reference "
                         f"model of its own in this process: {why}; set it to 0")


def kl_weighting_has_a_kl_term(algorithm: AlgorithmConfig) -> None:
    """kl_importance_weighted weighs the KL term; with beta = 0 there is none, so asking for it is a mistake."""
    if algorithm.kl_importance_weighted and algorithm.beta == 0:
        raise ValueError("config field `algorithm.kl_importance_weighted` = true needs algorithm.beta > 0 "
                         "(beta = 0 adds no KL term to weigh): set algorithm.beta > 0, or "
                         "kl_importance_weighted to false")


def aux_losses_fit(algorithm: AlgorithmConfig, train: TrainConfig, rollout: RolloutConfig) -> None:
    """A dpo pair trains in one micro-batch (its two rows' margin), min_reward filters sft's and self_distill's
    rows only, a distill term has one teacher (and only it has one), self_distill's worked example goes into
    a single-turn prompt and gold_sft's demonstrations are single-turn completions."""
    for i, spec in enumerate(algorithm.aux_losses):
        field = f"algorithm.aux_losses[{i}]"
        if spec.name == "dpo" and train.micro_batch_size < 2:
            raise ValueError(f"config field `train.micro_batch_size` = {train.micro_batch_size} is invalid with "
                             f"{field}.name = 'dpo': each pair's two completions share a "
                             "micro-batch; expected an integer >= 2")
        if spec.min_reward is not None and spec.name not in ("sft", "self_distill"):
            raise ValueError(f"config field `{field}.min_reward` = {spec.min_reward} applies to "
                             f"name = sft or self_distill only (it is {spec.name!r}); set it to null")
        teachers = [f"{field}.{k}" for k in ("teacher_path", "teacher_url") if getattr(spec, k) is not None]
        if spec.name == "distill" and len(teachers) != 1:
            raise ValueError(f"config field `{field}.teacher_path` = {spec.teacher_path!r} and `teacher_url` = "
                             f"{spec.teacher_url!r}: name = 'distill' needs exactly one of them (a model "
                             "directory, or a `grpo serve-ref` server's URL)")
        if spec.name != "distill" and teachers:
            raise ValueError(f"config field `{teachers[0]}` applies to name = distill only (it is "
                             f"{spec.name!r}); set it to null")
        if spec.name == "self_distill" and (rollout.tools or rollout.environment):
            raise ValueError(f"config field `{field}.name` = 'self_distill' needs single-turn rollouts (the "
                             "worked example goes into the prompt's messages): set rollout.tools to [] and "
                             "rollout.environment to null, or use another term")
        if spec.name == "gold_sft" and (rollout.tools or rollout.environment):
            raise ValueError(f"config field `{field}.name` = 'gold_sft' needs single-turn rollouts (a "
                             "demonstration is trained token by token, and an episode's tool or environment "
                             "replies are not the policy's to learn): set rollout.tools to [] and "
                             "rollout.environment to null, or use another term")


def iterative_rewards_are_listed(it: IterativeConfig, rewards: list[RewardSpec]) -> None:
    if not it.retrain_every:
        return
    names = [spec.name for spec in rewards]
    if not (it.reward in names and it.reward == "reward_model"):
        raise _invalid("iterative.reward", it.reward, "the name of a reward_model entry of `rewards`")
    if not (it.label in names and it.label != it.reward):
        raise _invalid("iterative.label", it.label,
                       f"another entry of `rewards` (one of {', '.join(n for n in names if n != it.reward)})")


def reset_reference_has_a_reference_to_reset(it: IterativeConfig, algorithm: AlgorithmConfig,
                                             ref: ReferenceConfig, model: ModelConfig) -> None:
    if it.retrain_every and it.reset_reference and algorithm.beta > 0 and (ref.url or model.lora.enabled):
        raise ValueError("config field `iterative.reset_reference` = true needs a reference model of its own "
                         "in this process (not reference.url, not a LoRA policy's base); set it to false")


def prompts_divide_among_processes(train: TrainConfig, world_size: int) -> None:
    if train.prompts_per_step % world_size:
        raise ValueError(
            f"config field `train.prompts_per_step` = {train.prompts_per_step} must be divisible by the "
            f"number of processes ({world_size}): each rank generates whole groups for its share of prompts")


def fsdp_without_lora(train: TrainConfig, model: ModelConfig) -> None:
    if train.parallel == "fsdp" and model.lora.enabled:
        raise ValueError("config field `train.parallel` = 'fsdp' does not support model.lora.enabled=true: "
                         "LoRA trains few weights, use train.parallel=ddp")


def engine_choice(engine: str, vllm_installed: Callable[[], bool]) -> str:
    """rollout.engine with `auto` resolved: vllm where it is installed (it generates faster than
    shared_prefix: bench/RESULTS.md, section "The vLLM engine"), else shared_prefix. Under
    torchrun too: each process then runs its own vLLM engine in the trainer's process group
    (grpo.rollout.vllm_engine). `vllm_installed` is asked only for auto."""
    if engine != "auto":
        return engine
    return "vllm" if vllm_installed() else "shared_prefix"


def check_engine(rollout: RolloutConfig, engine: str) -> None:
    """The rules of the engine `rollout.engine` resolved to (`engine`) that need no model."""
    if engine == "auto" or engine not in ENGINE_NAMES:
        raise ValueError(f"config field `rollout.engine` = {rollout.engine!r} is invalid; allowed: "
                         f"{', '.join(ENGINE_NAMES)}")
    if rollout.vllm and engine != "vllm":
        raise ValueError(f"config field `rollout.vllm` = {rollout.vllm!r} is set but rollout.engine = "
                         f"{rollout.engine!r}"
                         + (" (auto chose shared_prefix: vllm is not installed)" if rollout.engine == "auto" else ""))
    if (engine == "server") != (rollout.url is not None):
        raise ValueError(f"config field `rollout.url` = {rollout.url!r} is invalid: rollout.engine=server needs the "
                         "URL of a `grpo serve-rollout` server, and only that engine uses one")
    if rollout.vllm_lora_sync != "merged" and engine != "vllm":
        raise ValueError(f"config field `rollout.vllm_lora_sync` = {rollout.vllm_lora_sync!r} needs the vllm engine; "
                         f"rollout.engine = {rollout.engine!r} resolves to {engine!r}")


def check_staleness(rollout: RolloutConfig, algorithm: AlgorithmConfig, engine: str) -> None:
    """rollout.max_staleness > 0 (grpo.rollout.pipeline) with the engine `engine` it resolved to."""
    k = rollout.max_staleness
    if k == 0:
        return
    if engine != "server":
        raise ValueError(f"config field `rollout.max_staleness` = {k} needs rollout.engine=server "
                         f"(rollout.engine = {rollout.engine!r}): an in-process engine generates on the devices the "
                         "update runs on and reads the weights the update changes; set it to 0")
    if algorithm.sampler_correction == "none":
        raise ValueError("config field `algorithm.sampler_correction` = 'none' is invalid with rollout.max_staleness "
                         f"= {k}: samples of an older policy need the importance weight pi_old / q; "
                         "allowed: auto, truncate, mask")
    if algorithm.dynamic_sampling:
        raise ValueError(f"config field `algorithm.dynamic_sampling` = true is not supported with "
                         f"rollout.max_staleness = {k}: a step's number of prompts depends on the "
                         "rewards of its earlier rounds, unknown when they must be requested ahead")
    if k < algorithm.num_iterations:
        raise ValueError(f"config field `rollout.max_staleness` = {k} is less than "
                         f"algorithm.num_iterations = {algorithm.num_iterations}: a step makes that many updates, so "
                         "no rollout could be generated ahead; use a multiple of num_iterations")


def group_policy_fits(rollout: RolloutConfig, train: TrainConfig, task: TaskConfig, rewards: list[RewardSpec]) -> None:
    """adaptive splits a budget by pass-rate estimates (the success reward's), within its bounds; fixed
    reads none of its fields."""
    g = rollout.group_policy
    if g.name == "fixed":
        for name, value, default in (("budget", g.budget, None), ("max_group_size", g.max_group_size, None),
                                     ("min_group_size", g.min_group_size, 2), ("unit", g.unit, "completions")):
            if value != default:
                raise ValueError(f"config field `rollout.group_policy.{name}` = {value} applies to "
                                 f"rollout.group_policy.name=adaptive only (it is 'fixed'); set it to {default} "
                                 "or name adaptive")
        return
    names = [spec.name for spec in rewards]
    if task.difficulty.success_reward not in names:
        raise _invalid("task.difficulty.success_reward", task.difficulty.success_reward,
                       f"an entry of `rewards` (one of {', '.join(names)}) with rollout.group_policy.name=adaptive: "
                       "the split reads each prompt's estimated pass rate")
    budget, low, high = g.bounds(rollout.group_size, train.prompts_per_step)
    if high < low:
        raise _invalid("rollout.group_policy.max_group_size", high, f"an integer >= min_group_size = {low}")
    n = train.prompts_per_step
    if g.unit == "tokens":
        if g.budget is None or g.budget < n * low:
            raise _invalid("rollout.group_policy.budget", g.budget,
                           f"an integer >= prompts_per_step * min_group_size = {n * low} with unit tokens (the round's "
                           "generated tokens; its default counts completions)")
        return
    if not n * low <= budget <= n * high:
        raise _invalid("rollout.group_policy.budget", budget,
                       f"an integer from prompts_per_step * min_group_size = {n * low} to prompts_per_step * "
                       f"max_group_size = {n * high}")


def objective_options_fit(algorithm: AlgorithmConfig) -> None:
    """dual_clip belongs to the clip objective and must lie above its upper clip bound; SAPO gates
    token ratios (grpo.algorithm.POLICY_OBJECTIVES says which objectives take the sequence ratio)."""
    a = algorithm
    if a.dual_clip is not None:
        if a.policy_objective != "clip":
            raise ValueError(f"config field `algorithm.dual_clip` = {a.dual_clip} applies to "
                             f"algorithm.policy_objective=clip only (it is {a.policy_objective!r}); set it to null")
        sequence = a.importance_sampling_level == "sequence"
        name = "sequence_epsilon_high" if sequence else "epsilon_high"
        high = a.sequence_epsilon_high if sequence else (a.epsilon if a.epsilon_high is None else a.epsilon_high)
        if a.dual_clip <= 1 + high:
            raise _invalid("algorithm.dual_clip", a.dual_clip,
                           f"null or a number > 1 + algorithm.{name} = {1 + high} (the ratio's upper clip bound)")
    if a.policy_objective == "sapo" and a.importance_sampling_level != "token":
        raise ValueError("config field `algorithm.policy_objective` = 'sapo' needs algorithm.importance_sampling_level "
                         f"= token (it is {a.importance_sampling_level!r}): SAPO's gate damps the few off-policy "
                         "tokens of a completion and keeps the rest, which one ratio per completion cannot; "
                         "use policy_objective clip or cispo with sequence")


def prompt_sampler_fits(task: TaskConfig, rewards: list[RewardSpec], rollout: RolloutConfig) -> None:
    """difficulty_pool and curriculum read the success reward's scores, draw from estimates that the
    trained steps updated (nothing generated ahead: rollout.max_staleness 0), and curriculum
    regenerates a reasoning-gym task."""
    d = task.difficulty
    if d.hard_below > d.easy_above:
        raise _invalid("task.difficulty.easy_above", d.easy_above,
                       f"a number >= task.difficulty.hard_below = {d.hard_below}")
    if task.sampler == "uniform":
        return
    names = [spec.name for spec in rewards]
    if d.success_reward not in names:
        raise _invalid("task.difficulty.success_reward", d.success_reward,
                       f"an entry of `rewards` (one of {', '.join(names)}) with task.sampler={task.sampler}")
    if rollout.max_staleness:
        raise ValueError(f"config field `task.sampler` = {task.sampler!r} needs rollout.max_staleness = 0 (it is "
                         f"{rollout.max_staleness}): prompts requested ahead would be drawn from estimates the steps "
                         "in between have not updated; use task.sampler=uniform")
    if task.sampler == "curriculum" and task.source != "reasoning_gym":
        raise ValueError(f"config field `task.sampler` = 'curriculum' needs task.source=reasoning_gym (it is "
                         f"{task.source!r}): the levels are a reasoning-gym curriculum's; allowed for other sources: "
                         "uniform, difficulty_pool")
    if task.sampler == "difficulty_pool" and not (d.easy_weight or d.learnable_weight or d.hard_weight):
        raise _invalid("task.difficulty.learnable_weight", d.learnable_weight,
                       "a number > 0 where easy_weight and hard_weight are 0 (some pool must be drawn from)")
