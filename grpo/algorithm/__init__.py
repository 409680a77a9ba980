"""The GRPO math as pure tensor functions.

Nothing here touches a model, a tokenizer or a process group: every function takes tensors
and returns tensors, so each is tested against hand-computed values. One submodule per concern:
  tokens       logits -> the sampler's processed logits, picked-token log-probs, entropy
  groups       which rows form each prompt's group (equal or unequal sizes): the group-wise reductions
  allocation   group sizes under a fixed budget: the fixed and adaptive policies
  advantages   group-relative advantages (one total, or several rewards apart), process advantages
  objectives   per-token surrogates: clip (with the dual clip), CISPO, SAPO
  losses       ratio level, KL estimators, aggregations, policy_loss
  corrections  sampler importance weights (TIS/MIS), off-policy sequence masking
  entropy      the entropy bonus, its adaptive coefficient, high-entropy token selection
  auxiliary    terms beside the policy loss (hybrid objectives): SFT on the best completion, in-group DPO,
               on-policy distillation and self-distillation (per-token reverse KL)
The tables the code dispatches on (config fields list their keys as the allowed values) are
named in capitals in each.

Shapes: B = number of completions in the (micro-)batch (prompts x G, ordered group by
group; with unequal groups each prompt has its own G), T = completion length (padded), V = vocabulary size.

Where we depart from the papers:
- DeepSeekMath's GRPO objective averages token losses per sequence, then over sequences
  (`loss_type="grpo"`). That gives long sequences less weight per token (the length bias
  Dr. GRPO points out), so `bnpo`, `dr_grpo` and `dapo` aggregations are offered too.
- The KL penalty uses Schulman's k3 estimator by default and is added per token to the
  surrogate (as DeepSeekMath and TRL do), not folded into the reward.
- The group std is Bessel-corrected (torch's default), as TRL and verl compute it; a group
  whose rewards are all equal gets zero advantages, never NaN.
- `num_items` is the normalizer over the whole global batch (all micro-batches and all
  processes), so gradient accumulation and data parallelism give the same gradient as one
  big batch. `bnpo` and `dapo` then coincide; they differ (as in TRL) only when `num_items`
  is left to default to the local micro-batch count.
- CISPO's weight bound is 1 + cispo_epsilon_high, as MiniMax-M1 and verl write it; TRL's
  `epsilon_high` for cispo caps the raw ratio (its 5.0 is our default 4).
- DeepSeek-V3.2's unbiased KL weighs each token's estimate by the token ratio pi_theta / pi_old
  (the surrogate's pi_old), also at sequence level; its off-policy mask keeps a completion it
  cannot measure (no token with finite sampler and trainer log-probs).
- The auxiliary terms (SFT on the best completion, in-group DPO) take their rows from the step's
  own groups, not from a demonstration or preference data set (grpo.algorithm.auxiliary).
- Groups may differ in size (rollout.group_policy = adaptive, after the pass-rate allocation of
  grpo.algorithm.allocation): each group is normalized over its own rows, and every completion
  counts once in the loss's normalizers, so a prompt with a larger group weighs more in the step.
- normalize_then_sum (GDPO) leaves out the batch mean GDPO and TRL subtract (zero by
  construction) and zeroes groups whose normalized rewards cancel (decoupled_advantages).
"""

# Every name lives in one submodule (a concern each); `grpo.algorithm.X` reaches all of them.
from grpo.algorithm.advantages import (  # noqa: F401
    ADVANTAGE_SCALES,
    ADVANTAGE_SOURCES,
    CANCELLED,
    REWARD_AGGREGATIONS,
    GroupsLike,
    RewardAggregation,
    decoupled_advantages,
    decoupled_signal,
    decoupled_sum,
    group_advantages,
    groups_with_signal,
    process_advantages,
    summed_advantages,
    summed_signal,
    weighted_sum,
)
from grpo.algorithm.allocation import (  # noqa: F401
    GROUP_POLICIES,
    adaptive_sizes,
    fixed_sizes,
    informative_probability,
    marginal_gain,
)
from grpo.algorithm.auxiliary import (  # noqa: F401
    AUX_LOSSES,
    AUX_SCHEDULES,
    AuxiliaryLoss,
    AuxOptions,
    aux_weight,
    best_completion_roles,
    demonstrated_roles,
    demonstrations,
    dpo_loss,
    dpo_pair_losses,
    every_row_roles,
    group_extremes,
    no_sampled_rows,
    preference_pair_roles,
    reverse_kl_loss,
    sequence_logprobs,
    sft_loss,
)
from grpo.algorithm.corrections import (  # noqa: F401
    SAMPLER_CORRECTION_LEVELS,
    SAMPLER_CORRECTIONS,
    off_policy_sequence_mask,
    sampler_correction_weights,
)
from grpo.algorithm.entropy import (  # noqa: F401
    adapted_entropy_coef,
    entropy_bonus,
    entropy_threshold,
    high_entropy_mask,
)
from grpo.algorithm.groups import Groups  # noqa: F401
from grpo.algorithm.losses import (  # noqa: F401
    AGGREGATIONS,
    IMPORTANCE_SAMPLING_LEVELS,
    KL_ESTIMATORS,
    LOSS_TYPES,
    Aggregation,
    constant_normalized_sum,
    kl_divergence,
    per_sequence_mean,
    policy_loss,
    surrogate_metrics,
    token_sum,
)
from grpo.algorithm.objectives import (  # noqa: F401
    POLICY_OBJECTIVES,
    Objective,
    ObjectiveOptions,
    cispo_surrogate,
    clipped_surrogate,
    policy_objective,
    sapo_surrogate,
)
from grpo.algorithm.tokens import (  # noqa: F401
    LOGPROB_CHUNK_TOKENS,
    masked_mean,
    sampling_logits,
    token_entropy,
    token_logprobs,
)
