"""Log-probs of sampled completions: shared-prompt forward vs a naive one-row-at-a-time loop."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.logprobs import batch_logprobs, completion_logits, completion_logprobs, micro_batches
from grpo.rollout import SamplingParams, SharedPrefixEngine


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = SharedPrefixEngine(model, tok)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("What is 3 + 4?", "What is 12 + 30 + 7? Think step by step.")]
    params = SamplingParams(3, 1.0, 1.0, 0, 10, seed=1)
    first = engine.generate(prompts, params)
    engine.eos_ids = engine.eos_ids + [first.completion_ids[0, 3].item()]  # rows stop at different lengths
    batch = engine.generate(prompts, params)
    assert batch.completion_mask.sum(1).min() < batch.completion_mask.sum(1).max()
    return model, batch


def naive_logprobs(model, batch, i):
    """Row i alone, no padding anywhere: prompt tokens + completion tokens, full log_softmax."""
    prompt = batch.prompt_ids[i, batch.prompt_mask[i].bool()]
    n = int(batch.completion_mask[i].sum())
    completion = batch.completion_ids[i, :n]
    logits = model(torch.cat([prompt, completion])[None]).logits[0]
    lp = torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + n].float(), -1)
    return lp.gather(1, completion[:, None]).squeeze(1)


def test_logprobs_equal_the_naive_per_row_computation(setup):
    model, batch = setup
    for size in (6, 4, 1):  # whole batch, groups split across micro-batches, one row at a time
        got = batch_logprobs(model, batch, size, torch.device("cpu"))
        for i in range(len(batch)):
            n = int(batch.completion_mask[i].sum())
            torch.testing.assert_close(got[i, :n], naive_logprobs(model, batch, i), atol=1e-5, rtol=1e-5)
            assert (got[i, n:] == 0).all()


def test_shared_prompt_forward_gives_the_same_gradients(setup):
    model, batch = setup
    mb = next(micro_batches(batch, 6, torch.device("cpu")))
    assert mb.prompt_ids.shape[0] == 2  # six rows, two distinct prompts, each run once
    grads = []
    for share in (True, False):
        model.zero_grad()
        logits = completion_logits(model, mb, share_prompt=share)
        lp = torch.log_softmax(logits, -1).gather(-1, mb.completion_ids[..., None]).squeeze(-1)
        (lp * mb.completion_mask).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad()
    for name in grads[0]:
        scale = grads[1][name].abs().max().item() + 1e-6
        assert (grads[0][name] - grads[1][name]).abs().max().item() / scale < 1e-5, name


def test_entropy_is_returned_on_request(setup):
    model, batch = setup
    mb = next(micro_batches(batch, 6, torch.device("cpu")))
    with torch.no_grad():
        lp, ent = completion_logprobs(model, mb, with_entropy=True)
    assert ent.shape == lp.shape and (ent >= 0).all()
    assert completion_logprobs(model, mb)[1] is None
