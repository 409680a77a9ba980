"""The training step: the loop, the update, the loss object, log-probs, checkpoints, signals."""
