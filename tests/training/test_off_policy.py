"""Off-policy sequence masking and the importance-weighted KL in real training runs (tiny random Llama),
lockstep and asynchronous (rollout.max_staleness=1 through an in-thread rollout server)."""

import math

import pytest

from grpo.serve.rollout_protocol import Limits
from grpo.serve.rollout_server import build_service, make_app
from grpo.training.trainer import Trainer, train
from tests.support.runs import read_metrics, tiny_config
from tests.support.servers import TOKEN, ServerThread

OFF_POLICY = ("off_policy/masked", "off_policy/kl", "off_policy/unmeasured")


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    service = build_service(str(tiny_model_dir), engine="shared_prefix", group_timeout=30)
    s = ServerThread(make_app(service, TOKEN, Limits(max_body_bytes=16 * 1024, max_rows=64, max_tokens=8192)))
    yield s
    s.stop()


def test_a_truncated_sampler_that_is_the_policy_reads_as_no_drift(tmp_path, tiny_model_dir, data_file):
    # the transformers engine samples with the trainer's own weights in float32: under the sampler's top-k /
    # top-p distribution KL(q || pi_theta) is 0 to float precision (untruncated it would be -log(kept mass) > 0)
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, "rollout.engine=transformers", "rollout.top_k=5",
                      "rollout.top_p=0.9", "rollout.temperature=0.7", "algorithm.off_policy_mask_threshold=0.001",
                      "train.num_steps=1", "eval.num_examples=0", "train.first_run_check=false")
    trainer = Trainer.build(cfg)
    metrics, _ = trainer.train_step()
    print({k: metrics[k] for k in OFF_POLICY})
    assert abs(metrics["off_policy/kl"]) < 1e-5
    assert metrics["off_policy/masked"] == 0 and metrics["off_policy/unmeasured"] == 0


def test_the_second_update_masks_negatives_the_first_one_moved_away_from(tmp_path, tiny_model_dir, data_file):
    # update 1: pi_theta is the sampler (KL ~ 1e-7, nothing masked); it pushes the negative completions'
    # log-probs down, so on update 2 their log(q / pi_theta) > 0: past delta = 1e-3 they leave the surrogate
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, "rollout.engine=shared_prefix",
                      "algorithm.num_iterations=2", "algorithm.off_policy_mask_threshold=0.001", "eval.num_examples=0",
                      "train.first_run_check=false")
    train(cfg)
    metrics = read_metrics(cfg.output_dir)
    print([{k: m[k] for k in OFF_POLICY} for m in metrics])
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) and m["off_policy/unmeasured"] == 0 for m in metrics)
    assert all(0 < m["off_policy/masked"] <= 0.5 for m in metrics)  # only negatives, on the second update
    assert all(m["off_policy/kl"] > 0 for m in metrics)


def test_the_mask_on_the_async_path(tmp_path, tiny_model_dir, data_file, server, monkeypatch):
    # max_staleness=1: step 2 trains on completions sampled by version 0 while the trainer is at version 1
    monkeypatch.setenv("GRPO_ROLLOUT_TOKEN", TOKEN)
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, "rollout.engine=server", f"rollout.url={server.url}",
                      "rollout.max_staleness=1", "train.first_run_check=false", "eval.num_examples=0",
                      "algorithm.off_policy_mask_threshold=0.001")
    train(cfg)
    first, second = read_metrics(cfg.output_dir)
    print([{k: m[k] for k in (*OFF_POLICY, "async/staleness_max")} for m in (first, second)])
    assert second["async/staleness_max"] == 1
    assert math.isfinite(first["loss"]) and math.isfinite(second["loss"])
    assert abs(first["off_policy/kl"]) < 1e-5 and first["off_policy/masked"] == 0  # the sampler had these weights
    assert abs(second["off_policy/kl"]) > 1e-4  # one update old
    assert 0 <= second["off_policy/masked"] <= 0.5


def test_importance_weighted_kl_trains_and_resumes_exactly(tmp_path, tiny_model_dir, data_file):
    common = ("rollout.engine=shared_prefix", "algorithm.beta=0.1", "algorithm.num_iterations=2",
              "eval.num_examples=0", "train.first_run_check=false")
    full = tiny_config(tmp_path / "full", tiny_model_dir, data_file, *common, "algorithm.kl_importance_weighted=true")
    train(full)
    plain = tiny_config(tmp_path / "plain", tiny_model_dir, data_file, *common)
    train(plain)
    weighted, unweighted = read_metrics(full.output_dir), read_metrics(plain.output_dir)
    print([(w["kl"], u["kl"]) for w, u in zip(weighted, unweighted, strict=True)])
    assert all(math.isfinite(m["loss"]) and m["kl"] > 0 for m in weighted)
    # the first update's ratio is 1 (same value), the second's is not: the step's mean KL differs
    assert all(w["kl"] != u["kl"] for w, u in zip(weighted, unweighted, strict=True))
    # no state across steps: a run cut after step 1 and resumed logs the same step 2
    half = tiny_config(tmp_path / "half", tiny_model_dir, data_file, *common, "algorithm.kl_importance_weighted=true",
                       "train.num_steps=1")
    train(half)
    resumed = tiny_config(tmp_path / "half", tiny_model_dir, data_file, *common,
                          "algorithm.kl_importance_weighted=true", "resume=true")
    train(resumed)
    assert read_metrics(resumed.output_dir) == weighted
