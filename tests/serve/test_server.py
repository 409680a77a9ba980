"""The reference server (`grpo serve-ref`) and RemoteReference, on loopback with the tiny model."""

import http.client
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from grpo.compute.models import load_frozen
from grpo.config import ModelConfig, load_config
from grpo.serve.client import ReferenceServerError, RemoteReference
from grpo.serve.protocol import LOGPROBS_PATH, Limits, encode_request
from grpo.serve.server import make_app, serve
from grpo.training.trainer import LocalReference, Trainer
from grpo.trajectory import TokenSequences
from tests.support import free_port
from tests.support.servers import ServerThread

TOKEN = "test-token-0123456789abcdef"
TEMPERATURE = 0.7  # not 1, so a temperature lost on the way would show
LIMITS = Limits(max_body_bytes=64 * 1024, max_rows=64, max_tokens=4096)


@pytest.fixture(scope="module")
def ref_model(tiny_model_dir):
    return load_frozen(ModelConfig(path=str(tiny_model_dir)))


@pytest.fixture(scope="module")
def app(ref_model):
    return make_app(ref_model, TOKEN, LIMITS, micro_batch_size=3)  # 3: several micro-batches per request


@pytest.fixture(scope="module")
def server(app):
    s = ServerThread(app)
    yield s
    s.stop()


def make_batch(seed, N=8, P=10, C=7, vocab=300):
    """Random left-padded prompts and right-padded completions, as the rollout engine returns them."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, vocab, (N, P), generator=g)
    completion_ids = torch.randint(3, vocab, (N, C), generator=g)
    p_len = torch.randint(1, P + 1, (N,), generator=g)
    c_len = torch.randint(1, C + 1, (N,), generator=g)
    prompt_mask = (torch.arange(P) >= P - p_len[:, None]).long()  # [N, P] left padding
    completion_mask = (torch.arange(C) < c_len[:, None]).long()  # [N, C] right padding
    return TokenSequences(prompt_ids.masked_fill(prompt_mask == 0, 0), prompt_mask,
                          completion_ids.masked_fill(completion_mask == 0, 0), completion_mask)


def local_logprobs(model, batch):
    return LocalReference(model, 8, torch.device("cpu"), TEMPERATURE).logprobs(batch)


def client(url, token=TOKEN, **kw):
    return RemoteReference(url, token, TEMPERATURE, **{"timeout": 30, "max_retries": 0, "backoff": 0.1, **kw})


def post(port, body, token=TOKEN):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    conn.request("POST", LOGPROBS_PATH, body=body, headers=headers)
    reply = conn.getresponse()
    data = reply.read()
    conn.close()
    return reply.status, data


# --------------------------------------------------------------------------- results


def test_remote_equals_local_reference_logprobs(server, ref_model):
    batch = make_batch(0)
    ref = client(server.url)
    remote = ref.logprobs(batch)
    assert remote.dtype == torch.float32 and remote.shape == batch.completion_ids.shape
    torch.testing.assert_close(remote, local_logprobs(ref_model, batch), rtol=0, atol=1e-5)
    assert (remote[batch.completion_mask == 0] == 0).all()
    assert (remote[batch.completion_mask == 1] < 0).all()
    start = time.perf_counter()
    for _ in range(5):
        ref.logprobs(batch)
    print(f"reference request, 8 rows x (10 + 7) tokens, tiny model: "
          f"{(time.perf_counter() - start) / 5 * 1000:.1f} ms")


def test_eight_concurrent_clients_get_their_own_results(server, ref_model):
    batches = [make_batch(seed, N=2 + seed % 5) for seed in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: client(server.url).logprobs(b), batches))
    for batch, result in zip(batches, results, strict=True):
        torch.testing.assert_close(result, local_logprobs(ref_model, batch), rtol=0, atol=1e-5)


def test_health_needs_no_token(server, ref_model):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/health")
    reply = conn.getresponse()
    assert reply.status == 200
    vocab_size = ref_model.get_input_embeddings().num_embeddings  # a distillation teacher's check reads it
    assert json.loads(reply.read()) == {"status": "ok", "limits": LIMITS.as_dict(), "vocab_size": vocab_size}
    assert client(server.url).vocab_size() == vocab_size


# --------------------------------------------------------------------------- refusals


def test_missing_or_wrong_token_is_401(server):
    body = encode_request(make_batch(1), TEMPERATURE)
    for token in (None, "", "wrong", TOKEN[:-1], TOKEN + "x"):
        status, data = post(server.port, body, token)
        assert status == 401, token
        assert "token" in json.loads(data)["error"]
    start = time.monotonic()
    with pytest.raises(ReferenceServerError, match=r"refused the request: HTTP 401"):
        client(server.url, token="wrong", max_retries=3, backoff=5).logprobs(make_batch(1))
    assert time.monotonic() - start < 5  # a 4xx is not retried
    assert post(server.port, body)[0] == 200


def bad_bodies():
    good = encode_request(make_batch(2, N=2), TEMPERATURE)
    from safetensors.torch import load
    t = load(good)

    def without(name):
        return save({k: v for k, v in t.items() if k != name})

    def replaced(**kw):
        return save({k: v.contiguous() for k, v in {**t, **kw}.items()})

    p, c = t["prompt_ids"], t["completion_ids"]
    return {
        "not safetensors": (b"hello, I am not a tensor file", 400),
        "empty": (b"", 400),
        "pickle": (b"\x80\x04\x95" + b"\x00" * 40, 400),
        "truncated": (good[: len(good) // 2], 400),
        "missing completion_mask": (without("completion_mask"), 400),
        "missing temperature": (without("temperature"), 400),
        "float ids": (replaced(prompt_ids=p.float()), 400),
        "int32 mask": (replaced(completion_mask=t["completion_mask"].int()), 400),
        "1-D ids": (replaced(prompt_ids=p[0], prompt_mask=t["prompt_mask"][0]), 400),
        "rows disagree": (replaced(completion_ids=c[:1], completion_mask=t["completion_mask"][:1]), 400),
        "mask shape": (replaced(prompt_mask=t["prompt_mask"][:, 1:]), 400),
        "id too large": (replaced(completion_ids=c.clone().fill_(10**6)), 400),
        "negative id": (replaced(prompt_ids=p.clone().fill_(-1)), 400),
        "mask value 2": (replaced(completion_mask=t["completion_mask"] * 2), 400),
        "no prompt token": (replaced(prompt_mask=torch.zeros_like(p)), 400),
        "zero rows": (replaced(**{k: t[k][:0] for k in ("prompt_ids", "prompt_mask", "completion_ids",
                                                         "completion_mask")}), 400),
        "temperature 0": (replaced(temperature=torch.zeros(1, dtype=torch.float64)), 400),
        "temperature nan": (replaced(temperature=torch.full((1,), float("nan"), dtype=torch.float64)), 400),
        "temperature float32": (replaced(temperature=torch.ones(1)), 400),
        "too many rows": (encode_request(make_batch(3, N=65, P=2, C=2), 1.0), 413),
        "too many tokens": (encode_request(make_batch(3, N=40, P=60, C=50), 1.0), 413),
        "body too large": (good + b"\x00" * LIMITS.max_body_bytes, 413),
    }


@pytest.mark.parametrize("name", list(bad_bodies()))
def test_malformed_or_oversized_body_is_4xx_and_the_server_keeps_serving(server, ref_model, name):
    body, expected = bad_bodies()[name]
    status, data = post(server.port, body)
    assert status == expected, (name, data)
    assert json.loads(data)["error"]
    batch = make_batch(4)
    torch.testing.assert_close(client(server.url).logprobs(batch), local_logprobs(ref_model, batch),
                               rtol=0, atol=1e-5)


def test_no_token_no_server(ref_model, monkeypatch):
    with pytest.raises(ValueError, match="token"):
        make_app(ref_model, "")
    monkeypatch.delenv("GRPO_REF_TOKEN", raising=False)
    with pytest.raises(ValueError, match="GRPO_REF_TOKEN"):
        serve(None)  # refused before any model is loaded (None would be the bundled model)


# --------------------------------------------------------------------------- failures and retries


def test_client_waits_for_a_restarted_server(app, ref_model, caplog):
    first = ServerThread(app)
    port = first.port
    batch = make_batch(5)
    ref = client(first.url, max_retries=8, backoff=0.1)  # waits up to 0.1 * (2^8 - 1) = 25 s
    torch.testing.assert_close(ref.logprobs(batch), local_logprobs(ref_model, batch), rtol=0, atol=1e-5)
    first.stop()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(ref.logprobs, batch)  # the server is down: this call retries
        time.sleep(1.0)
        assert not pending.done()
        second = ServerThread(app, port=port)
        try:
            result = pending.result(timeout=30)
        finally:
            second.stop()
    torch.testing.assert_close(result, local_logprobs(ref_model, batch), rtol=0, atol=1e-5)
    assert any("retry" in r.getMessage() for r in caplog.records)


def test_unreachable_server_fails_with_the_url_and_last_failure():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ReferenceServerError, match=rf"{url}/v1/logprobs failed 3 attempts.*last failure: .*refused"):
        client(url, max_retries=2, backoff=0.01).logprobs(make_batch(6))


def test_client_needs_the_token_variable(monkeypatch):
    cfg = load_config(None, ["reference.url=http://127.0.0.1:1", "reference.token_env=MY_REF_TOKEN"])
    monkeypatch.delenv("MY_REF_TOKEN", raising=False)
    with pytest.raises(ValueError, match="MY_REF_TOKEN"):
        RemoteReference.from_config(cfg.reference, 1.0)
    monkeypatch.setenv("MY_REF_TOKEN", "abc")
    ref = RemoteReference.from_config(cfg.reference, 1.0)
    assert (ref.url, ref.token, ref.max_retries) == ("http://127.0.0.1:1", "abc", cfg.reference.max_retries)


# --------------------------------------------------------------------------- the trainer and the CLI


def test_training_with_a_remote_reference_logs_kl(server, tmp_path, tiny_model_dir, monkeypatch):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + 1?", "answer": str(a + 1)}) + "\n"
                            for a in range(10)))
    monkeypatch.setenv("GRPO_REF_TOKEN", TOKEN)
    cfg = load_config(None, [
        f"model.path={tiny_model_dir}", "task.source=file", f"task.path={data}", "task.num_eval=2",
        "rewards=[{name: format}]", "rollout.group_size=4", "rollout.max_new_tokens=6",
        f"rollout.temperature={TEMPERATURE}", "train.prompts_per_step=2", "train.micro_batch_size=4",
        "train.num_steps=1", "algorithm.beta=0.04", f"reference.url={server.url}", "eval.num_examples=0",
        "log.progress=false", "log.tensorboard=false", f"output_dir={tmp_path / 'run'}",
    ])
    trainer = Trainer.build(cfg)
    assert isinstance(trainer.reference, RemoteReference)  # no local reference model was loaded
    trainer.run()
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference


def test_cli_serve_ref_starts_and_answers(tiny_model_dir):
    port = free_port()
    env = {**os.environ, "GRPO_REF_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "grpo.cli", "serve-ref", "--model", str(tiny_model_dir),
                             "--port", str(port), "--device", "cpu"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
    try:
        batch = make_batch(7)
        ref = client(f"http://127.0.0.1:{port}", max_retries=9, backoff=0.1)  # waits out the model load
        expected = local_logprobs(load_frozen(ModelConfig(path=str(tiny_model_dir))), batch)
        torch.testing.assert_close(ref.logprobs(batch), expected, rtol=0, atol=1e-5)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode()
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught
    assert proc.returncode in (0, -15) and "Finished server process" in out, out


def test_the_servers_dtype_choices_are_the_weight_dtype_table(capsys):
    from grpo.compute import dtypes
    from grpo.serve import rollout_server, server, weights

    assert weights.DTYPES is dtypes.DTYPES  # the push's wire dtypes: one table
    for main in (server.main, rollout_server.main):
        with pytest.raises(SystemExit):
            main(["--dtype", "int8"])
        assert f"choose from {', '.join(map(repr, dtypes.DTYPE_NAMES))}" in capsys.readouterr().err
