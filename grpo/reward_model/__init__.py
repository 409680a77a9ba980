"""Training reward models: `grpo train-rm`, process reward models, iterative RL."""
