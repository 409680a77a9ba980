"""`grpo serve-ref` under load (bench/serve_load.py, short): correctness only, never timing.

Concurrent clients on keep-alive connections each get their own, right log-probs while slow
clients (a byte at a time, body or headers) are cut off by the server's --read-timeout
without an answer and broken clients hang up mid-request again and again; the server stays
up and logs no traceback. The figures of the long run are in bench/RESULTS.md.
"""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "serve_load.py"


def test_concurrent_slow_and_broken_clients(tmp_path):
    out = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--clients", "8", "--requests", "5", "--rows", "8",
                           "--prompt-tokens", "32", "--completion-tokens", "32", "--slow", "2", "--slow-headers",
                           "1", "--broken", "2", "--read-timeout", "5", "--workdir", str(tmp_path / "work"),
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert out.exists(), proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert proc.returncode == 0 and summary["ok"], json.dumps(summary, indent=1)
    assert summary["correct"] == 40 and summary["wrong"] == 0 and not summary["failed"]
    assert summary["slow_clients_cut_off"] == 3 and summary["answered_while_slow_clients_connected"] > 0
    assert summary["broken_hangups"] > 0 and summary["answered_after"] and summary["server_tracebacks"] == 0
