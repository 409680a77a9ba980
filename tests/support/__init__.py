"""What the tests share: tiny models and runs, servers, trajectories, and the reward and
environment files that configs name by path."""

import socket
from pathlib import Path

SUPPORT = Path(__file__).parent
REWARDS_FILE = SUPPORT / "rewards_for_tests.py"
ENVIRONMENTS_FILE = SUPPORT / "environments_for_tests.py"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
