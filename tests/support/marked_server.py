"""`grpo serve-rollout` that leaves a marker file as each generation and each weight push begins,
so that tests/support/chaos_async.py can time its kills by events rather than by the clock.

    python -m tests.support.marked_server MARKS_DIR serve-rollout-argument...

It is the real server (grpo.serve.rollout_server.main, in its own process); only
RolloutService.generate and RolloutService.begin (a push's header has arrived) are wrapped to touch MARKS_DIR/<kind>-<pid>-<n>
first (kind: generate | push).
"""

import itertools
import os
import sys
from pathlib import Path

from grpo.serve import rollout_server


def marking(method, kind: str, marks: Path):
    counter = itertools.count()

    def wrapped(self, *args, **kwargs):
        (marks / f"{kind}-{os.getpid()}-{next(counter):05d}").touch()
        return method(self, *args, **kwargs)

    return wrapped


def main(marks: str, argv: list[str]) -> int:
    service = rollout_server.RolloutService
    service.generate = marking(service.generate, "generate", Path(marks))
    service.begin = marking(service.begin, "push", Path(marks))
    return rollout_server.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
