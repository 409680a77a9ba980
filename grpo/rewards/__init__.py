"""Reward functions and their registry; `score` (from grpo.rewards.harness) runs them.

A reward function is pure: `fn(completion: str, example: Example) -> float`. It never raises
on model output: a malformed completion is a wrong answer. The RL reward and the evaluation
grader are the same code (`evaluation.py` calls `accuracy` and `format` through `score`).

    fns = build(cfg.rewards)                      # [WeightedReward(name, weight, fn), ...]
    scores = score(fns, completions, examples, timeout=cfg.reward_timeout)
    scores.total                                  # [N] float32, the weighted sum

A reward is a `Reward` (grpo.rewards.reward): the function plus what the harness needs (a batch
call, a model to load, its own timeout, a step split); it is called like the function.

`get(name, **options)` turns a registered name into a Reward through its factory (the
factories are the entries of `REWARDS`, a grpo.plugins.registry table). Built-ins:
`format`, `tag_count`, `accuracy`, `overlong`, `cosine`, in `grpo.rewards.model_rewards` (imported
on first use, as it needs transformers) `reward_model` and `judge`, and the step (process)
rewards of `grpo.rewards.process`: `arithmetic_steps` and `process_reward_model`. A name containing ':' is a
user function: `my_pkg.rewards:score` or `path/to/file.py:score`; with options, that attribute
is called as a factory, `score(**options)`, and must return the function; a plain function
is wrapped into a Reward.

Where we depart from the papers and from peers (TRL, open-r1):
- `accuracy` compares the extracted answer with math-verify, guarded against inputs that
  would never finish (see `grpo.rewards.answers`).
- `format` asks for exactly one of each of the four tags; `tag_count` gives 0.25 per tag
  that appears once and in its place relative to the others (TRL counts them in any order).
- Harness (`grpo.rewards.harness`): a call that raises, times out or returns a non-finite
  non-number adds 0 to the total (so one broken function does not wipe the others) and NaN
  to its per-function row.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from grpo.plugins.importing import Registered, import_function
from grpo.plugins.registry import Registry
from grpo.rewards.answers import is_correct
from grpo.rewards.harness import RewardScores, WeightedReward, score
from grpo.rewards.reward import Reward
from grpo.tasks.base import Example

__all__ = [
    "REWARDS", "Reward", "RewardFn", "RewardScores", "WeightedReward", "build", "check_option", "get", "names",
    "register", "score",
]


RewardFn = Callable[[str, Example], float]

# --------------------------------------------------------------------------- the registry

# name -> factory (**options) -> Reward or reward function
REWARDS: Registry[Callable[..., Any]] = Registry("reward", "rewards[i].name")
# Factories in grpo.rewards.model_rewards, imported only when asked for (transformers is slow to import).
REWARDS.register("reward_model", "grpo.rewards.model_rewards:reward_model")
REWARDS.register("judge", "grpo.rewards.model_rewards:judge")
# step (process) rewards, grpo.rewards.steps
REWARDS.register("arithmetic_steps", "grpo.rewards.process:arithmetic_steps")
REWARDS.register("process_reward_model", "grpo.rewards.process:process_reward_model")


def register(name: str) -> Callable[[Callable[..., RewardFn]], Callable[..., RewardFn]]:
    """Decorator: register a factory `(**options) -> reward function` under `name`."""
    return REWARDS.register(name)


def names() -> list[str]:
    """The registered reward names."""
    return sorted(REWARDS)


_REGISTERED = Registered()  # reward functions handed over as objects (grpo.api)


def register_function(fn: RewardFn | Reward) -> str:
    """The name under which `fn` (a Python callable given to grpo.train) is found by `get`;
    a Reward is named after the function it holds (as it was before rewards were declared)."""
    return _REGISTERED.register(fn, named_after=fn.fn if isinstance(fn, Reward) else fn)


def get(name: str, **options: Any) -> Reward:
    """The Reward for a registered name or a `module:function` / `file.py:function`."""
    given = _REGISTERED.get(name)
    if given is not None:
        if options:
            raise ValueError(f"reward {name!r} was given as a Python function: it takes no options")
        return Reward.of(given)
    if ":" in name:
        return Reward.of(_user_function(name, options))
    if name not in REWARDS:
        raise ValueError(
            f"unknown reward {name!r}; registered: {', '.join(names())}; or a user function "
            "given as `module.path:function` or `path/to/file.py:function`"
        )
    factory = REWARDS.get(name)
    params = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"reward `{name}` has no option `{unknown[0]}`; options: {', '.join(params) or 'none'}")
    missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty and p not in options]
    if missing:
        raise ValueError(f"reward `{name}` needs option `{missing[0]}`")
    return Reward.of(factory(**options))


def build(specs: list[Any], load: bool = True) -> list[WeightedReward]:
    """RewardSpecs -> [WeightedReward]; a name used twice gets `#2`, `#3`... in the results.

    With load=True, rewards that hold a model (Reward.load) load it now, so a bad model
    directory fails before training instead of as a counted error inside the first step (and
    model loading is not charged to the per-call timeout). rewards[i].steps makes a step
    reward of a copy: the function given is left as it is.
    """
    out: list[WeightedReward] = []
    for spec in specs:
        reward = get(spec.name, **dict(spec.options))
        if getattr(spec, "steps", None) is not None:
            reward = replace(reward, steps=spec.steps)
        name, k = spec.name, 2
        while any(r.name == name for r in out):
            name, k = f"{spec.name}#{k}", k + 1
        if load:
            try:
                reward.load()
            except ValueError:
                raise
            except Exception as e:
                raise ValueError(f"reward `{spec.name}`: cannot load its model: {e}") from e
        out.append(WeightedReward(name, float(spec.weight), reward))
    return out


def check_option(ok: bool, reward: str, option: str, value: Any, expected: str) -> None:
    """Raise the ValueError a factory gives for a bad option value."""
    if not ok:
        raise ValueError(f"reward `{reward}` option `{option}` = {value!r} is invalid: expected {expected}")


def _user_function(spec: str, options: dict[str, Any]) -> RewardFn | Reward:
    obj = import_function(spec, "reward", options)
    attr = spec.rpartition(":")[2]
    if not callable(obj):
        raise ValueError(f"reward {spec!r}: {attr} is a {type(obj).__name__}, not a function")
    try:
        signature = inspect.signature(obj.fn if isinstance(obj, Reward) else obj)
    except (TypeError, ValueError):  # some builtins hide their signature: trust them
        return obj
    try:
        signature.bind("completion", None)
    except TypeError as e:
        raise ValueError(
            f"reward {spec!r}: {attr}{signature} cannot be called as fn(completion, example): {e}"
        ) from None
    return obj


# --------------------------------------------------------------------------- format

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_LAYOUT = re.compile(r"\s*<think>.*</think>\s*<answer>.*</answer>\s*", re.DOTALL)


@register("format")
def format_reward(*, pass_score: float = 1.0, fail_score: float = 0.0) -> Reward:
    """`<think>...</think>` then `<answer>...</answer>` and nothing else (R1's layout).

    Whitespace around and between the blocks is allowed; each tag must appear exactly once.
    """

    def format(completion: str, example: Example) -> float:
        ok = all(completion.count(t) == 1 for t in _TAGS) and _LAYOUT.fullmatch(completion)
        return pass_score if ok else fail_score

    return Reward(format)


@register("tag_count")
def tag_count_reward() -> Reward:
    """0.25 per tag that appears exactly once and in order relative to the other such tags.

    A shaping reward for models that have not learned the layout yet: `<think> x </think> 7`
    gets 0.5; tags written in the wrong order earn nothing for the misplaced ones.
    """

    def tag_count(completion: str, example: Example) -> float:
        pos = [completion.find(t) if completion.count(t) == 1 else -1 for t in _TAGS]
        once = [i for i in range(4) if pos[i] >= 0]
        placed = [i for i in once if all((pos[j] < pos[i]) == (j < i) for j in once if j != i)]
        return 0.25 * len(placed)

    return Reward(tag_count)


# --------------------------------------------------------------------------- accuracy

@register("accuracy")
def accuracy_reward(*, correct_score: float = 1.0, wrong_score: float = 0.0, fallback: bool = True) -> Reward:
    """correct_score when the extracted answer equals the gold answer (math-verify), else wrong_score.
    fallback: without <answer> tags, read the last \\boxed{} or number (lenient); False: tags only."""
    check_option(isinstance(fallback, bool), "accuracy", "fallback", fallback, "true or false")

    def accuracy(completion: str, example: Example) -> float:
        return correct_score if is_correct(completion, example, fallback) else wrong_score

    return Reward(accuracy)


# --------------------------------------------------------------------------- length shaping

_UNITS = ("words", "chars", "tokens")


def length_measure(reward: str, unit: str, tokenizer: str | None) -> Callable[[str], int]:
    """How long a completion is: whitespace-separated words, characters, or tokens of the
    tokenizer saved in directory `tokenizer` (loaded now, so a bad path fails at build time)."""
    check_option(unit in _UNITS, reward, "unit", unit, " or ".join(_UNITS))
    if unit == "chars":
        return len
    if unit == "words":
        return lambda text: len(text.split())
    check_option(tokenizer is not None, reward, "tokenizer", tokenizer, "a tokenizer directory when unit=tokens")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except Exception as e:
        raise ValueError(f"reward `{reward}` option `tokenizer` = {tokenizer!r}: cannot load it ({e})") from e
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def _check_lengths(reward: str, max_length: Any) -> None:
    check_option(isinstance(max_length, int) and max_length >= 1, reward, "max_length", max_length, "an integer >= 1")


@register("overlong")
def overlong_reward(*, max_length: int, cache_length: int | None = None, unit: str = "words",
                    tokenizer: str | None = None) -> Reward:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), L = completion length:

        0                                  if L <= max_length - cache_length
        (max_length - cache_length - L) / cache_length   if that < L <= max_length (0 to -1)
        -1                                 if L > max_length

    cache_length defaults to max_length // 5 (DAPO: 4096 of 20480). Add it to a correctness
    reward; on its own it only says "shorter".
    """
    _check_lengths("overlong", max_length)
    cache = max(1, max_length // 5) if cache_length is None else cache_length
    check_option(isinstance(cache, int) and 1 <= cache <= max_length, "overlong", "cache_length", cache_length,
                 "an integer in [1, max_length]")
    measure = length_measure("overlong", unit, tokenizer)

    def overlong(completion: str, example: Example) -> float:
        length = measure(completion)
        if length <= max_length - cache:
            return 0.0
        if length <= max_length:
            return (max_length - cache - length) / cache
        return -1.0

    return Reward(overlong)


@register("cosine")
def cosine_reward(*, max_length: int, correct_at_0: float = 1.0, correct_at_max: float = 0.5,
                  wrong_at_0: float = -1.0, wrong_at_max: float = -0.5, exceed: float = -1.0,
                  unit: str = "words", tokenizer: str | None = None) -> Reward:
    """Cosine length-scaled correctness (Yeo et al. 2025, "Demystifying Long CoT", eq. 1):

        r(L) = end + (start - end) * (1 + cos(pi * L / max_length)) / 2,   L <= max_length
        r(L) = exceed,                                                     L >  max_length

    with (start, end) = (correct_at_0, correct_at_max) when `is_correct`, else (wrong_at_0,
    wrong_at_max). The defaults (open-r1's) make short correct answers best and short wrong
    answers worst, so a model unsure of its answer is nudged to think longer. Use it instead
    of `accuracy`, not with it: it already contains the correctness signal.
    """
    _check_lengths("cosine", max_length)
    measure = length_measure("cosine", unit, tokenizer)

    def cosine(completion: str, example: Example) -> float:
        length = measure(completion)
        if length > max_length:
            return exceed
        start, end = (correct_at_0, correct_at_max) if is_correct(completion, example) else (wrong_at_0, wrong_at_max)
        return end + (start - end) * (1.0 + math.cos(math.pi * length / max_length)) / 2.0

    return Reward(cosine)
