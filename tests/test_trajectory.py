"""The trajectory record: sampler log-probs of every engine, loss_mask, policy version, token rewards."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.rewards.harness import RewardScores
from grpo.rollout import SharedPrefixEngine, TransformersEngine
from tests.support.trajectories import (
    SAMPLING_CASES,
    render,
    sampled_trajectory,
    sampler_logprob_error,
)

QUESTIONS = ["What is 3 + 4?", "What is 12 + 30 + 7? Think step by step.", "1 + 1"]
# fp32 on CPU; measured (both engines): at most 4.8e-6 (T=1), 6.0e-6 (T=0.7), 6.7e-6 (T=0.7, top_k 5,
# top_p 0.9): the sampler's incremental decode and a full forward sum in different orders
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("engine_class", [TransformersEngine, SharedPrefixEngine])
@pytest.mark.parametrize(("temperature", "top_k", "top_p"), SAMPLING_CASES)
def test_sampler_logprobs_equal_a_recomputation_under_the_sampling_distribution(policy, engine_class, temperature,
                                                                                top_k, top_p):
    model, tokenizer = policy
    engine = engine_class(model, tokenizer)
    error = sampler_logprob_error(engine, model, render(tokenizer, QUESTIONS), temperature, top_k, top_p)
    print(f"{engine_class.__name__} T={temperature} top_k={top_k} top_p={top_p}: max |diff| {error:.2e}")
    assert error < TOLERANCE


def test_truncation_changes_the_log_probs(policy):
    # the recomputation must apply the truncation: without it the same tokens score lower
    from grpo.rollout import SamplingParams
    from grpo.training.logprobs import batch_logprobs

    model, tokenizer = policy
    trajectory = SharedPrefixEngine(model, tokenizer).generate(
        render(tokenizer, QUESTIONS), SamplingParams(4, 0.7, 0.9, 5, 12, seed=0))
    plain = batch_logprobs(model, trajectory, 8, torch.device("cpu"), 0.7)
    sampled = trajectory.loss_mask.bool()
    assert (trajectory.sampler_logprobs[sampled] - plain[sampled]).min() > 1e-3  # renormalized: higher


def test_greedy_rows_have_zero_sampler_logprobs_and_the_engine_version(policy):
    from grpo.rollout import SamplingParams

    model, tokenizer = policy
    engine = SharedPrefixEngine(model, tokenizer)
    engine.sync_weights(model, 7)
    trajectory = engine.generate(render(tokenizer, QUESTIONS), SamplingParams(1, 0.0, 1.0, 0, 8))
    assert (trajectory.sampler_logprobs == 0).all()
    assert trajectory.policy_version.tolist() == [7, 7, 7]
    assert torch.equal(trajectory.loss_mask, trajectory.completion_mask)


def hand_trajectory(**kw):
    ids = torch.arange(12).view(3, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    return sampled_trajectory(ids, torch.ones_like(ids), ids, mask, [f"c{i}" for i in range(3)], ["length", "eos", "eos"],
                              **kw)


def test_select_keeps_every_field_and_the_scores_their_steps():
    t = hand_trajectory()
    t.loss_mask[0, 1] = 0  # an inserted token
    part = t.select([2, 0])
    assert part.completions == ["c2", "c0"] and part.finish_reasons == ["eos", "length"]
    steps = [[(2, 0.5)], [(1, 2.0)], [(1, 3.0)]]  # process rewards travel with the scores
    scores = RewardScores(torch.zeros(3), {}, {}, steps).select([2, 0])
    assert scores.steps == [[(1, 3.0)], [(2, 0.5)]]
    assert part.loss_mask.tolist() == [[1, 0, 0, 0], [1, 0, 1, 1]]
    assert part.num_generated_tokens == 4
    assert t.select(slice(1, 3)).completions == ["c1", "c2"]


def test_loss_mask_outside_the_sequence_is_refused():
    t = hand_trajectory()
    loss_mask = t.loss_mask.clone()
    loss_mask[2, 3] = 1  # padding cannot be trained on
    with pytest.raises(AssertionError, match="loss_mask outside completion_mask"):
        type(t)(**{**t.__dict__, "loss_mask": loss_mask})
