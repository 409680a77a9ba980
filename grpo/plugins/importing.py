"""Load a user object named in the config by import path: the one implementation.

    import_object("my_pkg.rewards:score", "reward")      # a module on sys.path
    import_object("path/to/tools.py:lookup", "tool")     # a Python file, imported once

`what` names the kind of object in every error, so a bad spec reads
`reward 'x.py:f': file '/abs/x.py' does not exist` or `tool 'm:g': 'm' has no attribute 'g'`.
A target that ends in `.py` or contains a path separator is a file; anything else is a module.
The attribute may be dotted (`module:Class.method`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

__all__ = ["import_object"]


def import_object(spec: str, what: str) -> Any:
    """The object `spec` (`module.path:attr` or `path/to/file.py:attr`) names; ValueError if none."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ValueError(f"{what} {spec!r}: expected `module.path:function` or `path/to/file.py:function`")
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _import_file(spec, what, Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise ValueError(f"{what} {spec!r}: cannot import module {target!r}: {type(e).__name__}: {e}") from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec!r}: {target!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def import_function(spec: str, what: str, options: dict[str, Any]) -> Any:
    """`import_object`, then, when `options` are given, the attribute called as a factory
    `attr(**options)` that returns the function (rewards and tools take options this way)."""
    obj = import_object(spec, what)
    if not options:
        return obj
    attr = spec.rpartition(":")[2]
    try:
        return obj(**options)
    except Exception as e:
        raise ValueError(f"{what} {spec!r}: calling {attr}(**{options!r}) as a factory failed: {e}") from e


def _import_file(spec: str, what: str, path: Path) -> Any:
    """Import a .py file once (cached in sys.modules under a name derived from its path).

    The cache key is the resolved path, not `what`, so a file that holds both rewards and
    tools is imported once and its module-level state is shared.
    """
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"{what} {spec!r}: file {str(path)!r} does not exist")
    name = f"_grpo_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"{what} {spec!r}: cannot import {str(path)!r} as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ValueError(f"{what} {spec!r}: importing {str(path)!r} failed: {type(e).__name__}: {e}") from e
    return module


class Registered:
    """Functions handed over as Python objects (grpo.api), under names that say what they were:
    `python:<qualified name> (<file>:<line>)`, with `#2`, `#3` for different objects that would
    share one. The config holds the name; `get` gives the object back in this process."""

    def __init__(self) -> None:
        self.by_name: dict[str, Any] = {}

    def register(self, fn: Any, named_after: Any = None) -> str:
        """`fn`'s name (that of `named_after` when given: the function a wrapper holds)."""
        base = callable_name(fn if named_after is None else named_after)
        name, k = base, 2
        while name in self.by_name and self.by_name[name] is not fn:
            name, k = f"{base}#{k}", k + 1
        self.by_name[name] = fn
        return name

    def get(self, name: str) -> Any | None:
        return self.by_name.get(name)


def callable_name(fn: Any) -> str:
    """`python:<qualified name> (<file>:<line>)`, the record of a function given as an object."""
    import inspect

    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    try:
        where = f"{inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}"
    except (TypeError, OSError):
        where = "source unknown"
    return f"python:{qualname} ({where})"
