"""A module the registry test imports lazily (it must not be imported before the first get)."""

VALUE = 42
