"""docs/configuration.md, written from the fields' own help, checks and allowed values.

    python -m grpo.config.docs > docs/configuration.md

One table per section. tests/config/test_docs.py holds the committed file equal to what this
writes, so the reference cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from typing import Any, Literal

from grpo.config.io import to_dict
from grpo.config.schema import Config

HEADER = """# Configuration

Every field of the config tree, section by section: its default, what it allows and what it
means. A run reads a YAML file of these sections (`grpo train configs/demo.yaml`) and dotted
overrides after it (`grpo train configs/demo.yaml algorithm.beta=0.04 train.num_steps=20`);
`grpo train --help-config` prints the same help on the terminal. A wrong name or value stops
the run before any model loads, with an error naming the field and what it allows.

This file is generated from the code (`python -m grpo.config.docs > docs/configuration.md`,
grpo/config/docs.py); edit the help strings in grpo/config, not this file.
"""

TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Any: "any value"}


def _type_words(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return "null or " + _type_words(inner[0])
    if origin is list:
        return f"a list of: {_type_words(args[0])}"
    if origin is dict:
        return "a mapping"
    return TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))


def _allowed(f: dataclasses.Field, tp: Any) -> str:
    check = f.metadata.get("check")
    if check is None:
        return _type_words(tp)
    if typing.get_origin(tp) is list and typing.get_origin(typing.get_args(tp)[0]) is Literal:
        return f"{_type_words(tp)}; {check.expected}"  # the names, and the check across them
    return check.expected


def _default(f: dataclasses.Field) -> str:
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        value = [to_dict(x) for x in value]
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    """Markdown table cell: `|` escaped; `<` escaped outside code spans (else it reads as HTML)."""
    parts = text.replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else re.sub(r"<", r"\\<", p) for i, p in enumerate(parts))


def _sections(cls: type, name: str, help_text: str) -> list[tuple[str, str, type]]:
    """(dotted section name, its help, its class) for `cls` and every section below it."""
    found = [(name, help_text, cls)]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, prefix = hints[f.name], f"{name}." if name else ""
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(tp):
            found += _sections(tp, prefix + f.name, f.metadata["help"])
        elif item is not None and dataclasses.is_dataclass(item):
            found += _sections(item, f"{prefix}{f.name}[]", f"Each entry of `{f.name}`: {f.metadata['help']} "
                                                             f"Default: {_default(f)}.")
    return found


def _table(name: str, cls: type) -> list[str]:
    rows = ["| Field | Default | Allowed | Meaning |", "|---|---|---|---|"]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(tp) or (item is not None and dataclasses.is_dataclass(item)):
            continue  # a section of its own below
        dotted = f"{name}.{f.name}" if name else f.name
        cells = [f"`{dotted}`", _default(f), _cell(_allowed(f, tp)), _cell(f.metadata["help"])]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def markdown() -> str:
    out = [HEADER]
    for name, help_text, cls in _sections(Config, "", ""):
        out += [f"## {name or 'Top level'}", "", _cell(help_text or "Fields outside any section."), ""]
        out += [*_table(name, cls), ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(), end="")
