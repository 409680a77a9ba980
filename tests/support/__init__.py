"""What the tests share: tiny models and runs, servers, trajectories, and the reward and
environment files that configs name by path."""

from pathlib import Path

SUPPORT = Path(__file__).parent
REWARDS_FILE = SUPPORT / "rewards_for_tests.py"
ENVIRONMENTS_FILE = SUPPORT / "environments_for_tests.py"
