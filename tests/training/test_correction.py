"""The sampler correction, GSPO and overlong masking in the training loop (tiny random Llama)."""

import pytest
import torch

from grpo.compute.distributed import World
from grpo.config import AlgorithmConfig
from grpo.rollout import ENGINES
from grpo.training.logprobs import batch_logprobs
from grpo.training.loss import PolicyLoss, SamplerCorrection
from grpo.training.trainer import Trainer
from tests.support.runs import tiny_config


def test_the_transformers_engine_with_top_k_and_top_p_gets_weights_of_one(tmp_path, tiny_model_dir, data_file):
    # same weights, same kernels, pi_old under the same truncated distribution: w = 1 to float precision
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, "rollout.engine=transformers", "rollout.top_k=5",
                      "rollout.top_p=0.9", "rollout.temperature=0.7", "algorithm.sampler_correction=truncate",
                      "train.num_steps=1", "eval.num_examples=0", "rollout.max_new_tokens=12")
    trainer = Trainer.build(cfg)
    trajectory = trainer.engine.generate(["Hi there", "What is 2 + 3?"], trainer.sampling_params())
    behaviour = batch_logprobs(trainer.model, trajectory, 8, trainer.device, 0.7, top_k=5, top_p=0.9)
    weights, _ = trainer.correction.weights(behaviour, trajectory.sampler_logprobs, trajectory.loss_mask)
    sampled = trajectory.loss_mask.bool()
    error = (weights[sampled] - 1).abs().max().item()
    print(f"transformers engine, T=0.7 top_k 5 top_p 0.9: max |w - 1| = {error:.2e}")
    assert error < 1e-4  # measured 4.8e-6
    # in training the weights come from the first update's own forward: the same numbers
    metrics, _ = trainer.train_step()
    print({k: v for k, v in metrics.items() if k.startswith(("is_weight", "sampler_kl"))})
    assert 1 - 1e-4 < metrics["is_weight/min"] <= metrics["is_weight/max"] < 1 + 1e-4
    assert metrics["is_weight/truncated"] == 0 and metrics["is_weight/nonfinite"] == 0
    assert abs(metrics["sampler_kl"]) < 1e-8


def test_auto_is_off_for_engines_that_sample_with_the_trainers_weights(tmp_path, tiny_model_dir, data_file):
    trainer = Trainer.build(tiny_config(tmp_path, tiny_model_dir, data_file, "eval.num_examples=0",
                                        "rollout.engine=shared_prefix"))
    assert not trainer.correction.active
    metrics, _ = trainer.train_step()
    assert not any(k.startswith("is_weight/") for k in metrics)
    assert SamplerCorrection.from_config(AlgorithmConfig(), "vllm").mode == "truncate"
    # auto reads the engine table: truncate exactly for the engines with numerics of their own
    auto = {name: SamplerCorrection.from_config(AlgorithmConfig(), name).mode for name in ENGINES}
    assert auto == {"shared_prefix": "none", "transformers": "none", "vllm": "truncate", "server": "truncate"}
    assert SamplerCorrection.from_config(AlgorithmConfig(sampler_correction="mask"), "shared_prefix").mode == "mask"


def test_a_missing_sampler_log_prob_is_masked_and_counted():
    correction = SamplerCorrection("truncate", "token", 2.0)
    q = torch.tensor([[-1.0, float("nan")], [-2.0, -2.0]])
    old = torch.tensor([[-1.0, -1.0], [-2.0 + 0.1, -2.0]])
    # two micro-batches of one row each, as the update computes them
    parts = [correction.weights(old[i : i + 1], q[i : i + 1], torch.ones(1, 2)) for i in range(2)]
    weights = torch.cat([w for w, _ in parts])
    m = correction.metrics([sums for _, sums in parts], World())
    assert weights[0, 1] == 0 and torch.isfinite(weights).all()
    assert m["is_weight/nonfinite"] == 1 and m["is_weight/max"] == pytest.approx(float(torch.exp(torch.tensor(0.1))))
    assert m["is_weight/min"] == 1.0


def test_truncated_completions_are_not_trained_on(tmp_path, tiny_model_dir, data_file):
    # the random tiny model never stops within 6 tokens: every completion is truncated
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, "algorithm.mask_truncated_completions=true",
                      "train.num_steps=1", "eval.num_examples=0", "rollout.engine=shared_prefix")
    trainer = Trainer.build(cfg)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics, _ = trainer.train_step()
    assert metrics["truncated_masked"] == 8 and metrics["truncation_rate"] == 1.0
    assert metrics["tokens_generated"] == 8 * 6  # the rollout's own counts are kept
    assert metrics["loss"] == 0.0
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, trainer.model.parameters(), strict=True))


def test_without_truncated_keeps_the_rest_and_the_normalizer_counts_what_is_left():
    from tests.support.trajectories import sampled_trajectory

    ids = torch.ones(3, 2, dtype=torch.long)
    t = sampled_trajectory(ids, ids, ids, torch.ones(3, 2, dtype=torch.long), finish_reasons=["length", "eos", "eos"])
    kept = t.without_truncated()
    assert kept.loss_mask.tolist() == [[0, 0], [1, 1], [1, 1]] and t.loss_mask.sum() == 6
    assert kept.completion_mask is t.completion_mask
    assert PolicyLoss.from_config(AlgorithmConfig(loss_type="grpo"), 2).local_items(kept.loss_mask) == 2


def test_sequence_level_ratio_trains_with_gspo_epsilons(tmp_path, tiny_model_dir, data_file):
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, "algorithm.importance_sampling_level=sequence",
                      "algorithm.num_iterations=2", "train.num_steps=1", "eval.num_examples=0",
                      "rollout.engine=shared_prefix")
    trainer = Trainer.build(cfg)
    assert (trainer.updater.loss.epsilon, trainer.updater.loss.epsilon_high) == (3e-4, 4e-4)
    metrics, _ = trainer.train_step()
    assert torch.isfinite(torch.tensor([metrics["loss"], metrics["grad_norm"]])).all()
    assert metrics["clip/region"] > 0  # the second update's sequence ratios leave [1 - 3e-4, 1 + 4e-4]
