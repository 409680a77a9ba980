"""User environments and tools for the multi-turn tests, loaded by import path like a user's."""

import time


class Echo:
    """Answers every turn with the same user message; the episode is done after `turns` turns
    (never, with turns=0)."""

    def __init__(self, reply: str = "Go on.", turns: int = 2):
        self.reply, self.turns, self.seen = reply, turns, 0

    def reset(self, example):
        return [dict(m) for m in example.prompt]

    def step(self, assistant_text):
        self.seen += 1
        return [{"role": "user", "content": self.reply}], self.turns > 0 and self.seen >= self.turns


class Broken(Echo):
    def step(self, assistant_text):
        raise RuntimeError("the simulator crashed")


def lookup(key: str) -> str:
    """Look a key up in a small table.

    Args:
        key: the key to look up
    """
    return {"pi": "3.14159", "e": "2.71828"}.get(key, "unknown")


def boom(x: int) -> str:
    """Always fails.

    Args:
        x: anything
    """
    raise RuntimeError(f"boom {x}")


def slow(seconds: float) -> str:
    """Sleeps.

    Args:
        seconds: how long
    """
    time.sleep(seconds)
    return "done"


class Unprintable:
    def __str__(self):
        raise ValueError("no text")


def unprintable(x: int) -> str:
    """Returns an object that cannot be shown.

    Args:
        x: anything
    """
    return Unprintable()
