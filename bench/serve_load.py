"""Load on `grpo serve-ref`: many clients at once, slow ones, broken ones; memory and latency.

    .venv/bin/python bench/serve_load.py                          # 32 clients x 50 requests (bench/RESULTS.md)
    .venv/bin/python bench/serve_load.py --clients 8 --requests 5 --read-timeout 5   # the CI version

1. The server runs as the real CLI (`python -m grpo.cli serve-ref`) on loopback, serving a
   tiny random Llama (tests/support/tiny.py), in its own process so its memory can be read
   (/proc/PID/status: VmRSS sampled every 50 ms, VmHWM the peak).
2. Slow clients connect first and never finish: --slow send their body a byte at a time,
   --slow-headers their headers a byte at a time. Each must be cut off by the server (it
   closes the connection) without ever getting an answer.
3. Then --clients threads each send --requests requests of a realistic size (--rows rows of
   --prompt-tokens + --completion-tokens) on one keep-alive connection, checking every answer
   against log-probs computed here with the same code (atol 1e-5); meanwhile --broken clients
   each send half a request and hang up, again and again.
4. The answer: requests per second, p50 / p99 latency, the server's RSS after a warm-up, at
   the end, and its peak; how long the slow clients lasted; whether everything was right.
   The JSON's `ok` is about correctness only (every well-formed request answered right, every
   slow client cut off unanswered, answers served while they were connected, no traceback in
   the server's log); the timings are reported, never judged.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "serve-load-token-0123456789"
TEMPERATURE = 0.7


def tiny_model(work: Path) -> Path:
    path = work / "tiny"
    if not (path / "config.json").exists():
        sys.path.insert(0, str(ROOT))  # the checkout's tests.support
        from tests.support.tiny import make_tiny_model_dir

        make_tiny_model_dir(path)
    return path


def make_batches(num: int, rows: int, prompt: int, completion: int, vocab: int):
    """`num` different left-padded prompt / right-padded completion batches, as the trainer sends."""
    import torch

    from grpo.trajectory import TokenSequences

    batches = []
    for seed in range(num):
        g = torch.Generator().manual_seed(seed)
        p_len = torch.randint(1, prompt + 1, (rows,), generator=g)
        c_len = torch.randint(1, completion + 1, (rows,), generator=g)
        p_mask = (torch.arange(prompt) >= prompt - p_len[:, None]).long()  # [N, P]
        c_mask = (torch.arange(completion) < c_len[:, None]).long()  # [N, C]
        p_ids = torch.randint(3, vocab, (rows, prompt), generator=g).masked_fill(p_mask == 0, 0)
        c_ids = torch.randint(3, vocab, (rows, completion), generator=g).masked_fill(c_mask == 0, 0)
        batches.append(TokenSequences(p_ids, p_mask, c_ids, c_mask))
    return batches


class Memory(threading.Thread):
    """Samples the server's resident memory (MiB) until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def read(self, field: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def run(self):
        while not self.stop.wait(0.05):
            self.samples.append((time.monotonic(), self.read("VmRSS")))


def wait_until_serving(port: int, proc, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not answer /health within {timeout:g} s")


def request_head(body_len: int) -> bytes:
    from grpo.serve.protocol import LOGPROBS_PATH

    return (f"POST {LOGPROBS_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {body_len}\r\n\r\n").encode()


def slow_client(port: int, body: bytes, headers_too: bool, out: dict) -> None:
    """Send a request a byte at a time (every 20 ms) until the server closes the connection."""
    data = request_head(len(body)) + body
    start = 0 if headers_too else len(request_head(len(body)))
    sock = socket.create_connection(("127.0.0.1", port))
    out["connected"] = time.monotonic()
    try:
        sock.sendall(data[:start])
        for i in range(start, len(data)):
            sock.sendall(data[i : i + 1])
            time.sleep(0.02)
        out["answer"] = sock.recv(100)  # it sent the whole request: not cut off
    except OSError as e:  # the server closed the connection: a reset or a broken pipe
        out["error"] = type(e).__name__
    finally:
        out["cut"] = time.monotonic()
        sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server has closed (reads EOF or a reset), False if it still waits."""
    sock.settimeout(0.0)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def broken_client(port: int, body: bytes, stop: threading.Event, out: dict) -> None:
    """Half a request, then hang up; again and again until stopped."""
    while not stop.is_set():
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request_head(len(body)) + body[: len(body) // 2])
        out["hangups"] = out.get("hangups", 0) + 1
        time.sleep(0.1)


def load_client(port: int, bodies, expected, requests: int, offset: int, out: dict) -> None:
    import torch

    from grpo.serve.protocol import LOGPROBS_PATH, decode_response

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"}
    for r in range(requests):
        k = (offset + r) % len(bodies)
        began = time.monotonic()
        try:
            conn.request("POST", LOGPROBS_PATH, body=bodies[k], headers=headers)
            reply = conn.getresponse()
            data = reply.read()
        except (OSError, http.client.HTTPException) as e:
            out["failed"].append(f"{type(e).__name__}: {e}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            continue
        done = time.monotonic()
        if reply.status != 200:
            out["failed"].append(f"HTTP {reply.status}: {data[:200]!r}")
            continue
        got = decode_response(data, tuple(expected[k].shape))
        out["latencies"].append(done - began)
        out["answered_at"].append(done)
        out["correct" if torch.allclose(got, expected[k], rtol=0, atol=1e-5) else "wrong"] += 1
    conn.close()


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def run(ns, work: Path) -> dict:
    import torch

    from grpo.compute.models import load_frozen
    from grpo.config import ModelConfig
    from grpo.serve.protocol import encode_request
    from grpo.training.logprobs import LocalReference

    model_dir = tiny_model(work)
    model = load_frozen(ModelConfig(path=str(model_dir), device="cpu"))
    vocab = model.get_input_embeddings().num_embeddings
    batches = make_batches(ns.distinct, ns.rows, ns.prompt_tokens, ns.completion_tokens, vocab)
    reference = LocalReference(model, 16, torch.device("cpu"), TEMPERATURE)
    expected = [reference.logprobs(b) for b in batches]
    bodies = [encode_request(b, TEMPERATURE) for b in batches]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRPO_REF_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-m", "grpo.cli", "serve-ref", "--model", str(model_dir), "--device", "cpu",
         "--port", str(port), "--read-timeout", str(ns.read_timeout), "--max-connections", str(ns.max_connections)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "w"), cwd=ROOT)
    try:
        wait_until_serving(port, server)
        memory = Memory(server.pid)
        memory.start()
        warm = {"latencies": [], "answered_at": [], "failed": [], "correct": 0, "wrong": 0}
        load_client(port, bodies, expected, ns.distinct, 0, warm)  # every shape once: the allocator warms up
        rss_warm = memory.read("VmRSS")

        slow = [{} for _ in range(ns.slow + ns.slow_headers)]
        slow_threads = [threading.Thread(target=slow_client, args=(port, bodies[0], i >= ns.slow, out), daemon=True)
                        for i, out in enumerate(slow)]
        for t in slow_threads:
            t.start()
        while not all("connected" in out for out in slow):
            time.sleep(0.01)
        stop_broken = threading.Event()
        broken = [{} for _ in range(ns.broken)]
        broken_threads = [threading.Thread(target=broken_client, args=(port, bodies[0], stop_broken, out), daemon=True)
                          for out in broken]
        for t in broken_threads:
            t.start()

        outs = [{"latencies": [], "answered_at": [], "failed": [], "correct": 0, "wrong": 0} for _ in range(ns.clients)]
        threads = [threading.Thread(target=load_client, args=(port, bodies, expected, ns.requests, i * 7, out))
                   for i, out in enumerate(outs)]
        began = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - began
        stop_broken.set()
        for t in [*broken_threads, *slow_threads]:
            t.join(ns.read_timeout + 60)
        after = load_client_once(port, bodies, expected)  # still serving after all of it
        rss_end = memory.read("VmRSS")
        peak = memory.read("VmHWM")
        memory.stop.set()
    finally:
        server.terminate()
        server.wait(30)

    errors_logged = (work / "server.log").read_text().count("Traceback")
    latencies = [x for o in outs for x in o["latencies"]]
    answered_at = [x for o in outs for x in o["answered_at"]]
    first_cut = min((out["cut"] for out in slow), default=float("inf"))
    total = ns.clients * ns.requests
    summary = {
        "clients": ns.clients, "requests_per_client": ns.requests,
        "request": f"{ns.rows} rows x ({ns.prompt_tokens} + {ns.completion_tokens}) tokens, "
                   f"{len(bodies[0]) / 1024:.0f} KiB",
        "requests": total, "correct": sum(o["correct"] for o in outs), "wrong": sum(o["wrong"] for o in outs),
        "failed": [f for o in outs for f in o["failed"]][:5],
        "requests_per_s": round(total / elapsed, 1),
        "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "server_rss_warm_mib": round(rss_warm, 1), "server_rss_end_mib": round(rss_end, 1),
        "server_peak_rss_mib": round(peak, 1),
        "slow_clients": len(slow), "slow_clients_cut_off": sum("answer" not in out for out in slow),
        "slow_clients_lasted_s": [round(out["cut"] - out["connected"], 2) for out in slow],
        "answered_while_slow_clients_connected": sum(t < first_cut for t in answered_at),
        "broken_clients": ns.broken, "broken_hangups": sum(out.get("hangups", 0) for out in broken),
        "answered_after": after,
        "server_tracebacks": errors_logged,
        "read_timeout_s": ns.read_timeout,
    }
    summary["ok"] = (summary["correct"] == total and summary["slow_clients_cut_off"] == len(slow)
                     and (not slow or summary["answered_while_slow_clients_connected"] > 0) and after
                     and not errors_logged)
    return summary


def load_client_once(port, bodies, expected) -> bool:
    out = {"latencies": [], "answered_at": [], "failed": [], "correct": 0, "wrong": 0}
    load_client(port, bodies, expected, 1, 0, out)
    return out["correct"] == 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--rows", type=int, default=16, help="rows per request (prompts x group size)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--completion-tokens", type=int, default=256)
    parser.add_argument("--distinct", type=int, default=8, help="different batches, each checked")
    parser.add_argument("--slow", type=int, default=3, help="clients sending their body a byte at a time")
    parser.add_argument("--slow-headers", type=int, default=1, help="clients sending their headers a byte at a time")
    parser.add_argument("--broken", type=int, default=3, help="clients hanging up mid-request, repeatedly")
    parser.add_argument("--read-timeout", type=float, default=10.0, help="the server's --read-timeout")
    parser.add_argument("--max-connections", type=int, default=64, help="the server's --max-connections")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the tiny model here (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    ns = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the expected log-probs; the server process picks its own
    with tempfile.TemporaryDirectory(prefix="grpo-serve-load-") as tmp:
        work = ns.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        summary = run(ns, work)
    text = json.dumps(summary, indent=1)
    print(text)
    if ns.json:
        ns.json.write_text(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
