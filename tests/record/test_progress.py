"""The progress a person reads: every field at 80 columns in a terminal, plain lines in a log."""

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import textwrap

from grpo.record.logging import RunLogger

METRICS = {"reward/mean": 0.625, "accuracy": 0.125, "format": 0.5, "kl": 0.016, "time/step": 11.1}
FIELDS = ("reward 0.625", "acc 0.125", "fmt 0.5", "kl 0.016", "s/step 11.1", "eta")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def test_every_field_is_shown_at_80_columns_in_a_terminal(tmp_path):
    script = textwrap.dedent(f"""
        from grpo.record.logging import RunLogger
        with RunLogger({str(tmp_path / "run")!r}, 24) as log:
            log.evaluating(50, 100)
            for step in (1, 2, 3):
                log.log_step(step, {METRICS!r})
        print("DONE", flush=True)
    """)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")} | {"TERM": "xterm"}
    child = subprocess.Popen([sys.executable, "-c", script], stdin=slave, stdout=slave, stderr=slave, env=env,
                             close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    child.wait(timeout=60)
    os.close(master)
    screen = ANSI.sub("\n", b"".join(chunks).decode("utf-8", "replace"))
    assert child.returncode == 0 and "DONE" in screen, screen
    assert "evaluating 50/100" in screen
    last = screen[screen.rindex("step 3/24"):]  # the final frame
    for field in FIELDS:
        assert field in last, (field, last)
    assert "…" not in last and all(len(line) <= 80 for line in last.splitlines())


def test_a_log_file_gets_one_plain_line_per_step(tmp_path, capsys):
    with RunLogger(tmp_path / "run", 3) as log:  # stderr is not a terminal under pytest
        log.evaluating(0, 4)
        for step in (1, 2, 3):
            log.log_step(step, METRICS)
    lines = capsys.readouterr().err.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["1/3", "2/3", "3/3"]
    assert all(field in s for s in steps for field in FIELDS)
    assert "evaluating 0/4 held-out examples" in lines
