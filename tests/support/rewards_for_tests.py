"""User reward functions loaded by file path in the trainer tests."""


def length_reward(completion, example):
    """Longer is better: varies within a group even for a random model, so gradients flow."""
    return len(completion) / 10.0


def character_steps(completion, example):
    """A step reward (config `steps: offsets`): every 3rd character ends a step scored by its
    length so far, so a random model's completions get steps that differ within a group."""
    return [(end, (end * 7 % 5) / 4) for end in range(3, len(completion) + 1, 3)]


def broken_reward(completion, example):
    raise RuntimeError("this reward is broken on purpose")


# --- misbehaving rewards for tests/e2e/test_bad_input.py: each failure is contained and counted


def nan_reward(completion, example):
    return float("nan")


def none_reward(completion, example):
    return None


def string_reward(completion, example):
    return "1.0"


def hanging_reward(completion, example):
    import time

    time.sleep(60)  # far past reward_timeout: abandoned on its daemon thread
    return 1.0


def constant_reward(completion, example):
    """The same score for everything: every group has zero reward variance."""
    return 1.0


def signalling(*, at_calls=(), signum=2, pause=0.2):
    """Factory: a length reward that sends this process `signum` on the given call numbers
    (1-based), as a user's Ctrl-C or a scheduler's SIGTERM would, in the middle of a step;
    then waits `pause` s, so the main thread handles it before a next signal could merge in."""
    import os
    import time

    calls = [0]

    def reward(completion, example):
        calls[0] += 1
        if calls[0] in at_calls:
            os.kill(os.getpid(), signum)
            time.sleep(pause)
        return len(completion) / 10.0

    return reward


def odd_answers_only(completion, example):
    """A length reward for questions with an odd answer, a constant for even ones: the even
    groups carry no signal (dynamic sampling drops them)."""
    return len(completion) / 10.0 if int(example.answer) % 2 else 1.0


def torch_hanging_reward(completion, example):
    """Never returns, and spends its time inside torch's native code: the kind of abandoned
    thread that crashed the interpreter at exit ("terminate called without an active exception")."""
    import torch

    x = torch.randn(256, 256)
    while True:
        x = torch.tanh(x @ x)


def answer_decides(completion, example):
    """Solved by answer: "1" always (1.0), "0" never (0.0), any other by its length (the length
    reward): prompts whose pass rates part quickly, for adaptive group sizes."""
    return {"1": 1.0, "0": 0.0}.get(example.answer, len(completion) / 10.0)
