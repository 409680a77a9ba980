"""Multi-turn episodes: the policy samples a turn, an environment answers, sampling goes on.

For each example, G episodes (G = group_size) run side by side, turn by turn, through any
engine's `generate_tokens`:
  1. turn 1 samples G continuations of each rendered prompt (the prompt prefilled once per
     group where the engine shares it); later turns continue each unfinished row from its
     token ids: prompt + everything sampled and inserted so far, never re-tokenized text;
  2. a turn ends at EOS, a stop string (`</tool_call>` is added to rollout.stop) or the
     turn's token budget; the environment gets the turn's text and answers with messages
     (tool results) or says the episode is done;
  3. the answer is rendered (grpo.tasks.prompts: a chat template's tool turn, or inline) and
     appended as token ids with loss_mask 0 and sampler log-prob 0;
  4. an episode ends when the environment is done, at `max_turns` model turns (finish reason
     `max_turns`), or when the next turn or reply would pass `max_episode_tokens` (`length`);
     replies that came too late for the model to read stay in the episode's messages (the
     tools did run, and are counted) but not in its tokens.
The engine never sees an environment and the environment never sees a token.

Rewards score `completions[i]`: the model's final answer message, i.e. the last turn's text
(hermes) or the whole inline turn, replies included (inline). It is an `EpisodeText`, a str
whose `.episode` holds every message of the episode, for rewards that want the tool calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from grpo.episodes.tool_env import CALL_END
from grpo.rollout.base import SamplingParams
from grpo.trajectory import FINISH_LENGTH, FINISH_TURNS, Trajectory


class EpisodeText(str):
    """A completion's text (a plain str to every reward) with the episode's messages attached."""

    episode: list[dict]


@dataclass(frozen=True)
class EpisodeSettings:
    max_turns: int
    max_episode_tokens: int
    tool_format: str


@dataclass
class _Row:
    """One episode as it grows: its ids after the prompt, which of them were sampled, the
    sampler's log-probs, its messages and the final message's text so far."""

    prompt: list[int]
    ids: list[int] = field(default_factory=list)
    sampled: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    answer: str = ""
    reason: str | None = None

    def add(self, ids: list[int], sampled: bool, logprobs: list[float] | None = None) -> None:
        self.ids += ids
        self.sampled += [int(sampled)] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)


class EpisodeSampler:
    """`sample(examples, params) -> Trajectory` for multi-turn episodes over `engine`."""

    def __init__(self, engine: Any, tokenizer: Any, prompt_format: Any, make_env: Callable[[], Any],
                 settings: EpisodeSettings):
        self.engine, self.tokenizer, self.format = engine, tokenizer, prompt_format
        self.make_env, self.settings = make_env, settings

    def sample(self, examples: list[Any], params: SamplingParams) -> Trajectory:
        s, sizes = self.settings, params.sizes(len(examples))  # each example's own G (group_sizes) or G each
        owners = [ex for ex, n in zip(examples, sizes, strict=True) for _ in range(n)]
        envs = [self.make_env() for _ in owners]
        rows = [self._start(env, ex) for env, ex in zip(envs, owners, strict=True)]
        starts = [sum(sizes[:g]) for g in range(len(sizes))]  # each group's first row
        stop = tuple(dict.fromkeys((*params.stop, CALL_END)))
        version = None
        for turn in range(s.max_turns):
            active = [i for i, row in enumerate(rows) if row.reason is None]
            if not active:
                break
            room = max(s.max_episode_tokens - len(rows[i].ids) for i in active)
            turn_params = replace(params, max_new_tokens=min(params.max_new_tokens, room), stop=stop,
                                  seed=None if params.seed is None else params.seed + turn)
            if turn == 0 and _groups_share_prompts(rows, sizes):  # G samples of each prompt, prefilled once
                batch = self.engine.generate_tokens([rows[i].prompt for i in starts], turn_params)
            else:
                batch = self.engine.generate_tokens([rows[i].prompt + rows[i].ids for i in active],
                                                    replace(turn_params, group_size=1, group_sizes=None))
            version = batch.policy_version[0] if version is None else version
            for k, i in enumerate(active):
                self._advance(rows[i], envs[i], batch, k, turn)
        return self._trajectory(rows, int(version))

    def render(self, example: Any, env: Any = None) -> str:
        """The first turn's prompt text: the environment's starting messages, its tools shown."""
        env = env if env is not None else self.make_env()
        return self.format.render_messages(self.tokenizer, env.reset(example), getattr(env, "schemas", None))

    def _start(self, env: Any, example: Any) -> _Row:
        return _Row(prompt=self.tokenizer(self.render(example, env), add_special_tokens=False)["input_ids"])

    def _advance(self, row: _Row, env: Any, batch: Trajectory, k: int, turn: int) -> None:
        """Append row k of `batch` (this turn's sample) to the episode, then the environment's reply."""
        s = self.settings
        n = int(batch.completion_mask[k].sum())
        ids, logprobs = batch.completion_ids[k, :n].tolist(), batch.sampler_logprobs[k, :n].tolist()
        text, reason = batch.completions[k], batch.finish_reasons[k]
        room = s.max_episode_tokens - len(row.ids)
        if n > room:  # the episode's budget ends inside this turn
            ids, logprobs, reason = ids[:room], logprobs[:room], FINISH_LENGTH
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if turn == 0:
            text = self.format.assistant_prefix + text
        row.add(ids, True, logprobs)
        row.messages.append({"role": "assistant", "content": text})
        row.answer = row.answer + text if s.tool_format == "inline" else text
        if reason == FINISH_LENGTH:
            row.reason = reason
            return
        try:
            replies, done = env.step(text)
        except Exception as e:  # noqa: BLE001 - a user environment's failure ends its episode, counted
            row.messages.append({"role": "environment", "content": f"error: {type(e).__name__}: {e}",
                                 "error": "raised"})
            row.reason = reason
            return
        if done or not replies:
            row.reason = reason
            return
        row.messages += replies  # the calls ran (and count) even when their replies do not fit below
        if turn == s.max_turns - 1:  # the model would get no turn to read the replies
            row.reason = FINISH_TURNS
            return
        inserted = self.format.continuation(self.tokenizer, replies, s.tool_format,
                                            after_eos=ids[-1:] != [] and ids[-1] in self.engine.eos_ids)
        inserted_ids = self.tokenizer(inserted, add_special_tokens=False)["input_ids"]
        if len(row.ids) + len(inserted_ids) >= s.max_episode_tokens:  # no room for a next turn
            row.reason = FINISH_LENGTH
            return
        row.add(inserted_ids, False)
        if s.tool_format == "inline":
            row.answer += inserted

    def _trajectory(self, rows: list[_Row], version: int) -> Trajectory:
        device = next(self.engine.model.parameters()).device
        pad = self.engine.pad_id
        P, C = max(len(r.prompt) for r in rows), max(max(len(r.ids) for r in rows), 1)

        def right(values: list, width: int, fill: Any) -> list:
            return values + [fill] * (width - len(values))

        completions = []
        for r in rows:
            text = EpisodeText(r.answer)
            text.episode = r.messages
            completions.append(text)
        mask = torch.tensor([right([1] * len(r.ids), C, 0) for r in rows], device=device)
        return Trajectory(
            prompt_ids=torch.tensor([[pad] * (P - len(r.prompt)) + r.prompt for r in rows], device=device),
            prompt_mask=torch.tensor([[0] * (P - len(r.prompt)) + [1] * len(r.prompt) for r in rows], device=device),
            completion_ids=torch.tensor([right(r.ids, C, pad) for r in rows], device=device),
            completion_mask=mask,
            loss_mask=torch.tensor([right(r.sampled, C, 0) for r in rows], device=device),
            sampler_logprobs=torch.tensor([right(r.logprobs, C, 0.0) for r in rows], dtype=torch.float32),
            policy_version=torch.full((len(rows),), version, dtype=torch.long),
            completions=completions,
            finish_reasons=[r.reason or FINISH_TURNS for r in rows],
            episodes=[r.messages for r in rows],
        )


def _groups_share_prompts(rows: list[_Row], sizes: list[int]) -> bool:
    """Every row of a group has its group's first prompt (an environment may render them apart)."""
    first = [start for start, n in zip([sum(sizes[:g]) for g in range(len(sizes))], sizes, strict=True)
             for _ in range(n)]
    return all(rows[i].prompt == rows[first[i]].prompt for i in range(len(rows)))


class SingleTurnSampler:
    """One completion per sample, no environment: the engine's generate on the rendered prompts."""

    def __init__(self, engine: Any, tokenizer: Any, prompt_format: Any):
        self.engine, self.tokenizer, self.format = engine, tokenizer, prompt_format

    def render(self, example: Any) -> str:
        return self.format.render(self.tokenizer, example)

    def sample(self, examples: list[Any], params: SamplingParams) -> Trajectory:
        return self.format.sample(self.engine, self.tokenizer, examples, params)


def build_sampler(cfg: Any, engine: Any, tokenizer: Any) -> SingleTurnSampler | EpisodeSampler:
    """What rollout.tools / rollout.environment ask for: single-turn sampling, or episodes with
    the built-in tool environment or a user environment."""
    from grpo.episodes.environment import ToolEnvironment, environment_factory
    from grpo.episodes.tools import load_tool
    from grpo.tasks.prompts import PromptFormat

    r, prompt_format = cfg.rollout, PromptFormat.from_config(cfg.task)
    if not r.multi_turn:
        return SingleTurnSampler(engine, tokenizer, prompt_format)
    if r.environment is not None:
        make_env = environment_factory(r.environment, dict(r.environment_options))
    else:
        tools = [load_tool(spec, dict(r.tool_options.get(spec, {}))) for spec in r.tools]
        make_env = lambda: ToolEnvironment(tools, r.tool_timeout)  # noqa: E731
    settings = EpisodeSettings(r.max_turns, r.episode_tokens, r.tool_format)
    return EpisodeSampler(engine, tokenizer, prompt_format, make_env, settings)
