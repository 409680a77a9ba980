"""The rollout server under torchrun: 2 trainer processes (gloo) send their prompts to one real
`grpo serve-rollout --seed 0` process; rank 0 pushes the weights, every rank takes part in
gathering them under fsdp (grpo.rollout.server_engine).

One server serves the runs one after another, as a long-lived server serves a user's runs:
a run must never be answered with the weights an earlier run left on it.
"""

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.rollout import SharedPrefixEngine
from grpo.serve.rollout_protocol import GENERATE_PATH, decode_reply, encode_generate
from tests.compute.test_distributed import metrics, ranks_after_run
from tests.support import free_port
from tests.support.servers import GREEDY, TOKEN, health_at, render

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    port = free_port()
    env = {**os.environ, "GRPO_ROLLOUT_TOKEN": TOKEN, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "grpo", "serve-rollout", "--model", str(tiny_model_dir), "--port",
                             str(port), "--engine", "shared_prefix", "--seed", "0",
                             "--group-timeout", "60"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    while True:  # up once /health answers (or the process died: its stderr says why)
        try:
            urllib.request.urlopen(url + "/health", timeout=5).read()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.1)
    yield url
    proc.kill()
    proc.wait()


def server_greedy(url: str, tokenizer) -> list[list[int]]:
    """What the server generates now, asked without pushing anything."""
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in render(tokenizer)]
    request = urllib.request.Request(url + GENERATE_PATH, data=encode_generate(prompts, GREEDY, 0), method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": "application/octet-stream"})
    tensors, _ = decode_reply(urllib.request.urlopen(request, timeout=60).read(), len(prompts))
    ids, mask = tensors["completion_ids"], tensors["completion_mask"]
    return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]


def local_greedy(model_dir: Path, weights: dict | None, tokenizer) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if weights is not None:
        model.load_state_dict(weights, strict=False)  # tied lm_head: the embeddings carry it
    out = SharedPrefixEngine(model, tokenizer).generate(render(tokenizer), GREEDY)
    return [row[m.bool()].tolist() for row, m in zip(out.completion_ids, out.completion_mask, strict=True)]


def assert_ranks_equal(ranks: list[dict]) -> None:
    a, b = (r["after"] for r in ranks)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), "the ranks' weights differ"


SERVER = ("rollout.engine=server", "eval.num_examples=0", "train.first_run_check=false")


def test_two_ranks_through_one_server_train_alike_and_the_server_follows(tmp_path, tiny_model_dir, served,
                                                                         monkeypatch):
    """Sampled, ddp, 3 steps: both ranks end with the same weights bit for bit, and the server
    holds them (version 3; its greedy completions are those of the trained weights, which differ
    from the initial ones')."""
    monkeypatch.setenv("GRPO_ROLLOUT_TOKEN", TOKEN)
    ranks = ranks_after_run(tmp_path, tiny_model_dir, 2, *SERVER, f"rollout.url={served}", "train.learning_rate=5e-2",
                            "train.parallel=ddp")
    assert_ranks_equal(ranks)
    assert health_at(served, 3)["version"] == 3 == ranks[0]["version"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trained = server_greedy(served, tokenizer)
    assert trained == local_greedy(tiny_model_dir, ranks[0]["after"], tokenizer)
    assert trained != local_greedy(tiny_model_dir, None, tokenizer)


def test_fsdp_through_the_server_equals_the_in_process_two_rank_run(tmp_path, tiny_model_dir, served, monkeypatch):
    """fsdp (every rank gathers for rank 0's push), top_k=1 so the sampling is the same whoever
    draws it (a weight decay moves the weights although every advantage is 0): metric for metric
    the in-process 2-rank run, on a server an earlier run left at another version (run after the
    test above, and alone)."""
    monkeypatch.setenv("GRPO_ROLLOUT_TOKEN", TOKEN)
    common = ("train.parallel=fsdp", "rollout.top_k=1", "algorithm.sampler_correction=none",
              "train.weight_decay=0.5", "train.learning_rate=5e-2", "eval.num_examples=0",
              "train.first_run_check=false")
    local = ranks_after_run(tmp_path / "local", tiny_model_dir, 2, "rollout.engine=shared_prefix", *common)
    remote = ranks_after_run(tmp_path / "remote", tiny_model_dir, 2, *SERVER, f"rollout.url={served}", *common)
    assert_ranks_equal(remote)
    assert metrics(tmp_path / "remote" / "run") == metrics(tmp_path / "local" / "run")
    a, b = local[0]["after"], remote[0]["after"]
    assert all(torch.equal(a[n], b[n]) for n in a)
