"""The rollout server (`grpo serve-rollout`), its engine (rollout.engine=server) and asynchronous
generation (rollout.max_staleness), on loopback with the tiny model."""

import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.config import load_config
from grpo.rollout import SamplingParams, SharedPrefixEngine
from grpo.rollout.server_engine import RolloutServerError, ServerEngine
from grpo.serve.rollout_protocol import (
    GENERATE_PATH,
    SESSION_PATH,
    WEIGHTS_PATH,
    Limits,
    encode_generate,
)
from grpo.serve.rollout_server import build_service, make_app
from grpo.serve.weights import TensorSpec, encode_header
from grpo.training.trainer import Trainer, train
from tests.support import free_port
from tests.support.episodes import EXAMPLES, echo, sampler
from tests.support.runs import read_metrics, tiny_config
from tests.support.servers import GREEDY, TOKEN, ServerThread, client, health_at, render

LIMITS = Limits(max_body_bytes=16 * 1024, max_rows=64, max_tokens=8192)
@pytest.fixture(scope="module")
def server(tiny_model_dir):
    service = build_service(str(tiny_model_dir), engine="shared_prefix", group_timeout=30)
    s = ServerThread(make_app(service, TOKEN, LIMITS))
    s.service = service
    yield s
    s.stop()


@pytest.fixture
def policy(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def post(port, path, body, token=TOKEN, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, body=body, headers={**({"Authorization": f"Bearer {token}"} if token else {}),
                                                   **(headers or {})})
    reply = conn.getresponse()
    data = reply.read()
    conn.close()
    return reply.status, data


def test_after_a_push_greedy_outputs_equal_the_in_process_engine(server, policy):
    model, tokenizer = policy
    engine = client(server.url, model, tokenizer)
    prompts = render(tokenizer)
    with torch.no_grad():  # an optimizer step, in place: the server must follow only after a push
        model.model.layers[0].mlp.down_proj.weight.mul_(-3.0)
    engine.sync_weights(model, 1)
    ours = engine.generate(prompts, GREEDY)
    local = SharedPrefixEngine(model, tokenizer).generate(prompts, GREEDY)
    assert ours.completion_ids.tolist() == local.completion_ids.tolist()
    assert ours.completions == local.completions and ours.finish_reasons == local.finish_reasons
    assert torch.equal(ours.prompt_ids, local.prompt_ids) and torch.equal(ours.loss_mask, local.loss_mask)
    assert ours.policy_version.tolist() == [1] * len(prompts)
    # the push left the generation unchanged for a model with the directory's weights: it does differ
    fresh = AutoModelForCausalLM.from_pretrained(server.service.model.config._name_or_path)
    assert SharedPrefixEngine(fresh, tokenizer).generate(prompts, GREEDY).completion_ids.tolist() != \
        ours.completion_ids.tolist()
    # sampled: the server's sampler log-probs are the trainer's own (same weights, same math)
    sampled = engine.generate(prompts, SamplingParams(2, 1.0, 1.0, 0, 8, seed=3))
    from grpo.training.logprobs import batch_logprobs

    trainer_lp = batch_logprobs(model, sampled, 8, torch.device("cpu"), 1.0)
    m = sampled.loss_mask.bool()
    torch.testing.assert_close(sampled.sampler_logprobs[m], trainer_lp[m], atol=1e-4, rtol=0)
    print(f"push of the tiny model: {engine.push_bytes / 1e6:.2f} MB in {engine.push_seconds * 1e3:.0f} ms")


def test_bad_requests_are_refused_and_the_server_keeps_serving(server, policy):
    model, tokenizer = policy
    good = encode_generate([[5, 6, 7]], SamplingParams(2, 1.0, 1.0, 0, 4), 0)
    assert post(server.port, GENERATE_PATH, good, token=None)[0] == 401
    assert post(server.port, GENERATE_PATH, good, token="wrong")[0] == 401
    assert post(server.port, WEIGHTS_PATH, b"{}", token="wrong")[0] == 401
    assert post(server.port, GENERATE_PATH, b"x" * (LIMITS.max_body_bytes + 1))[0] == 413
    too_many = encode_generate([[5, 6, 7]] * 40, SamplingParams(2, 1.0, 1.0, 0, 4), 0)  # 80 rows > 64
    assert post(server.port, GENERATE_PATH, too_many)[0] == 413
    status, body = post(server.port, GENERATE_PATH, b"not safetensors")
    assert status == 400 and "safetensors" in json.loads(body)["error"]
    assert post(server.port, GENERATE_PATH, save({"prompt_ids": torch.ones(3, dtype=torch.int64)}))[0] == 400
    out_of_vocab = encode_generate([[5, 10**6]], SamplingParams(2, 1.0, 1.0, 0, 4), 0)
    assert post(server.port, GENERATE_PATH, out_of_vocab)[0] == 400
    request = {"group_size": 2, "temperature": 1.0, "top_p": 9.0, "top_k": 0, "max_new_tokens": 4, "seed": None,
               "stop": [], "min_version": 0}
    ids = {"prompt_ids": torch.tensor([5, 6]), "prompt_lengths": torch.tensor([2])}
    assert post(server.port, GENERATE_PATH, save(ids, metadata={"request": json.dumps(request)}))[0] == 400
    assert post(server.port, GENERATE_PATH, save(ids, metadata={"request": "[1, 2"}))[0] == 400
    assert post(server.port, SESSION_PATH, b"{}")[0] == 404  # the NCCL transport's routes only
    assert post(server.port, WEIGHTS_PATH, b"{not a weights header")[0] in (400, 413)
    x = TensorSpec("x", (2,), "float32")
    assert post(server.port, WEIGHTS_PATH, encode_header([x], 1) + bytes(8))[0] == 400  # not the model's
    embed = next(iter(server.service.params))  # the model's tensor, but the push leaves the rest out
    spec = TensorSpec(embed, tuple(server.service.params[embed].shape), "float32")
    status, body = post(server.port, WEIGHTS_PATH, encode_header([spec], 1))
    assert status == 400 and "leaves out" in json.loads(body)["error"]
    with pytest.raises(RolloutServerError, match="refused"):
        ServerEngine(model, tokenizer, url=server.url, token="wrong", server_timeout=5).generate(
            render(tokenizer)[:1], GREEDY)
    # still serving
    assert client(server.url, model, tokenizer).generate(render(tokenizer)[:1], GREEDY).completion_ids.shape[0] == 1


def test_an_episode_runs_through_the_server(server, policy):
    model, tokenizer = policy
    engine = client(server.url, model, tokenizer)
    params = SamplingParams(group_size=2, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8, seed=0, stop=(" ",))
    out = sampler(engine, echo(turns=2)).sample(EXAMPLES, params)
    assert len(out) == 4 and out.episodes is not None
    assert all(len([m for m in e if m["role"] == "assistant"]) >= 1 for e in out.episodes)
    assert (out.loss_mask <= out.completion_mask).all() and (out.loss_mask == 0).any()  # replies inserted


def test_lockstep_through_the_server_equals_the_in_process_run(tmp_path, tiny_model_dir, data_file, server,
                                                              monkeypatch):
    monkeypatch.setenv("GRPO_ROLLOUT_TOKEN", TOKEN)
    common = ("eval.num_examples=0", "train.first_run_check=false", "algorithm.sampler_correction=none",
              "train.num_steps=3")
    local = tiny_config(tmp_path / "local", tiny_model_dir, data_file, "rollout.engine=shared_prefix", *common)
    remote = tiny_config(tmp_path / "remote", tiny_model_dir, data_file, "rollout.engine=server",
                         f"rollout.url={server.url}", *common)
    train(local)
    train(remote)
    assert read_metrics(remote.output_dir) == read_metrics(local.output_dir)


def test_adaptive_groups_through_the_server_equal_the_in_process_run(tmp_path, tiny_model_dir, server, monkeypatch):
    # each prompt's own G travels in the request (group_sizes): the same sizes, completions and metrics
    from tests.training.test_adaptive_groups import ADAPTIVE, four_prompts

    monkeypatch.setenv("GRPO_ROLLOUT_TOKEN", TOKEN)
    data = four_prompts(tmp_path)
    common = ("train.first_run_check=false", "algorithm.sampler_correction=none", "train.num_steps=6", *ADAPTIVE)
    local = tiny_config(tmp_path / "local", tiny_model_dir, data, "rollout.engine=shared_prefix", *common)
    remote = tiny_config(tmp_path / "remote", tiny_model_dir, data, "rollout.engine=server", f"rollout.url={server.url}",
                         *common)
    train(local)
    train(remote)
    metrics = read_metrics(remote.output_dir)
    assert metrics == read_metrics(local.output_dir)
    assert any(m["group/size_min"] < m["group/size_max"] for m in metrics)


def async_config(tmp_path, tiny_model_dir, data_file, url, *overrides):
    return tiny_config(tmp_path, tiny_model_dir, data_file, "rollout.engine=server", f"rollout.url={url}",
                       "rollout.max_staleness=2", "eval.num_examples=0", "train.first_run_check=false", *overrides)


def rollouts(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "rollouts.jsonl").read_text().splitlines()]


def test_async_runs_keep_the_staleness_bound_and_resume_in_the_same_order(tmp_path, tiny_model_dir, data_file,
                                                                        server, monkeypatch):
    monkeypatch.setenv("GRPO_ROLLOUT_TOKEN", TOKEN)
    full = async_config(tmp_path / "full", tiny_model_dir, data_file, server.url, "train.num_steps=5")
    train(full)
    records = rollouts(full.output_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    ages = [r["trained_version"] - v for r in records for v in r["policy_versions"]]
    assert max(ages) <= 2 and min(ages) >= 0
    assert max(ages) >= 1  # it did generate ahead
    assert [r["trained_version"] for r in records] == [0, 1, 2, 3, 4]
    metrics = read_metrics(full.output_dir)
    assert all(m["async/staleness_max"] <= 2 for m in metrics) and "is_weight/mean" in metrics[0]  # correction on
    # resumed from the checkpoint of step 1, when step 2's rollouts were in flight: they are dropped
    # and generated again from the checkpoint's weights; the prompts and their order are the same
    half = async_config(tmp_path / "half", tiny_model_dir, data_file, server.url, "train.num_steps=2")
    train(half)
    shutil.rmtree(Path(half.output_dir) / "checkpoint-000002")
    resumed = async_config(tmp_path / "half", tiny_model_dir, data_file, server.url, "train.num_steps=5",
                           "resume=true")
    train(resumed)
    again = rollouts(half.output_dir)
    assert [r["example_ids"] for r in again] == [r["example_ids"] for r in records]
    assert [r["step"] for r in again] == [1, 2, 3, 4, 5]
    assert records[1]["policy_versions"] == [0] * 8  # generated ahead, before the first update
    assert again[1]["policy_versions"] == [1] * 8  # generated again from the checkpoint's weights


def step_sizes(run_dir) -> dict[int, list[int]]:
    """Each step's group sizes, from samples.jsonl (every row of the step: log.num_samples covers them;
    a group's rows are consecutive and each carries its group's size)."""
    rows: dict[int, list[int]] = {}
    for line in (Path(run_dir) / "samples.jsonl").read_text().splitlines():
        record = json.loads(line)
        rows.setdefault(record["step"], []).append(record["group_size"])
    out = {}
    for step, sizes in rows.items():
        k, out[step] = 0, []
        while k < len(sizes):
            out[step].append(sizes[k])
            k += sizes[k]
    return out


def test_async_adaptive_groups_resume_with_the_sizes_of_the_batches_in_flight(tmp_path, tiny_model_dir, server,
                                                                             monkeypatch):
    # max_staleness 2: batch s is split when step s - 2 starts, by the estimates after step s - 3. Resumed from
    # checkpoint 4, batches 5 and 6 were in flight: their saved sizes (trainer_state.json) split them again,
    # and batch 7 is split by the same estimates as in the whole run, so steps 1-7 have the same sizes
    from tests.training.test_adaptive_groups import ADAPTIVE, four_prompts

    monkeypatch.setenv("GRPO_ROLLOUT_TOKEN", TOKEN)
    data = four_prompts(tmp_path)
    full = async_config(tmp_path / "full", tiny_model_dir, data, server.url, "train.num_steps=8", *ADAPTIVE)
    train(full)
    half = async_config(tmp_path / "half", tiny_model_dir, data, server.url, "train.num_steps=6", *ADAPTIVE)
    train(half)
    saved = json.loads((Path(half.output_dir) / "checkpoint-000004" / "trainer_state.json").read_text())
    assert len(saved["group_sizes_in_flight"]) == 2 and all(sum(s) == 12 for s in saved["group_sizes_in_flight"])
    for step in (5, 6):  # as if the run had stopped after step 4's checkpoint
        shutil.rmtree(Path(half.output_dir) / f"checkpoint-00000{step}")
    resumed = async_config(tmp_path / "half", tiny_model_dir, data, server.url, "train.num_steps=8", "resume=true",
                           *ADAPTIVE)
    train(resumed)
    a, b = step_sizes(full.output_dir), step_sizes(half.output_dir)
    assert all(a[step] == b[step] for step in range(1, 8)) and all(sum(a[step]) == 12 for step in a)
    assert saved["group_sizes_in_flight"] == [a[5], a[6]]
    assert any(len(set(a[step])) > 1 for step in (5, 6))  # the saved sizes are unequal ones


@pytest.mark.parametrize("overrides, field", [
    (["rollout.max_staleness=1"], "rollout.max_staleness"),  # an in-process engine
    (["rollout.engine=server", "rollout.url=http://127.0.0.1:1", "rollout.max_staleness=1",
      "algorithm.sampler_correction=none"], "algorithm.sampler_correction"),
    (["rollout.engine=server", "rollout.url=http://127.0.0.1:1", "rollout.max_staleness=1",
      "algorithm.dynamic_sampling=true"], "algorithm.dynamic_sampling"),
    (["rollout.engine=server", "rollout.url=http://127.0.0.1:1", "rollout.max_staleness=1",
      "algorithm.num_iterations=2"], "rollout.max_staleness"),
    (["rollout.engine=server"], "rollout.url"),
    (["rollout.url=http://127.0.0.1:1"], "rollout.url"),
    (["rollout.max_staleness=-1"], "rollout.max_staleness"),
])
def test_config_refuses_what_cannot_work(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        load_config(None, overrides)


def start_server(model_dir, port):
    env = {**os.environ, "GRPO_ROLLOUT_TOKEN": TOKEN, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen([sys.executable, "-m", "grpo", "serve-rollout", "--model", str(model_dir), "--port",
                             str(port), "--engine", "shared_prefix",
                             "--group-timeout", "20"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_server_killed_and_restarted_mid_run_is_recovered(tmp_path, tiny_model_dir, data_file, monkeypatch):
    monkeypatch.setenv("GRPO_ROLLOUT_TOKEN", TOKEN)
    port = free_port()
    first = start_server(tiny_model_dir, port)
    cfg = async_config(tmp_path, tiny_model_dir, data_file, f"http://127.0.0.1:{port}", "train.num_steps=5",
                       "rollout.max_staleness=1", "rollout.server_timeout=90", "checkpoint.every=0")
    metrics = Path(cfg.output_dir) / "metrics.jsonl"
    servers = [first]

    def kill_and_restart():
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
            time.sleep(0.05)
        first.kill()  # SIGKILL: no goodbye, mid-run
        first.wait()
        servers.append(start_server(tiny_model_dir, port))

    killer = threading.Thread(target=kill_and_restart, daemon=True)
    killer.start()
    try:
        trainer = Trainer.build(cfg)
        try:
            trainer.run()
        finally:
            trainer.collector.close()
        killer.join(5)
        assert len(servers) == 2 and first.returncode == -9
        assert trainer.state.step == 5 and [r["step"] for r in rollouts(cfg.output_dir)] == [1, 2, 3, 4, 5]
        # the second server holds the final weights: the trainer pushed them to it after the restart
        health = health_at(f"http://127.0.0.1:{port}", 5)
        assert health["version"] == trainer.state.num_updates == 5 and health["instance"] == trainer.engine.instance
        assert servers[1].poll() is None
        ages = [r["trained_version"] - v for r in rollouts(cfg.output_dir) for v in r["policy_versions"]]
        assert max(ages) <= 1
    finally:
        for s in servers:
            s.kill()
            s.wait()
