"""One table idiom for every extension point: rewards, engines, trackers, tools, task sources.

    SOURCES = Registry("task source", "task.source")

    @SOURCES.register("file")                                   # by decorator
    def build_file_task(cfg): ...

    SOURCES.register("hub", "grpo.tasks.files:build_file_task")  # lazy: imported on first get
    SOURCES.get("hub")         # the object (its module imported now, once)
    tuple(SOURCES)             # ("file", "hub"): the names, in registration order
    "file" in SOURCES          # True

A `"module:attr"` string entry is imported on first `get`, so a table can list entries whose
modules need transformers or vllm without importing them. Such entries are ours, not user
input, so an import error propagates as it is (user objects by path: grpo.plugins.importing).
The config spells each table's names itself; a test holds its Literal equal to `tuple(table)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import import_module
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind; `kind` and the config `field` that picks one name the errors."""

    def __init__(self, kind: str, field: str) -> None:
        self.kind, self.field = kind, field
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, entry: T | str | None = None) -> Any:
        """Add `entry` (an object, or a `"module:attr"` string imported on first use) under
        `name`; without an entry, a decorator that registers what it decorates and returns it
        unchanged. Registering a name again replaces its entry and keeps its place."""
        if entry is not None:
            self._entries[name] = entry
            return entry

        def deco(obj: T) -> T:
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The entry registered as `name`; ValueError naming the field, the kind and the names."""
        if name not in self._entries:
            raise ValueError(f"config field `{self.field}` = {name!r} is invalid; allowed: {', '.join(self)} "
                             f"(the registered {self.kind}s)")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = self._entries[name] = getattr(import_module(module), attr)
        return entry  # type: ignore[return-value]

    __getitem__ = get  # `TRACKERS[name]` reads as it did when the table was a dict

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"
