"""What `grpo serve-rollout` with default options listens on, read from /proc/net/tcp{,6} for the
server's own sockets, after a push and while another push is half sent: the HTTP port on
loopback and nothing else (no rendezvous store, no gloo pair sockets)."""

import http.client
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.support import free_port
from tests.support.servers import TOKEN, client, health_at
from tests.support.servers import health as server_health

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket the process holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    out = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                out.append((str(ipaddress.ip_address(raw)), int(port, 16)))
    return out


def health(port):
    return server_health(f"http://127.0.0.1:{port}")


def test_default_server_listens_only_on_its_loopback_http_port(tiny_model_dir):
    port = free_port()
    env = {**os.environ, "GRPO_ROLLOUT_TOKEN": TOKEN, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    server = subprocess.Popen([sys.executable, "-m", "grpo", "serve-rollout", "--model", str(tiny_model_dir),
                               "--port", str(port), "--engine", "shared_prefix"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health(port)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        engine = client(f"http://127.0.0.1:{port}", model, AutoTokenizer.from_pretrained(tiny_model_dir))
        engine.sync_weights(model, 1)  # a whole push
        assert health_at(f"http://127.0.0.1:{port}", 1)["version"] == 1
        assert listening(server.pid) == [("127.0.0.1", port)]
        # a push without the token changes nothing
        with torch.no_grad():
            model.lm_head.weight.add_(1.0)
        from grpo.rollout.weights import unique_weights
        from grpo.serve.weights import body_chunks, body_size

        named = list(unique_weights(model))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.putrequest("POST", "/v1/weights")
        conn.putheader("Content-Length", str(body_size(named, 2)))
        conn.endheaders()
        assert conn.getresponse().status == 401
        conn.close()
        assert health(port)["version"] == 1
        # while a push is half sent (a push session open), still nothing else listens
        chunks = list(body_chunks(named, 2))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.putrequest("POST", "/v1/weights")
        conn.putheader("Authorization", f"Bearer {TOKEN}")
        conn.putheader("Content-Length", str(body_size(named, 2)))
        conn.endheaders()
        for chunk in chunks[: len(chunks) // 2]:
            conn.send(chunk)
        assert listening(server.pid) == [("127.0.0.1", port)]
        for chunk in chunks[len(chunks) // 2 :]:
            conn.send(chunk)
        assert conn.getresponse().status == 200
        conn.close()
        deadline = time.monotonic() + 60
        while health(port)["version"] != 2:  # swapped in between two generations
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        server.kill()
        server.wait()
