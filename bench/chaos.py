"""Kill a training run at random moments and check that nothing is ever lost.

    .venv/bin/python bench/chaos.py --kills 10          # the full version (tests/e2e/test_chaos.py, slow)
    .venv/bin/python bench/chaos.py --kills 3 --sigint  # the short version run with the test suite

The harness is tests/support/chaos.py (the suite runs the same code); see its docstring.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.chaos import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
