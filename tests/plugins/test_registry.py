"""The one table idiom behind rewards, engines, trackers, tools and task sources."""

import sys

import pytest

from grpo.plugins.registry import Registry


def test_entries_by_decorator_and_directly_in_registration_order():
    table = Registry("widget", "parts.widget")

    @table.register("b")
    def make_b():
        return "b"

    assert table.register("a", len) is len  # a direct entry comes back as given
    assert make_b() == "b"  # the decorator returns the function unchanged
    assert tuple(table) == ("b", "a") and list(table) == ["b", "a"] and len(table) == 2
    assert ("a" in table, "c" in table) == (True, False)
    assert table.get("b") is make_b and table["a"] is len
    table.register("b", max)  # again: the entry is replaced, its place kept
    assert tuple(table) == ("b", "a") and table.get("b") is max


def test_a_lazy_entry_is_imported_on_first_get_only():
    sys.modules.pop("tests.plugins.lazy_target", None)
    table = Registry("widget", "parts.widget")
    table.register("lazy", "tests.plugins.lazy_target:VALUE")
    assert "tests.plugins.lazy_target" not in sys.modules  # listing it imports nothing
    assert tuple(table) == ("lazy",)
    assert table.get("lazy") == 42 and "tests.plugins.lazy_target" in sys.modules
    assert table.get("lazy") == 42  # resolved once, then kept


def test_a_lazy_entry_that_cannot_be_imported_raises_the_import_error():
    table = Registry("widget", "parts.widget")
    table.register("gone", "no_such_module_xyz:thing")
    with pytest.raises(ModuleNotFoundError, match="no_such_module_xyz"):
        table.get("gone")


def test_an_unknown_name_names_the_field_the_kind_and_the_registered_names():
    table = Registry("task source", "task.source")
    for name in ("reasoning_gym", "file", "hub"):
        table.register(name, "unused:attr")
    with pytest.raises(ValueError, match=r"^config field `task.source` = 'hf' is invalid; allowed: reasoning_gym, "
                                         r"file, hub \(the registered task sources\)$"):
        table.get("hf")
    with pytest.raises(ValueError, match="allowed:  \\(the registered"):
        Registry("tracker", "log.report_to")["x"]
