"""RemoteReference: reference log-probs from a `grpo serve-ref` server (reference.url).

A drop-in for trainer.LocalReference: `.logprobs(batch) -> [N, C]` float32 on CPU, zeros on
padding. One HTTP request per training step carries the whole batch; the server splits it
into micro-batches. Connection errors, timeouts and 5xx answers are retried with exponential
backoff (a restarted server is waited for); 4xx answers (wrong token, a batch over the
server's limits) are not, since asking again cannot help.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import torch

from grpo.config import ReferenceConfig
from grpo.serve.common import error_text
from grpo.serve.protocol import HEALTH_PATH, LOGPROBS_PATH, decode_response, encode_request

log = logging.getLogger("grpo.serve")
RETRIED_STATUS = (408, 429)  # besides every 5xx


class ReferenceServerError(ValueError):
    """The reference server refused the request or stayed unreachable.

    A ValueError, like the config errors, because the fix is the user's (start the server,
    fix the URL or the token) and the CLI reports it in one line rather than a traceback.
    """


@dataclass
class RemoteReference:
    url: str  # base URL, e.g. http://127.0.0.1:8765
    token: str
    temperature: float
    timeout: float = 300.0
    max_retries: int = 6
    backoff: float = 1.0

    @classmethod
    def from_config(cls, cfg: ReferenceConfig, temperature: float) -> RemoteReference:
        token = os.environ.get(cfg.token_env, "")
        if not token:
            raise ValueError(f"reference.url = {cfg.url!r} is set but the environment variable {cfg.token_env} "
                             "(reference.token_env) holding the server's bearer token is empty or not set")
        return cls(cfg.url, token, temperature, cfg.timeout, cfg.max_retries, cfg.backoff)

    def logprobs(self, batch) -> torch.Tensor:  # [N, C]
        reply = self._post(encode_request(batch, self.temperature))
        try:
            return decode_response(reply, tuple(batch.completion_ids.shape))
        except ValueError as e:
            raise ReferenceServerError(f"reference server {self.url}: {e}") from None

    def vocab_size(self) -> int:
        """The served model's vocabulary size (its input embeddings), from GET /health: a distillation teacher
        must score the policy's token ids."""
        try:
            return int(json.loads(self._post(None, HEALTH_PATH))["vocab_size"])
        except (ValueError, KeyError, TypeError) as e:
            raise ReferenceServerError(f"reference server {self.url}: /health gave no vocab_size ({e})") from None

    def _post(self, body: bytes | None, path: str = LOGPROBS_PATH) -> bytes:
        """POST `body` to `path` (None: GET), retried as the module docstring says."""
        endpoint = self.url.rstrip("/") + path
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/octet-stream"}
        start, last = time.monotonic(), ""
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(endpoint, data=body, headers=headers,
                                             method="GET" if body is None else "POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    return reply.read()
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {error_text(e)}"
                if e.code < 500 and e.code not in RETRIED_STATUS:
                    raise ReferenceServerError(f"reference server {endpoint} refused the request: {last}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < self.max_retries:
                delay = self.backoff * 2**attempt
                log.warning("reference server %s: %s; retry %d/%d in %.1f s",
                            endpoint, last, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        raise ReferenceServerError(
            f"reference server {endpoint} failed {self.max_retries + 1} attempts over "
            f"{time.monotonic() - start:.0f} s (reference.max_retries={self.max_retries}); last failure: {last}"
        )

