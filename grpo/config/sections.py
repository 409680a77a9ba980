"""The sections of the config tree: one dataclass per section, every field documented.

Each field carries its help (unit and meaning, `grpo train --help-config` and
docs/configuration.md print it) and, where a value can be out of range, its check beside it
(grpo.config.checks). A Literal field lists its allowed values (grpo.config.values); io.py
checks names and types when the tree is built, schema.Config.validate the checks and the
cross-field rules before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from grpo.config.checks import (
    ENV_NAME,
    HTTP_URL,
    NUMBER,
    SECONDS,
    STEP_SPLIT,
    TEMPLATE,
    above,
    at_least,
    doc,
    expect,
    within,
)
from grpo.config.values import (
    DTYPE_NAMES,
    LR_SCHEDULES,
    PARALLEL_MODES,
    PRECISION_NAMES,
    PROMPT_SAMPLER_NAMES,
    TASK_SOURCES,
    TRACKER_NAMES,
)


@dataclass
class LoraConfig:
    enabled: bool = doc(False, "Train LoRA adapters instead of all weights.")
    r: int = doc(16, "LoRA rank.", check=at_least(1))
    alpha: int = doc(32, "LoRA scaling numerator (scale = alpha / r).")
    dropout: float = doc(0.0, "Dropout on the LoRA input, probability in [0, 1).", check=within("[0, 1)"))
    target_modules: list[str] = doc(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "Module names that get adapters.",
    )


@dataclass
class ModelConfig:
    path: str | None = doc(
        None,
        "Local Hugging Face model directory or .gguf file; null = the bundled "
        "SmolLM2-135M-Instruct (converted once into the cache).",
    )
    dtype: Literal[DTYPE_NAMES] = doc(
        "auto", "Dtype of the trained weights and optimizer state (the master weights); auto = float32. "
        "bfloat16 / float16 also compute in that dtype (model.precision is then ignored).",
    )
    precision: Literal[PRECISION_NAMES] = doc(
        "auto", "Dtype the policy's forwards and backward and the reference's forward compute in (torch.autocast; "
        "log-probs and the loss stay float32). auto: on CPU one matrix product is timed in float32 and "
        "bfloat16 at start and bfloat16 is used where it is clearly faster on this machine (whether it pays "
        "depends on the host: bench/RESULTS.md, section \"Precision chosen by the machine\"), else float32; on "
        "CUDA bfloat16 where supported (grpo.compute.precision; the choice is written to <run>/precision.json "
        "and kept on resume).",
    )
    lm_head_fp32: bool = doc(
        True, "Compute the LM head (the hidden-to-vocabulary product) in float32 outside autocast while the body "
        "runs in a lower model.precision, in the update, the old/reference passes and rollouts that decode with "
        "the policy itself: bf16 logits are a large, cheaply removed part of the sampler/trainer log-prob mismatch "
        "(MiniMax-M1; ScaleRL; TRL's cast_lm_head_to_fp32). Works with tied embeddings and LoRA; in float32 "
        "runs it changes nothing (grpo.compute.lm_head). Its cost: the logits are float32, twice the memory of bf16 "
        "logits; false for the lower-precision head.",
    )
    device: str = doc("auto", "torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    gradient_checkpointing: bool = doc(False, "Recompute activations in backward to save memory.")
    lora: LoraConfig = doc(LoraConfig(), "LoRA / PEFT settings.")


@dataclass
class DifficultyConfig:
    success_reward: str = doc(
        "accuracy", "The entry of `rewards` whose score says a completion solved its prompt (>= success_threshold; a "
        "failed call is a failure). A prompt's estimated pass rate counts those successes (grpo.tasks.difficulty). "
        "task.sampler difficulty_pool and curriculum need it among `rewards`; under uniform, a run without it "
        "keeps no estimates.")
    success_threshold: float = doc(
        0.5, "The success_reward score at or above which a completion counts as solved (0.5: a 0/1 accuracy "
        "reward's right answers; the same cut iterative.label uses).")
    prior: list[float] = doc(
        [1.0, 1.0], "Beta(a, b) prior over a prompt's pass rate: an unseen prompt's estimate is a / (a + b) (1, 1: "
        "0.5, learnable, so every prompt is tried before it is judged), and one group of G moves it most of the way "
        "(G = 4, all solved: 5/6).",
        check=expect(lambda v: len(v) == 2 and all(x > 0 for x in v), "two numbers > 0"))
    decay: float = doc(
        0.5, "At each new visit a prompt's earlier success and completion counts are multiplied by this before the new "
        "ones are added: the policy changed since, so old groups say less (0: only the last visit, as prime-rl's "
        "difficulty pool; 1: every visit alike).", check=within("[0, 1]"))
    hard_below: float = doc(
        0.2, "difficulty_pool: a prompt whose estimated pass rate is below this is hard (prime-rl's hard_border).",
        check=within("[0, 1]"))
    easy_above: float = doc(
        0.8, "difficulty_pool: a prompt whose estimated pass rate is above this is easy (prime-rl's easy_border); "
        "the rest is learnable. At least hard_below.", check=within("[0, 1]"))
    easy_weight: float = doc(
        0.1, "difficulty_pool: the share of each step's prompts drawn from the easy pool (prime-rl's easy_fraction); "
        "the three weights are normalized over the pools that hold prompts.", check=at_least(0, NUMBER))
    learnable_weight: float = doc(
        0.8, "difficulty_pool: the share drawn from the learnable pool, whose groups have reward variance (GRPO's "
        "signal) most often.", check=at_least(0, NUMBER))
    hard_weight: float = doc(
        0.1, "difficulty_pool: the share drawn from the hard pool (prime-rl's hard_fraction): kept above 0 so a "
        "prompt the policy learns to solve can leave it.", check=at_least(0, NUMBER))
    curriculum_threshold: float = doc(
        0.7, "curriculum: move to the next level of the reasoning-gym curriculum once the last curriculum_window "
        "steps solved at least this fraction of their completions (a level mostly solved gives GRPO few groups "
        "with signal).", check=within("(0, 1]"))
    curriculum_window: int = doc(
        4, "curriculum: steps at the current level whose pass rate decides a level change (fewer would move on "
        "one lucky step).", check=at_least(1))


@dataclass
class TaskConfig:
    source: Literal[TASK_SOURCES] = doc(
        "reasoning_gym", "Where examples come from: a procedural reasoning-gym task, local files, or a dataset "
        "by name in the local Hugging Face cache (hub: offline, never a download; grpo.tasks.hub)."
    )
    name: str = doc(
        "chain_sum", "reasoning-gym dataset name (source=reasoning_gym), or a Hugging Face dataset name such as "
        "openai/gsm8k (source=hub: its train split trains, test or validation is held out).")
    subset: str | None = doc(None, "The cached dataset's configuration, e.g. gsm8k's main (source=hub).")
    params: dict[str, Any] = doc({}, "Keyword arguments for the reasoning-gym dataset.")
    num_train: int = doc(1000, "Number of procedural training examples (source=reasoning_gym).", check=at_least(1))
    num_eval: int = doc(
        100, "Held-out examples (procedural tasks; cap for files). Where they would come out of the training data "
        "(source=file without eval_path, or hub) and eval.num_examples is 0 (no evaluation), none: every row "
        "trains and the run's config.yaml records 0. A split that leaves no training row is an error naming the "
        "row count and the fields to set.",
        check=at_least(0))
    seed: int = doc(1234, "Seed of the procedural generator and of the file split.")
    path: str | None = doc(
        None, "Training data: a .jsonl, .json, .csv or .parquet file, or a directory written by datasets' "
        "save_to_disk (its train split) (source=file).")
    eval_path: str | None = doc(
        None, "Held-out data file; null = hold out num_eval rows of `path` (source=file) or the dataset's test "
        "split (source=hub)."
    )
    question_field: str = doc("question", "Column holding the question (source=file or hub).")
    answer_field: str = doc("answer", "Column holding the gold answer; GSM8K `#### 42` is understood.")
    id_field: str | None = doc(None, "Column holding a stable example id; null = file:row.")
    system_prompt: str | None = doc(
        None, "System prompt; null = the default asking for <think>...</think><answer>...</answer>."
    )
    few_shot: int = doc(
        0, "Worked examples prepended as prior chat turns (helps small models learn the format).",
        check=at_least(0),
    )
    few_shot_calculator: bool = doc(
        False, "Worked examples call the calculator tool on their expression, its reply inline (for tool "
        "recipes with rollout.tools=[calculator], rollout.tool_format=inline; reasoning-gym tasks).",
    )
    template: str = doc(
        "chat",
        "How messages become the prompt text: chat (the tokenizer's chat template), r1_zero (DeepSeek-R1-Zero's "
        "plain-text template, for base models; its system text is used when system_prompt is null) or a "
        "plain-text template with {question} once and {system} before it, e.g. '{system}\\nQ: {question}\\nA:'.",
        check=TEMPLATE,
    )
    assistant_prefix: str = doc(
        "", "Text that starts the model's answer, e.g. '<think>' (chat) or ' <think>' (after 'Assistant:'): "
        "prompt tokens, never trained; rewards, evaluation and samples see prefix + completion.",
    )
    sampler: Literal[PROMPT_SAMPLER_NAMES] = doc(
        "uniform", "Which training prompts each step draws (grpo.tasks.sampling): uniform = a seeded permutation "
        "per epoch; difficulty_pool = by estimated pass rate, easy / learnable / hard pools in the shares of "
        "task.difficulty (prime-rl's difficulty pool: too easy and too hard prompts, whose groups have no reward "
        "variance, come back less); curriculum = a reasoning-gym task's curriculum levels, one up as accuracy "
        "rises (reasoning-gym's coaching curricula; held-out examples stay those of task.params).")
    difficulty: DifficultyConfig = doc(
        DifficultyConfig(), "Per-prompt pass-rate estimates and what difficulty_pool and curriculum do with them.")


@dataclass
class RewardSpec:
    name: str = doc("accuracy", "Registered reward name, or `module:function` / `file.py:function`.")
    weight: float = doc(1.0, "Weight in the summed reward.")
    options: dict[str, Any] = doc({}, "Keyword arguments passed to the reward factory.")
    steps: str | None = doc(
        None, "Mark a user function as a step (process) reward (grpo.rewards.steps): offsets (it returns (end offset, "
        "score) pairs), or newline / sentence / tag:<text> (one score per step of that split). Null: an outcome "
        "reward, unless the function marks itself (@grpo.rewards.steps.step_reward; arithmetic_steps and "
        "process_reward_model do).", check=STEP_SPLIT)


@dataclass
class ReferenceConfig:
    url: str | None = doc(
        None,
        "Base URL of a `grpo serve-ref` server (http://host:port) that computes the reference "
        "log-probs; null = load the reference model in this process. Used only when algorithm.beta > 0.",
        check=HTTP_URL,
    )
    token_env: str = doc(
        "GRPO_REF_TOKEN", "Environment variable holding the bearer token shared with the server.",
        check=ENV_NAME,
    )
    timeout: float = doc(
        300.0, "Seconds one reference request may take before it counts as failed.", check=above(0, SECONDS))
    max_retries: int = doc(
        6, "Retries of a failed request (connection error, timeout, 5xx) before the run stops.",
        check=at_least(0),
    )
    backoff: float = doc(
        1.0, "Seconds before the first retry; doubled after each (1 s, 6 retries: ~1 min).",
        check=at_least(0, SECONDS))
    sync_every: int = doc(
        0, "Every N steps move the reference towards the policy (TRL's ref-model sync; iterative RL resets it): "
        "ref <- sync_mix * policy + (1 - sync_mix) * ref. 0 = never. Needs a local, full-weight reference.",
        check=at_least(0))
    sync_mix: float = doc(
        1.0, "The mix-up factor of reference.sync_every, in (0, 1]; 1 = a reset to the policy.",
        check=within("(0, 1]"))


@dataclass
class IterativeConfig:
    ACTIVE: ClassVar[str] = "retrain_every"  # the other fields are read (and checked) only when it is set

    retrain_every: int = doc(
        0, "Iterative RL (DeepSeekMath 4.1.4): every N steps train the reward model further on the newest "
        "samples (plus replayed older ones), reset the reference to the policy, go on. 0 = off.", check=at_least(0))
    reward: str = doc("reward_model", "The entry of `rewards` whose model is retrained (a reward_model reward).")
    label: str = doc("accuracy", "The rule-based entry of `rewards` that labels each sample (>= 0.5: right); "
                                 "give it weight 0 to train on the reward model alone, as the paper does.")
    replay: float = doc(
        0.1, "Fraction of each retraining's samples replayed from older ones, in [0, 1).", check=within("[0, 1)"))
    buffer_size: int = doc(4096, "Older samples kept for replay (the oldest are dropped first).", check=at_least(0))
    held_out: float = doc(0.2, "Fraction of the newest samples kept out of each retraining to measure the "
                               "reward model's accuracy before and after it (metrics iterative/rm_accuracy_*).",
        check=within("[0, 1)"))
    epochs: float = doc(1.0, "Epochs over each retraining's samples.", check=above(0))
    learning_rate: float = doc(
        2e-5, "The reward model's learning rate (transformers' Trainer, AdamW).", check=above(0))
    batch_size: int = doc(8, "Reward-model training batch size.", check=at_least(1))
    reset_reference: bool = doc(True, "Reset the reference to the policy at each retraining (when beta > 0).")


@dataclass
class TrainConfig:
    num_steps: int = doc(100, "Optimizer steps (one generated batch each when num_iterations=1).", check=at_least(1))
    prompts_per_step: int = doc(2, "Prompts per step; each gets group_size completions.", check=at_least(1))
    micro_batch_size: int = doc(8, "At most this many completions per forward/backward (gradient "
                                   "accumulation); completions of very different lengths go in separate ones.",
        check=at_least(1))
    learning_rate: float = doc(1e-6, "Peak AdamW learning rate.", check=above(0))
    weight_decay: float = doc(0.0, "AdamW weight decay.")
    adam_betas: list[float] = doc(
        [0.9, 0.99], "AdamW betas.",
        check=expect(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"))
    max_grad_norm: float = doc(
        1.0, "Clip the global gradient norm to this; 0 = no clipping.", check=at_least(0, NUMBER))
    lr_schedule: Literal[LR_SCHEDULES] = doc("constant", "Learning-rate schedule after warmup.")
    warmup_steps: int = doc(0, "Linear warmup steps.", check=at_least(0))
    parallel: Literal[PARALLEL_MODES] = doc(
        "ddp", "Under torchrun (grpo.compute.distributed): ddp = full model on every rank, gradients summed; "
        "fsdp = FSDP2 shards parameters, gradients and optimizer state."
    )
    max_bad_steps: int = doc(
        3, "Stop (with a checkpoint) after this many non-finite losses in a row.", check=at_least(1))
    fp16_initial_scale: float = doc(
        65536.0, "model.precision=float16: the dynamic loss scaler's first scale (torch.amp.GradScaler's default, "
        "as verl's float16 runs use). An update whose scaled gradients overflow is skipped and halves the "
        "scale; it does not count towards train.max_bad_steps (grpo.compute.loss_scale).", check=above(0))
    fp16_growth_interval: int = doc(
        2000, "model.precision=float16: double the loss scale after this many updates in a row without an "
        "overflow (torch.amp.GradScaler's default).", check=at_least(1))
    first_run_check: bool = doc(
        True, "At the start of a fresh run, sample G completions for 2 training prompts (its own seed: the run's "
        "random streams are untouched) and warn, one line each naming the field to change, about truncation, "
        "groups without reward variance, rewards that cannot tell completions apart, a dropped system prompt.",
    )
    check_resources: bool = doc(
        True, "Before training, refuse a batch that a rough estimate says cannot fit in memory, "
        "and a disk without room for a checkpoint (grpo.guards.resources)."
    )


@dataclass
class EvalConfig:
    every: int = doc(0, "Evaluate every N steps; 0 = only before and after training.", check=at_least(0))
    num_examples: int = doc(
        100, "Held-out examples per evaluation (at most task.num_eval); 0 = no evaluation (eval.every must be 0), "
        "and a data task without a held-out file then holds out no rows.", check=at_least(0))
    pass_k: int = doc(1, "k of pass@k; k > 1 samples k completions per example.", check=at_least(1))
    temperature: float = doc(1.0, "Sampling temperature for pass@k (greedy accuracy uses 0).")
    max_new_tokens: int | None = doc(None, "Completion length at eval; null = rollout.max_new_tokens.")
    batch_size: int = doc(32, "Prompts generated together during evaluation.")
    before_training: bool = doc(True, "Evaluate the initial model before the first step.")


@dataclass
class CheckpointConfig:
    every: int = doc(50, "Save a checkpoint every N steps (and at the end); 0 = only at the end.", check=at_least(0))
    keep_last: int = doc(2, "Checkpoints kept on disk (oldest deleted first); >= 1.", check=at_least(1))


@dataclass
class LogConfig:
    every: int = doc(1, "Write metrics every N steps.", check=at_least(1))
    num_samples: int = doc(4, "Completions per step written to samples.jsonl.")
    report_to: list[Literal[TRACKER_NAMES]] = doc(
        ["tensorboard"], "Experiment trackers that also get every metric (grpo.record.trackers): tensorboard "
        "(<run>/tensorboard), wandb (the config, metrics and a table of sampled completions; offline files in "
        "<run>/wandb without W&B credentials or with WANDB_MODE=offline), mlflow (metrics and the config as "
        "params; MLFLOW_TRACKING_URI, else a sqlite store in <run>/mlflow); [] = none. wandb and mlflow need "
        "`pip install -e '.[trackers]'`. metrics.jsonl is always written.",
        check=expect(lambda v: len(set(v)) == len(v), "each tracker at most once"),
    )
    project: str | None = doc(
        None, "W&B project / MLflow experiment name; null = WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME, else 'grpo'. "
        "The run's name is output_dir's last component.")
    progress: bool = doc(True, "Show a progress bar on the terminal.")

    @staticmethod
    def upgrade(data: dict[str, Any]) -> dict[str, Any]:
        """Configs from before report_to (run directories' config.yaml, command lines) say
        `log.tensorboard: true|false`: it adds tensorboard to report_to, or removes it."""
        if "tensorboard" not in data:
            return data
        data = dict(data)
        on = data.pop("tensorboard")
        if not isinstance(on, bool):
            raise ValueError(f"config field `log.tensorboard` = {on!r} is invalid; expected bool (or use log.report_to)")
        others = [name for name in data.get("report_to", ["tensorboard"]) if name != "tensorboard"]
        data["report_to"] = (["tensorboard"] if on else []) + others
        return data


