"""Checks that refuse or warn before a run wastes time: resources, the first-run probe, health, `grpo check`."""
