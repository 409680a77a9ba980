"""The algorithm section of the config: the loss, its variants and the auxiliary terms.

Apart from grpo.config.sections for its size; the same conventions (every field documented, its
check beside it, a Literal's allowed values from grpo.config.values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from grpo.config.checks import (
    ENV_NAME,
    HTTP_URL,
    NUMBER,
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
    IMPORTANCE_SAMPLING_LEVEL_NAMES,
    KL_ESTIMATOR_NAMES,
    LOSS_TYPES,
    POLICY_OBJECTIVE_NAMES,
    REWARD_AGGREGATION_NAMES,
    SAMPLER_CORRECTION_LEVELS,
    SAMPLER_CORRECTION_NAMES,
)


@dataclass
class AuxLossSpec:
    name: Literal[AUX_LOSS_NAMES] = doc(
        "sft", "The term (grpo.algorithm.AUX_LOSSES), computed on the step's own samples (gold_sft: on its prompts' gold "
        "demonstrations): sft = the negative "
        "log-likelihood of each group's best completion (highest total reward, where it beats another one of its "
        "group; RAFT, Dong et al. 2023), aggregated as loss_type aggregates the policy loss; dpo = DPO (Rafailov et "
        "al. 2023) on each group's (highest, lowest total reward) pair, -log sigmoid(dpo_beta * ((logp_w - ref_w) - "
        "(logp_l - ref_l))) with sequence log-probs, averaged over the pairs; its reference is the KL reference "
        "when algorithm.beta > 0, else the policy that sampled the step; distill = on-policy distillation from a "
        "teacher model (teacher_path or teacher_url): per completion token, the reverse KL(pi_theta || teacher) "
        "estimated on the sampled token, logp - logp_teacher, its gradient (logp - logp_teacher) * d logp "
        "(Thinking Machines' per-token negative advantage), aggregated as loss_type aggregates; with the rewards' "
        "weights 0 every advantage is 0 and distillation is the run's only signal; self_distill = the same term "
        "with the policy itself as teacher (no grad), given its group's successful completion (min_reward) as a "
        "worked example in the prompt (SDPO-like; single-turn only); a group without one adds nothing "
        "(docs/algorithm.md); gold_sft = the negative log-likelihood of the task's gold demonstration of each "
        "prompt of the step (the worked-example text of its source: reasoning-gym's worked steps, a file's reasoning "
        "before `####`, else a sentence with the gold answer), teacher-forced after the prompt and ending in EOS, "
        "aggregated as sft (CHORD's expert data; single-turn only).")
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
        "filter; e.g. 1 for a correct answer with the accuracy reward); self_distill: the group's best counts as "
        "its successful completion only then; null = any best that beats another completion of its group.")
    dpo_beta: float = doc(
        0.1, "dpo: the inverse temperature of the preference margin (TRL's DPOConfig.beta, 0.1).", check=above(0))
    teacher_path: str | None = doc(
        None, "distill: the teacher, a model directory (or a .gguf file, as model.path) loaded in this process frozen "
        "and without gradients, in the compute dtype on the policy's device like the reference; its tokenizer must "
        "equal the policy's. One of teacher_path and teacher_url.")
    teacher_url: str | None = doc(
        None, "distill: the base URL of a `grpo serve-ref --model TEACHER` server computing the teacher's "
        "log-probs (reference.timeout, max_retries and backoff apply); its vocabulary size must equal the "
        "policy's (the server holds no tokenizer to compare).", check=HTTP_URL)
    teacher_token_env: str = doc(
        "GRPO_TEACHER_TOKEN", "distill with teacher_url: the environment variable holding that server's bearer "
        "token.", check=ENV_NAME)


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
