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
    from grpo.rollout import SamplingParams
    from grpo.training.logprobs import batch_logprobs

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


def split_stop(tokenizer, ids):
    """A stop string that starts inside one token and ends inside the next: the last character
    of token 4's text and the first of token 5's (so no single token id could match it)."""
    a, b = tokenizer.decode(ids[4:5]), tokenizer.decode(ids[5:6])
    assert a and b
    return a[-1] + b[0]


def first_cut(tokenizer, ids, stops):
    """By brute force: the fewest tokens whose text holds a stop, and that text cut after the stop."""
    for k in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:k], skip_special_tokens=True)
        hits = [text.index(s) + len(s) for s in stops if s in text]
        if hits:
            return k, text[: min(hits)]
    return None


def assert_cut_at_stops(tokenizer, plain, stopped, stops, pad_id):
    """`stopped` (sampled with `stops`) is `plain` (the same greedy run without them) cut right
    after the first stop of each row: ids through the token completing it, text through the stop."""
    from grpo.trajectory import FINISH_STOP

    for i in range(len(plain)):
        ids = plain.completion_ids[i][plain.completion_mask[i].bool()].tolist()
        got = stopped.completion_ids[i][stopped.completion_mask[i].bool()].tolist()
        cut = first_cut(tokenizer, ids, stops)
        if cut is None:  # no stop in this row: the output is unchanged
            assert (got, stopped.completions[i]) == (ids, plain.completions[i])
            assert stopped.finish_reasons[i] == plain.finish_reasons[i]
            continue
        keep, text = cut
        assert stopped.finish_reasons[i] == FINISH_STOP
        assert got == ids[:keep]  # the ids exactly as sampled, through the token completing the stop
        assert stopped.completions[i] == text and plain.completions[i].startswith(text)
        assert stopped.loss_mask[i].sum() == keep
        assert (stopped.completion_ids[i][keep:] == pad_id).all()
