"""Servers on loopback for tests: an ASGI app in a thread of the test process."""

import json
import threading
import time
import urllib.request

import uvicorn

from grpo.rollout import SamplingParams
from grpo.rollout.server_engine import ServerEngine


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1:`port` (0 = a free port) in a daemon thread."""

    def __init__(self, app, port=0):
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


# The rollout server's tests (serve/test_rollout_server*.py) share these.
TOKEN = "rollout-test-token-0123456789"
GREEDY = SamplingParams(1, 0.0, 1.0, 0, 12)
QUESTIONS = ["What is 3 + 4?", "What is 12 + 30 + 7? Think.", "1 + 1", "What is 5 + 5?"]


def health(url: str) -> dict:
    """The rollout server's /health reply."""
    return json.loads(urllib.request.urlopen(url + "/health", timeout=10).read())


def health_at(url: str, version: int, timeout: float = 60) -> dict:
    """/health once the server reports `version` (or the last reply after `timeout` s): a push is
    answered once its weights are staged, and the server swaps them in on its weight thread a
    moment later (its generations wait for that), so on a busy host the first reply can be older."""
    deadline = time.monotonic() + timeout
    reply = health(url)
    while reply["version"] != version and time.monotonic() < deadline:
        time.sleep(0.1)
        reply = health(url)
    return reply


def client(url, model, tokenizer, **kw):
    return ServerEngine(model, tokenizer, url=url, token=TOKEN, **{"server_timeout": 20, **kw})


def render(tokenizer):
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in QUESTIONS]


