"""The training step: the loop, collecting its batch, the update, the loss object, log-probs, teachers, checkpoints, signals."""
