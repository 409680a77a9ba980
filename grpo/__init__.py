"""grpo: Group Relative Policy Optimization on verifiable rewards."""
