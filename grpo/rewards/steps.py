"""Process (step) rewards: where a completion's steps end, and the token each step ends in.

A step reward is a reward function `fn(completion, example)` that scores the steps of the
reasoning instead of the whole completion (DeepSeekMath section 4.1.3). It is told apart by
the `steps` field of its Reward (grpo.rewards.reward), the *split* that says how its output
places the steps:

    offsets            it returns [(end, score), ...]: `end` is the character offset in the
                       completion just past the step's last character (the built-in
                       `arithmetic_steps` and `process_reward_model` do this)
    newline            it returns [score, ...], one per non-blank line of the completion
    sentence           ... one per sentence (ended by . ! or ? and a space, or the text's end)
    tag:<text>         ... one per step ended by <text> (e.g. `tag:ки`, Math-Shepherd's step tag)

`@step_reward(split)` makes a function one (a Reward, called like the function);
`rewards: [{name: my.mod:fn, steps: newline}]` does it from the config for a user function. Outcome rewards keep their signature
and return one number.

A step that ends inside a token belongs to that token: `step_tokens` finds, for each end
offset, the first token whose decoded prefix reaches it. The ids are the ones the policy
sampled, so the offsets are the tokenizer's own for exactly these ids (re-encoding the text
could give other tokens).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from grpo.config.checks import check_split, split_names
from grpo.config.values import TAG
from grpo.rewards.reward import Reward

__all__ = ["STEP_SPLITS", "TAG", "PlacedSteps", "as_steps", "check_split", "place_steps", "split_names",
           "step_ends", "step_reward", "step_tokens"]

Steps = list[tuple[int, float]]  # (end offset, score) per step, in order of their ends

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def _line_ends(text: str) -> list[int]:
    """Past each non-blank line (its newline included, as the model wrote it)."""
    ends, start = [], 0
    for line in text.splitlines(keepends=True):
        start += len(line)
        if line.strip():
            ends.append(start)
    return ends


def _sentence_ends(text: str) -> list[int]:
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if text[ends[-1] if ends else 0:].strip():  # a last sentence without its full stop
        ends.append(len(text.rstrip()))
    return ends


# Split name -> the step ends it finds in a completion (None: the reward gives the offsets);
# rewards[].steps allows its names (grpo.config.values.STEP_SPLITS) and tag:<text>.
STEP_SPLITS: dict[str, Callable[[str], list[int]] | None] = {
    "offsets": None,
    "newline": _line_ends,
    "sentence": _sentence_ends,
}


def step_ends(text: str, split: str) -> list[int]:
    """The end offsets of the steps of `text` under a delimiter split (not `offsets`)."""
    if split.startswith(TAG):
        tag = split[len(TAG):]
        return [m.end() for m in re.finditer(re.escape(tag), text)]
    finder = STEP_SPLITS[split]
    assert finder is not None, "the offsets split has no delimiter"
    return finder(text)


def step_reward(split: str = "offsets") -> Callable[[Callable], Reward]:
    """Decorator: `fn(completion, example)` as a step reward whose output follows `split`: a
    Reward with `steps=split` (any batch, load and timeout of a Reward given are kept)."""
    problem = check_split(split)
    if problem:
        raise ValueError(f"step_reward: {problem}")

    def mark(fn: Callable) -> Reward:
        return replace(Reward.of(fn), steps=split)

    return mark


def _score(value: Any, what: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(float(value)):
        raise ValueError(f"{what} is {value!r}, not a finite number")
    return float(value)


def as_steps(value: Any, text: str, split: str) -> Steps:
    """A step reward's output as [(end, score)] sorted by end; ValueError saying what is wrong.

    offsets: `value` is a sequence of (end, score) with 0 < end <= len(text); a delimiter
    split: a sequence of scores, one per step that split finds in `text`.
    """
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        raise ValueError(f"returned {type(value).__name__}, not a list of steps")
    if split != "offsets":
        ends = step_ends(text, split)
        if len(value) != len(ends):
            raise ValueError(f"returned {len(value)} scores for the {len(ends)} steps split by {split}")
        return [(end, _score(v, f"step {k}'s score")) for k, (end, v) in enumerate(zip(ends, value, strict=True))]
    steps = []
    for k, step in enumerate(value):
        if not (isinstance(step, tuple | list) and len(step) == 2):
            raise ValueError(f"step {k} is {step!r}, not an (end offset, score) pair")
        end, score = step
        if not isinstance(end, numbers.Integral) or isinstance(end, bool) or not 0 < end <= len(text):
            raise ValueError(f"step {k} ends at {end!r}, outside the completion (1..{len(text)})")
        steps.append((int(end), _score(score, f"step {k}'s score")))
    return sorted(steps, key=lambda s: s[0])


def step_tokens(tokenizer: Any, ids: list[int], text: str, prefix: str, ends: list[int]) -> list[int] | None:
    """The completion token each step ends in: for end offset e (in `text`), the first index t
    with len(decode(ids[:t+1])) >= e, found by binary search over decoded prefixes.

    ids: the row's completion ids (padding removed); text: what the rewards scored, i.e.
    `prefix` (task.assistant_prefix, prompt tokens: a step ending there goes to token 0) +
    the decoded ids, or for a multi-turn episode its last turn, which is found at the end of
    the decoded ids. None when `text` cannot be found in the decoded ids (then the row's
    steps cannot be placed and are dropped by the caller, who counts them).
    """
    if not ids:
        return None
    body = text[len(prefix):] if prefix and text.startswith(prefix) else text
    shift = len(text) - len(body)
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    base = 0 if decoded.startswith(body) else decoded.rfind(body)
    if base < 0:
        return None
    lengths: dict[int, int] = {}

    def decoded_length(t: int) -> int:  # characters decoded by ids[: t + 1]
        if t not in lengths:
            lengths[t] = len(tokenizer.decode(ids[: t + 1], skip_special_tokens=True))
        return lengths[t]

    tokens = []
    for end in ends:
        target = base + end - shift
        lo, hi = 0, len(ids) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if decoded_length(mid) >= target:
                hi = mid
            else:
                lo = mid + 1
        tokens.append(lo)
    return tokens


@dataclass
class PlacedSteps:
    """Every step of a batch on its token (the input of algorithm.process_advantages).

    rewards [S] float32, rows [S] long, tokens [S] long; unplaced: rows whose steps could
    not be placed (their text is not in their decoded ids), dropped."""

    rewards: torch.Tensor
    rows: torch.Tensor
    tokens: torch.Tensor
    unplaced: int


def place_steps(tokenizer: Any, completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                completions: list[str], steps: list[Steps], prefix: str) -> PlacedSteps:
    """The scored steps of each row ([(end, score)], RewardScores.steps) on the completion
    token each ends in (step_tokens). completion_ids, completion_mask: [N, C]."""
    rewards, rows, tokens, unplaced = [], [], [], 0
    ids_of = completion_ids.cpu().tolist()
    lengths = completion_mask.sum(1).tolist()
    for i, row in enumerate(steps):
        if not row:
            continue
        placed = step_tokens(tokenizer, ids_of[i][: int(lengths[i])], completions[i], prefix, [e for e, _ in row])
        if placed is None:
            unplaced += 1
            continue
        rewards += [score for _, score in row]
        rows += [i] * len(row)
        tokens += placed
    return PlacedSteps(torch.tensor(rewards, dtype=torch.float32), torch.tensor(rows, dtype=torch.long),
                       torch.tensor(tokens, dtype=torch.long), unplaced)
