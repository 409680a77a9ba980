"""Log-probs of sampled completions: shared-prompt forward vs a naive one-row-at-a-time loop."""

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.rollout import SamplingParams, SharedPrefixEngine
from grpo.training.logprobs import (
    PromptCache,
    batch_logprobs,
    completion_logprobs,
    length_sorted_rows,
    make_micro_batch,
)


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


def gradients(model, batch, micro_batch_size, shared):
    """Gradient of the summed completion log-probs, micro-batched, shared prompt or plain."""
    model.zero_grad()
    prompts = PromptCache(model, batch, torch.device("cpu")) if shared else None
    for rows in length_sorted_rows(batch, micro_batch_size):
        mb = make_micro_batch(batch, rows, torch.device("cpu"))
        lp, _ = completion_logprobs(model, batch, mb, prompts)
        (lp * mb.completion_mask).sum().backward()
    if shared:
        prompts.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return grads


def test_shared_prompt_two_stage_backward_gives_the_plain_gradients(setup):
    model, batch = setup
    assert PromptCache(model, batch, torch.device("cpu")).prompt_ids.shape[0] == 2  # 6 rows, 2 prompts
    plain = gradients(model, batch, 6, shared=False)
    for size in (6, 4, 1):  # micro-batches cut across groups: the prompt still runs once
        shared = gradients(model, batch, size, shared=True)
        for name, g in plain.items():
            scale = g.abs().max().item() + 1e-6
            assert (shared[name] - g).abs().max().item() / scale < 1e-5, (size, name)


def test_micro_batches_are_sorted_by_length(setup):
    _, batch = setup
    chunks = length_sorted_rows(batch, 4)
    lengths = batch.completion_mask.sum(1)
    flat = torch.cat(chunks)
    assert sorted(flat.tolist()) == list(range(len(batch)))
    assert lengths[flat].tolist() == sorted(lengths.tolist(), reverse=True)


def micro_batch_lengths(lengths, size):
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()  # [N, C]
    chunks = length_sorted_rows(SimpleNamespace(completion_mask=mask), size)
    return [[lengths[i] for i in rows.tolist()] for rows in chunks]


def test_micro_batches_cut_where_padding_costs_more_than_a_forward():
    # one long row: alone it pads nothing; with the others, 3 rows would pad 88+ positions each
    assert micro_batch_lengths([40, 128, 38, 35], 4) == [[128], [40, 38, 35]]
    # equal lengths: as few micro-batches as the size allows
    assert micro_batch_lengths([20] * 8, 4) == [[20] * 4, [20] * 4]
    # close lengths: padding 3 positions is cheaper than another forward (MICRO_BATCH_OVERHEAD 8)
    assert micro_batch_lengths([30, 29, 28, 27], 4) == [[30, 29, 28, 27]]
    # never more rows, nor more padded positions, than a fixed chunk of `size` rows
    lengths = [97, 3, 55, 12, 12, 80, 1, 64, 33, 33, 7, 120, 2, 45, 45, 9]
    for size in (1, 2, 4, 8):
        chunks = micro_batch_lengths(lengths, size)
        assert sorted(x for c in chunks for x in c) == sorted(lengths)
        assert all(len(c) <= size and len(c) * c[0] <= size * max(lengths) for c in chunks)


def test_entropy_is_returned_on_request(setup):
    model, batch = setup
    mb = make_micro_batch(batch, torch.arange(6), torch.device("cpu"))
    with torch.no_grad():
        prompts = PromptCache(model, batch, torch.device("cpu"))
        lp, ent = completion_logprobs(model, batch, mb, prompts, with_entropy=True)
        assert ent.shape == lp.shape and (ent >= 0).all()
        assert completion_logprobs(model, batch, mb, prompts)[1] is None
