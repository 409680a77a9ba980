"""The allowed values of the config's fields, spelled out.

Each tuple names the table the code dispatches on; tests/config/test_config.py holds every
Literal field equal to the keys of its table, so config never imports the code it configures
(and never torch).
"""

# model.dtype: grpo.compute.dtypes.DTYPES, plus auto
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
# model.precision, rollout.precision: grpo.compute.dtypes.DTYPES (what autocast runs in), plus auto
PRECISION_NAMES = ("auto", "float32", "bfloat16", "float16")

# task.source: grpo.tasks.SOURCES
TASK_SOURCES = ("reasoning_gym", "file", "hub")
# task.sampler: grpo.tasks.sampling.SAMPLERS (which training prompts each step draws)
PROMPT_SAMPLER_NAMES = ("uniform", "difficulty_pool", "curriculum")
# task.template: chat, a preset of grpo.tasks.prompts.TEMPLATES, or a plain-text template
CHAT = "chat"
TEMPLATE_PRESETS = ("r1_zero",)

# rewards[].steps: grpo.rewards.steps.STEP_SPLITS, or tag:<text>
STEP_SPLITS = ("offsets", "newline", "sentence")
TAG = "tag:"  # tag:<text>: each step ends just past an occurrence of <text>

# rollout.engine: grpo.rollout.ENGINES, plus auto
ENGINE_NAMES = ("auto", "shared_prefix", "transformers", "vllm", "server")
# rollout.group_policy.name: grpo.algorithm.GROUP_POLICIES (how many completions each prompt gets)
GROUP_POLICY_NAMES = ("fixed", "adaptive")
# rollout.group_policy.unit: grpo.training.collect.BUDGET_UNITS (what the adaptive budget counts)
BUDGET_UNIT_NAMES = ("completions", "tokens")
# rollout.vllm_lora_sync: grpo.rollout.LORA_SYNCS
LORA_SYNC_NAMES = ("merged", "adapter")
# rollout.tool_format: grpo.tasks.prompts.TOOL_FORMATS (PromptFormat.continuation renders both)
TOOL_FORMATS = ("hermes", "inline")
# rollout.tools: the built-ins of grpo.episodes.tools.BUILTIN_TOOLS (sorted), or import paths
TOOL_NAMES = ("calculator", "python")

# algorithm.kl_estimator: grpo.algorithm.KL_ESTIMATORS
KL_ESTIMATOR_NAMES = ("k1", "k2", "k3")
# algorithm.loss_type: grpo.algorithm.AGGREGATIONS
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
# algorithm.scale_rewards: grpo.algorithm.ADVANTAGE_SCALES
ADVANTAGE_SCALE_NAMES = ("group", "batch", "none")
# algorithm.reward_aggregation: grpo.algorithm.REWARD_AGGREGATIONS
REWARD_AGGREGATION_NAMES = ("sum_then_normalize", "normalize_then_sum")
# algorithm.advantages: grpo.algorithm.ADVANTAGE_SOURCES
ADVANTAGE_SOURCE_NAMES = ("sum", "outcome", "process")
# algorithm.importance_sampling_level: grpo.algorithm.IMPORTANCE_SAMPLING_LEVELS
IMPORTANCE_SAMPLING_LEVEL_NAMES = ("token", "sequence")
# algorithm.policy_objective: grpo.algorithm.POLICY_OBJECTIVES
POLICY_OBJECTIVE_NAMES = ("clip", "cispo", "sapo")
# algorithm.sampler_correction: grpo.algorithm.SAMPLER_CORRECTIONS, plus auto
SAMPLER_CORRECTION_NAMES = ("auto", "none", "truncate", "mask")
# algorithm.sampler_correction_level: grpo.algorithm.SAMPLER_CORRECTION_LEVELS
SAMPLER_CORRECTION_LEVELS = ("token", "sequence")

# algorithm.aux_losses[].name: grpo.algorithm.AUX_LOSSES
AUX_LOSS_NAMES = ("sft", "gold_sft", "dpo", "distill", "self_distill")
# algorithm.aux_losses[].schedule: grpo.algorithm.AUX_SCHEDULES
AUX_SCHEDULE_NAMES = ("constant", "linear_decay", "linear_warmup")

# train.lr_schedule: the schedules of grpo.training.trainer.make_scheduler
LR_SCHEDULES = ("constant", "cosine")
# train.parallel: grpo.compute.distributed.PARALLEL_MODES (how World.prepare spreads the model)
PARALLEL_MODES = ("ddp", "fsdp")

# log.report_to: grpo.record.trackers.TRACKERS. Per tracker: the import names it needs (looked
# for with find_spec when the config is validated) and what pip installs them.
TRACKER_PACKAGES = {
    "tensorboard": (("tensorboard",), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    # sqlalchemy and alembic: MLflow's sqlite store (mlflow-skinny leaves them out)
    "mlflow": (("mlflow", "sqlalchemy", "alembic"), "mlflow-skinny sqlalchemy alembic"),
}
TRACKER_NAMES = tuple(TRACKER_PACKAGES)
TRACKER_EXTRA = "trackers"  # pyproject's optional-dependencies entry with wandb and mlflow-skinny
