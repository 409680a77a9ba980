"""The config tree in and out: YAML files, dotted overrides, type checks, the saved copy.

    cfg = load_config("configs/demo.yaml", ["algorithm.beta=0.04", "train.num_steps=20"])

grpo.config.schema holds the dataclass tree and its rules; this module builds it from
plain data (checking every name and type against the annotations, with the allowed values in
each error) and writes it back. `grpo.config` re-exports these functions.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from grpo.config.rules import Facts
from grpo.config.schema import Config


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, checking names and types recursively."""
    if not isinstance(data, dict):
        raise ValueError(f"config section `{prefix.rstrip('.') or '<root>'}` must be a mapping, got {data!r}")
    if hasattr(cls, "upgrade"):  # a section that still reads an older config's fields
        data = cls.upgrade(data)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        import difflib

        where = f"section `{prefix.rstrip('.')}`" if prefix else "the config"
        close = difflib.get_close_matches(unknown[0], sorted(names), n=1)
        hint = f"did you mean `{prefix}{close[0]}`? " if close else ""
        raise ValueError(
            f"unknown config field `{prefix}{unknown[0]}` in {where}; {hint}allowed: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, name + ".")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"config field `{name}` = {value!r} is invalid; allowed: {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ValueError(f"config field `{name}` = {value!r} is invalid; expected a list")
        return [_coerce(args[0], v, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config field `{name}` = {value!r} is invalid; expected a mapping")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # PyYAML reads `5e-6` (no dot) as a string; accept any float literal.
        try:
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(
            f"config field `{name}` = {value!r} is invalid; expected {tp.__name__}"
        )
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings to a nested dict; values are parsed as YAML scalars."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like `section.field=value`")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.constructor.ConstructorError as e:
            raise ValueError(f"override {item!r}: {_refused_tag(e)}") from None
        except RecursionError:
            raise ValueError(f"override {item!r}: value is nested too deeply to parse") from None
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: value is not valid YAML ({e})") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: `{part}` is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (optional), apply dotted overrides, build and validate the Config against
    this process (its WORLD_SIZE, the packages installed here)."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path)
    data = apply_overrides(data, list(overrides or []))
    return from_dict(Config, data).validate(Facts.here())


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"config file {str(p)!r} is a directory; expected a YAML file")
    if not p.is_file():
        raise ValueError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError(f"config file {str(p)!r} is nested too deeply to parse (lists or mappings "
                         "thousands of levels deep)") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        if isinstance(e, yaml.constructor.ConstructorError):
            raise ValueError(f"config file {str(p)!r} at{where}: {_refused_tag(e)}") from None
        raise ValueError(f"config file {str(p)!r} is not valid YAML at{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r} must hold a mapping at the top level")
    return data


def _refused_tag(e: yaml.constructor.ConstructorError) -> str:
    """safe_load builds only plain data; a tag such as !!python/object would build (and run) code."""
    tag = re.search(r"tag '([^']*)'", str(e.problem))
    shown = tag.group(1).replace("tag:yaml.org,2002:", "!!") if tag else "a tag"
    return (f"the YAML tag {shown!r} is refused: configs hold plain data only (mappings, lists, "
            "strings, numbers, booleans, null), and a tag like that would construct Python objects")


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config; atomic (temp file + rename), so a kill never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def describe(cls: type | None = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, help) for every field of `cls` (default: Config), for `--help-config`; the
    fields of a list's entries as `name[].field` (rewards[].weight, algorithm.aux_losses[].teacher_path)."""
    cls = cls or Config
    rows = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, prefix + f.name + ".")
        else:
            shown = to_dict(default) if dataclasses.is_dataclass(default) else default
            if isinstance(shown, list) and shown and dataclasses.is_dataclass(shown[0]):
                shown = [to_dict(x) for x in shown]
            rows.append((prefix + f.name, repr(shown), f.metadata.get("help", "")))
            item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
            if item is not None and dataclasses.is_dataclass(item):  # a list of entries: each entry's fields too
                rows += describe(item, prefix + f.name + "[].")
    return rows
