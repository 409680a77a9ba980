"""Trajectories built by hand for tests: every completion token sampled by the policy."""

import torch

from grpo.trajectory import Trajectory


def sampled_trajectory(prompt_ids, prompt_mask, completion_ids, completion_mask, completions=None,
                       finish_reasons=None, version=0) -> Trajectory:
    n = prompt_ids.shape[0]
    return Trajectory(prompt_ids, prompt_mask, completion_ids, completion_mask, loss_mask=completion_mask.clone(),
                      sampler_logprobs=torch.full(completion_ids.shape, float("nan")),
                      policy_version=torch.full((n,), version, dtype=torch.long),
                      completions=completions if completions is not None else [""] * n,
                      finish_reasons=finish_reasons if finish_reasons is not None else ["length"] * n)


def render(tokenizer, questions):
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions]


# (temperature, top_k, top_p): the sampling distributions whose log-probs engines must report
SAMPLING_CASES = [(1.0, 0, 1.0), (0.7, 0, 1.0), (0.7, 5, 0.9)]


def sampler_logprob_error(engine, model, prompts, temperature, top_k, top_p, seed=0) -> float:
    """Largest |sampler_logprobs - recomputed| over sampled tokens, where the recomputation is a
    fresh forward of the same weights under the same truncated, renormalized distribution."""
    from grpo.logprobs import batch_logprobs
    from grpo.rollout import SamplingParams

    params = SamplingParams(group_size=4, temperature=temperature, top_p=top_p, top_k=top_k,
                            max_new_tokens=12, seed=seed)
    trajectory = engine.generate(prompts, params)
    device = next(model.parameters()).device
    recomputed = batch_logprobs(model, trajectory, 8, device, temperature, top_k=top_k, top_p=top_p)  # [N, C]
    sampled = trajectory.loss_mask.bool().cpu()
    ours = trajectory.sampler_logprobs.cpu()
    assert torch.isfinite(ours[sampled]).all() and (ours[sampled] <= 0).all()
    assert (ours[~sampled] == 0).all()
    return (ours[sampled] - recomputed[sampled]).abs().max().item()
