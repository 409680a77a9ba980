"""Per-field rules, written beside the field they check:

    group_size: int = doc(8, "G: completions sampled per prompt.", check=at_least(2, why="groups need two samples"))

`doc` attaches the help text and the check to the dataclass field; `check_fields` walks a tree
and raises the first failure as `config field `rollout.group_size` = 1 is invalid: expected an
integer >= 2 (groups need two samples)`. The expected text is also what docs/configuration.md
lists as the field's allowed values. Rules across fields live in grpo.config.rules.
"""

from __future__ import annotations

import copy
import dataclasses
import string
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from grpo.config.values import CHAT, STEP_SPLITS, TAG, TEMPLATE_PRESETS, TOOL_NAMES

INTEGER, NUMBER, SECONDS = "an integer", "a number", "a number of seconds"


@dataclass(frozen=True)
class Check:
    """ok(value) -> bool; `expected` is what the error and the docs say is allowed, `detail`
    (optional) what is wrong with this particular value."""

    ok: Callable[[Any], bool]
    expected: str
    detail: Callable[[Any], str | None] | None = None

    def error(self, name: str, value: Any) -> str | None:
        if self.ok(value):
            return None
        detail = self.detail(value) if self.detail else None
        expected = f"{self.expected}; {detail}" if detail else self.expected
        return f"config field `{name}` = {value!r} is invalid: expected {expected}"


def doc(default: Any, help: str, check: Check | None = None, **kw: Any) -> Any:
    """A dataclass field with its documentation and its check attached (mutable defaults via factory)."""
    metadata = {"help": help, "check": check}
    if isinstance(default, list | dict) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


def _because(text: str, why: str) -> str:
    return f"{text} ({why})" if why else text


def at_least(low: float, what: str = INTEGER, why: str = "") -> Check:
    return Check(lambda v: v >= low, _because(f"{what} >= {low}", why))


def above(low: float, what: str = NUMBER) -> Check:
    return Check(lambda v: v > low, f"{what} > {low}")


def within(interval: str) -> Check:
    """within("[0, 1)"): a number in that interval, brackets as in mathematics."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    closed_low, closed_high = interval[0] == "[", interval[-1] == "]"

    def ok(v: float) -> bool:
        return (low <= v if closed_low else low < v) and (v <= high if closed_high else v < high)

    return Check(ok, f"a number in {interval}")


def optional(check: Check) -> Check:
    """null, or what `check` allows."""
    return Check(lambda v: v is None or check.ok(v), f"null or {check.expected}")


def expect(ok: Callable[[Any], bool], expected: str) -> Check:
    return Check(ok, expected)


# --------------------------------------------------------------------------- value rules


def split_names() -> str:
    return ", ".join([*STEP_SPLITS, f"{TAG}<text>"])


def check_split(split: Any) -> str | None:
    """None when `split` is a step split (rewards[].steps, @step_reward), else what is wrong with it."""
    if isinstance(split, str) and (split in STEP_SPLITS or (split.startswith(TAG) and len(split) > len(TAG))):
        return None
    return f"{split!r} is not a step split; allowed: {split_names()}"


TEMPLATE_HELP = (f"'{CHAT}' (the tokenizer's chat template), a preset ({', '.join(TEMPLATE_PRESETS)}) or a "
                 "plain-text template holding {question} once and optionally {system} before it (literal braces "
                 "doubled)")


def template_error(template: str) -> str | None:
    """Why `template` is not a valid task.template value, or None when it is."""
    if template == CHAT or template in TEMPLATE_PRESETS:
        return None
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        return f"it does not parse as a template ({e})"
    if fields.count("question") != 1:
        return "it must hold {question} exactly once"
    unknown = sorted(set(fields) - {"system", "question"})
    if unknown:
        return f"it names unknown placeholders {unknown}"
    if fields.count("system") > 1 or ("system" in fields and fields.index("system") > fields.index("question")):
        return "{system} may appear once, before {question}"
    return None


def _http_url(url: str | None) -> bool:
    if url is None:
        return True
    parsed = urllib.parse.urlsplit(url)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


STEP_SPLIT = optional(Check(lambda v: check_split(v) is None, f"a step split: {split_names()}"))
TEMPLATE = Check(lambda v: template_error(v) is None, TEMPLATE_HELP, template_error)
HTTP_URL = expect(_http_url, "null or an http(s)://host:port URL")
ENV_NAME = expect(bool, "an environment variable name")
TOOLS = expect(lambda specs: all(s in TOOL_NAMES or ":" in s for s in specs),
               f"built-in tools ({', '.join(TOOL_NAMES)}) or `module:function` / `file.py:function`")


# --------------------------------------------------------------------------- the walk


def check_fields(section: Any, prefix: str = "") -> None:
    """Raise the first failing field check of `section` and its subsections, in field order.
    A section with `ACTIVE = "<field>"` checks its other fields only when that one is set:
    they are read only then."""
    active = getattr(section, "ACTIVE", None)
    for f in dataclasses.fields(section):
        if active and f.name != active and not getattr(section, active):
            continue
        value, name = getattr(section, f.name), prefix + f.name
        check = f.metadata.get("check")
        error = check.error(name, value) if check else None
        if error:
            raise ValueError(error)
        if dataclasses.is_dataclass(value):
            check_fields(value, name + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_fields(item, f"{name}[{i}].")
