"""User reward functions loaded by file path in the trainer tests."""


def length_reward(completion, example):
    """Longer is better: varies within a group even for a random model, so gradients flow."""
    return len(completion) / 10.0


def broken_reward(completion, example):
    raise RuntimeError("this reward is broken on purpose")
