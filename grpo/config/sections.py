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
    optional,
    within,
)
from grpo.config.values import (
    ADVANTAGE_SCALE_NAMES,
    ADVANTAGE_SOURCE_NAMES,
    AUX_LOSS_NAMES,
    AUX_SCHEDULE_NAMES,
    DTYPE_NAMES,
    IMPORTANCE_SAMPLING_LEVEL_NAMES,
    KL_ESTIMATOR_NAMES,
    LOSS_TYPES,
    LR_SCHEDULES,
    PARALLEL_MODES,
    POLICY_OBJECTIVE_NAMES,
    PRECISION_NAMES,
    PROMPT_SAMPLER_NAMES,
    REWARD_AGGREGATION_NAMES,
    SAMPLER_CORRECTION_LEVELS,
    SAMPLER_CORRECTION_NAMES,
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
class AuxLossSpec:
    name: Literal[AUX_LOSS_NAMES] = doc(
        "sft", "The term (grpo.algorithm.AUX_LOSSES), computed on the step's own samples: sft = the negative "
        "log-likelihood of each group's best completion (highest total reward, where it beats another one of its "
        "group; RAFT, Dong et al. 2023), aggregated as loss_type aggregates the policy loss; dpo = DPO (Rafailov et "
        "al. 2023) on each group's (highest, lowest total reward) pair, -log sigmoid(dpo_beta * ((logp_w - ref_w) - "
        "(logp_l - ref_l))) with sequence log-probs, averaged over the pairs; its reference is the KL reference "
        "when algorithm.beta > 0, else the policy that sampled the step (docs/algorithm.md).")
    weight: float = doc(0.1, "Its weight: loss += weight * term (CHORD's mu, which also scales the policy loss "
                             "by 1 - mu: scale the learning rate for that).", check=at_least(0, NUMBER))
    schedule: Literal[AUX_SCHEDULE_NAMES] = doc(
        "constant", "How the weight moves with the step s (steps done before this one): constant; linear_decay "
        "= weight * (1 - min(1, s / until_step)) (CHORD-mu's decay: imitation first, then RL alone); "
        "linear_warmup = weight * min(1, s / until_step). Follows the step, so a resumed run continues it.")
    until_step: int | None = doc(
        None, "The step where linear_decay reaches 0 and linear_warmup the full weight; null = train.num_steps.",
        check=optional(at_least(1)))
    min_reward: float | None = doc(
        None, "sft: train on a group's best completion only when its total reward is at least this (RAFT's "
        "filter; e.g. 1 for a correct answer with the accuracy reward); null = any best that beats another "
        "completion of its group.")
    dpo_beta: float = doc(
        0.1, "dpo: the inverse temperature of the preference margin (TRL's DPOConfig.beta, 0.1).", check=above(0))


@dataclass
class AlgorithmConfig:
    beta: float = doc(0.0, "KL penalty coefficient; 0 = no reference model is loaded.", check=at_least(0, NUMBER))
    kl_estimator: Literal[KL_ESTIMATOR_NAMES] = doc("k3", "Per-token KL estimator.")
    epsilon: float = doc(0.2, "Lower clip range of the ratio: clip(ratio, 1-epsilon, ...).", check=within("[0, 1)"))
    epsilon_high: float | None = doc(
        None, "Upper clip range (DAPO clip-higher); null = epsilon.", check=optional(at_least(0, NUMBER)))
    loss_type: Literal[LOSS_TYPES] = doc(
        "grpo", "How token losses are aggregated (see algorithm.policy_loss)."
    )
    scale_rewards: Literal[ADVANTAGE_SCALE_NAMES] = doc(
        "group", "Advantage scaling: group std, batch std, or none (Dr. GRPO)."
    )
    advantage_eps: float = doc(1e-4, "Added to the std before dividing.", check=at_least(0, NUMBER))
    reward_aggregation: Literal[REWARD_AGGREGATION_NAMES] = doc(
        "sum_then_normalize", "How several outcome rewards become advantages. sum_then_normalize: the weighted "
        "total is normalized in its group (GRPO). normalize_then_sum: each reward function is normalized in its "
        "group on its own, the weighted sum is then divided by its std over the batch (GDPO, Liu et al. 2026; "
        "TRL's multi_objective_aggregation), so one reward's spread cannot drown another's and distinct "
        "combinations of rewards keep distinct advantages. scale_rewards picks each function's std; none = no "
        "std anywhere, where the two agree. A failed call scores 0 in both; step rewards are in neither.")
    advantages: Literal[ADVANTAGE_SOURCE_NAMES] = doc(
        "sum", "With step (process) rewards: which advantages train the policy. sum = outcome + process, each "
        "normalized on its own (the paper uses them separately: pick outcome or process for that); outcome = "
        "step rewards only logged; process = outcome rewards only logged. Without step rewards: outcome.")
    num_iterations: int = doc(1, "Policy updates per generated batch (mu in the paper).", check=at_least(1))
    importance_sampling_level: Literal[IMPORTANCE_SAMPLING_LEVEL_NAMES] = doc(
        "token", "Ratio of the clipped surrogate: token (PPO, GRPO) or sequence (GSPO: one ratio per "
        "completion, exp of its mean token log-ratio, clipped with sequence_epsilon / _high).")
    sequence_epsilon: float = doc(
        3e-4, "Lower clip range at importance_sampling_level=sequence (GSPO's 3e-4: a mean log-ratio "
        "moves ~100x less than a token's, so 0.2 would never clip).", check=at_least(0, NUMBER))
    sequence_epsilon_high: float = doc(
        4e-4, "Upper clip range at importance_sampling_level=sequence (GSPO's 4e-4).", check=at_least(0, NUMBER))
    policy_objective: Literal[POLICY_OBJECTIVE_NAMES] = doc(
        "clip", "Per-token surrogate (docs/algorithm.md): clip = PPO / GRPO's clipped ratio (with dual_clip); "
        "cispo = MiniMax-M1's CISPO, REINFORCE weighted by the clipped, detached ratio, so clipped tokens keep "
        "their gradient; sapo = Qwen's SAPO, a sigmoid gate in place of the hard clip (token level only).")
    dual_clip: float | None = doc(
        None, "Dual clip for policy_objective=clip: where A < 0 the token loss is at most -A * dual_clip, so a "
        "token whose ratio ran far above 1 stops pushing (Ye et al. 2020; verl's clip_ratio_c, 3; INTELLECT-2's "
        "delta). Must exceed 1 + the upper clip range in use; null = off.", check=optional(above(1)))
    cispo_epsilon_low: float | None = doc(
        None, "CISPO's weight is clip(ratio, 1 - cispo_epsilon_low, 1 + cispo_epsilon_high); null = no lower "
        "bound (MiniMax-M1 bounds it only above).", check=optional(within("[0, 1]")))
    cispo_epsilon_high: float = doc(
        4.0, "CISPO's upper weight bound is 1 + this: 4 caps the weight at 5, TRL's and ScaleRL's epsilon_max "
        "(TRL's epsilon_high caps the raw ratio; here, as in MiniMax-M1 and verl, it is 1 + epsilon).",
        check=at_least(0, NUMBER))
    sapo_temperature_pos: float = doc(
        1.0, "SAPO's gate temperature for tokens with A > 0 (the paper's and TRL's tau_pos, 1.0): larger = the "
        "gate closes faster as the ratio leaves 1.", check=above(0))
    sapo_temperature_neg: float = doc(
        1.05, "SAPO's gate temperature for tokens with A <= 0 (tau_neg, 1.05): above tau_pos because negative "
        "updates spread probability over many unsampled tokens and destabilize sooner.", check=above(0))
    sampler_correction: Literal[SAMPLER_CORRECTION_NAMES] = doc(
        "auto", "Correct for the sampler's distribution q differing from the trainer's pi_old with "
        "importance weights w = pi_old/q: truncate (TIS, weight min(w, cap)), mask (MIS, weight 0 "
        "outside [1/cap, cap]), none; auto = truncate for rollout.engine vllm or server, whenever "
        "rollout.max_staleness > 0 (q is then an older policy) and where rollouts or the trainer compute below "
        "float32 (grpo.compute.precision), none otherwise (the trainer's own weights and numerics).")
    sampler_correction_level: Literal[SAMPLER_CORRECTION_LEVELS] = doc(
        "token", "w per token, or per completion (exp of the mean token log-ratio).")
    sampler_correction_cap: float = doc(2.0, "The cap C of sampler_correction (> 1).", check=above(1))
    off_policy_mask_threshold: float | None = doc(
        None, "DeepSeek-V3.2's off-policy sequence masking (delta; TRL's off_policy_mask_threshold): a "
        "completion with a negative advantage whose mean per-token log(q / pi_theta), sampler q against the "
        "current policy, exceeds this loses its surrogate (its KL term and its place in the normalizer stay): "
        "a negative sample far off-policy can mislead and destabilize the update. Matters with rollout.max_staleness > 0 and the vllm "
        "and server engines. null = off.", check=optional(at_least(0, NUMBER)))
    kl_importance_weighted: bool = doc(
        False, "DeepSeek-V3.2's unbiased KL estimate (TRL's use_bias_correction_kl): each token's KL estimate "
        "times its ratio pi_theta / pi_old (with its gradient), since the tokens were drawn from pi_old, not "
        "pi_theta. Needs beta > 0.")
    dynamic_sampling: bool = doc(
        False, "DAPO's dynamic sampling: drop groups whose total-reward std is at most "
        "dynamic_sampling_tolerance (no advantage, no signal) and draw more prompts until "
        "train.prompts_per_step groups with signal are collected or max_generation_rounds is reached.")
    dynamic_sampling_tolerance: float = doc(
        0.0, "Largest group reward std that counts as no signal (0: only exactly equal rewards; for "
        "continuous rewards a small positive number).", check=at_least(0, NUMBER))
    max_generation_rounds: int = doc(
        3, "With dynamic_sampling: at most this many rounds of train.prompts_per_step prompts per step; "
        "then the step trains on the groups with signal it has (metrics dynamic/*).", check=at_least(1))
    mask_truncated_completions: bool = doc(
        False, "Completions that hit rollout.max_new_tokens are not trained on (DAPO's overlong "
        "filtering); they still count in their group's advantages.")
    entropy_coef: float = doc(
        0.0, "Entropy bonus: loss -= entropy_coef * the entropy of the sampling distribution (logits / "
        "rollout.temperature) of each loss-masked token, aggregated as loss_type aggregates the policy loss (PPO's "
        "entropy bonus; verl's entropy_coeff); it keeps the policy exploring where GRPO's entropy collapses. "
        "With entropy_target set: the starting coefficient. 0 = no bonus.", check=at_least(0, NUMBER))
    entropy_target: float | None = doc(
        None, "Adapt the bonus's coefficient toward this mean token entropy (nats) after each step: "
        "coef <- max(0, coef + entropy_coef_lr * (entropy_target - entropy)), gradient ascent on the dual "
        "variable of the constraint entropy >= target (SAC's temperature update; Skywork-OR1's adaptive entropy "
        "control steers the same way with fixed steps). The coefficient is saved in checkpoints. null = "
        "entropy_coef stays fixed.", check=optional(at_least(0, NUMBER)))
    entropy_coef_lr: float = doc(
        1e-3, "Step size of the adaptive coefficient (entropy_target): its change per nat of entropy below or "
        "above the target, per step.", check=above(0))
    top_entropy_quantile: float = doc(
        1.0, "Train the surrogate only on the loss-masked tokens whose entropy is in this top fraction of the "
        "step's batch (\"Beyond the 80/20 Rule\", Wang et al. 2025, trains on the top 0.2; TRL's "
        "top_entropy_quantile); the others keep their KL and entropy terms and their count in the normalizer. "
        "The threshold is taken over the whole batch of every process from the policy that sampled it (TRL "
        "takes it per micro-batch), so micro_batch_size and the number of processes never change which tokens "
        "train; it costs one no-grad forward of the batch (shared with the old log-probs' when num_iterations > "
        "1). 1 = every token.", check=within("(0, 1]"))
    aux_losses: list[AuxLossSpec] = doc(
        [], "Auxiliary terms added to the policy loss, each weighted, from the same samples (hybrid objectives: "
        "SFT on the best completions as in RAFT / CHORD, in-group DPO); each logged as aux/<name> and its weight in "
        "effect as aux/<name>/weight. [] = GRPO alone.",
        check=expect(lambda v: len({s.name for s in v}) == len(v), "each name at most once"))


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


