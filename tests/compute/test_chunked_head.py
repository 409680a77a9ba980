"""Log-probs without full logits (grpo.compute.chunked_head): values, entropy and the gradient of every
parameter equal the full-logits computation, in chunks of a few positions; tied head, LoRA on the head,
bf16 autocast with and without the float32 head; the probe that keeps the full logits where the split
is not exact; and what autograd keeps."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from grpo import algorithm
from grpo.compute import chunked_head
from grpo.compute.chunked_head import StatsSpec, parts_of, token_stats
from grpo.compute.lm_head import keep_head_float32
from grpo.compute.models import AdapterDisabledReference
from grpo.training.logprobs import (
    completion_stats,
    length_sorted_rows,
    make_micro_batch,
    prompt_cache,
)
from grpo.trajectory import TokenSequences
from tests.support.tiny import make_tiny_model

CPU = torch.device("cpu")
TEMPERATURE = 0.7


def batch_of(vocab: int, seed: int = 0) -> TokenSequences:
    """4 rows, 2 distinct left-padded prompts, completions of lengths 5, 3, 6, 1."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, vocab, (2, 5), generator=g).repeat_interleave(2, 0)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_ids[2:, 0], prompt_mask[2:, 0] = 0, 0
    completion_ids = torch.randint(3, vocab, (4, 6), generator=g)
    completion_mask = torch.zeros_like(completion_ids)
    for row, n in enumerate((5, 3, 6, 1)):
        completion_mask[row, :n] = 1
    return TokenSequences(prompt_ids, prompt_mask, completion_ids, completion_mask)


def full_logits_stats(model, batch, mb, entropy_grad: bool):
    """The old path: the model's logits of every completion position, then the per-token functions."""
    ids = torch.cat([batch.prompt_ids[mb.rows], mb.completion_ids], 1)
    mask = torch.cat([batch.prompt_mask[mb.rows], torch.ones_like(mb.completion_mask)], 1)
    C = mb.completion_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    logits = logits[:, -C - 1 : -1]
    lp = algorithm.token_logprobs(logits, mb.completion_ids, TEMPERATURE)
    ent = algorithm.token_entropy(logits if entropy_grad else logits.detach(), TEMPERATURE)
    trunc = algorithm.token_logprobs(logits.detach(), mb.completion_ids, TEMPERATURE, 5, 0.9)
    return lp, ent, trunc


def loss_of(lp, ent, mask):
    weights = torch.linspace(-1, 1, lp.numel()).view_as(lp) * mask  # signed, different per token
    return (lp * weights).sum() + 0.3 * (ent * mask).sum()


def grads_of(model, loss) -> dict[str, torch.Tensor]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    got = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: g for n, g in zip(params, got, strict=True) if g is not None}


def compare(model, monkeypatch, shared: bool, autocast=None, atol=1e-5, kept: bool = False):
    """Chunked (3 positions a chunk; kept: logits under the budget, no chunks) against full logits:
    values and every parameter's gradient."""
    monkeypatch.setattr(chunked_head, "CHUNK_POSITIONS", 3)
    monkeypatch.setattr(chunked_head, "KEEP_LOGITS_ELEMENTS", 2**30 if kept else 0)
    batch = batch_of(model.config.vocab_size)
    region = autocast or torch.autocast("cpu", enabled=False)
    spec = StatsSpec(TEMPERATURE, "grad", (5, 0.9))
    for rows in length_sorted_rows(batch, 3):
        mb = make_micro_batch(batch, rows, CPU)
        with region:
            want = full_logits_stats(model, batch, mb, True)
            want_grads = grads_of(model, loss_of(want[0], want[1], mb.completion_mask))
            model.zero_grad(set_to_none=True)
            prompts = prompt_cache(model, batch, CPU) if shared else None
            got = completion_stats(model, batch, mb, prompts, spec)
            loss_of(got[0], got[1], mb.completion_mask).backward()
            if prompts is not None:  # the two-stage backward: micro-batch, then the shared prompt forward
                prompts.backward()
        got_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        keep = mb.completion_mask.bool()
        for w, g in zip(want, got, strict=True):
            torch.testing.assert_close(g[keep], w[keep].float(), atol=atol, rtol=atol)
        assert set(got_grads) == set(want_grads)
        for name, g in want_grads.items():
            torch.testing.assert_close(got_grads[name], g, atol=atol, rtol=1e-3, msg=name)
    return want_grads


@pytest.mark.parametrize("kept", [False, True], ids=["chunked", "kept-under-budget"])
@pytest.mark.parametrize("shared", [False, True], ids=["plain", "shared-prompt"])
def test_values_and_gradients_equal_the_full_logits_path(monkeypatch, shared, kept):
    torch.manual_seed(0)
    model, _ = make_tiny_model()
    head = model.get_output_embeddings()
    assert head.weight is model.get_input_embeddings().weight  # tied: both uses reach one gradient
    grads = compare(model, monkeypatch, shared, kept=kept)
    assert grads["model.embed_tokens.weight"].abs().sum() > 0 and len(grads) == len(list(model.parameters()))


def test_lora_on_the_head_gets_the_same_gradients(monkeypatch):
    torch.manual_seed(0)
    model, _ = make_tiny_model()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"]))
    for name, p in model.named_parameters():  # lora_B starts at 0: move it so its product matters
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    grads = compare(model, monkeypatch, shared=False)
    assert any("lm_head.lora_A" in n for n in grads) and any("lm_head.lora_B" in n for n in grads)


@pytest.mark.parametrize("fp32_head", [False, True], ids=["bf16-head", "fp32-head"])
def test_bf16_autocast_recomputes_in_the_forwards_dtype(monkeypatch, fp32_head):
    torch.manual_seed(0)
    model, _ = make_tiny_model()
    if fp32_head:
        keep_head_float32(model)
    compare(model, monkeypatch, shared=False, autocast=torch.autocast("cpu", dtype=torch.bfloat16), atol=2e-2)


def test_the_lora_reference_splits_with_its_adapters_off(monkeypatch):
    torch.manual_seed(0)
    model, _ = make_tiny_model()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    reference = AdapterDisabledReference(model)
    batch = batch_of(model.config.vocab_size)
    mb = make_micro_batch(batch, torch.arange(4), CPU)
    with torch.no_grad():
        got = completion_stats(reference, batch, mb, None, StatsSpec(TEMPERATURE))[0]
        with model.disable_adapter():
            want = full_logits_stats(model, batch, mb, False)[0]
        adapted = completion_stats(model, batch, mb, None, StatsSpec(TEMPERATURE))[0]
    keep = mb.completion_mask.bool()
    torch.testing.assert_close(got[keep], want[keep], atol=1e-5, rtol=1e-5)
    assert (adapted[keep] - want[keep]).abs().max() > 1e-2  # the adapters do change the policy's


def test_a_model_that_transforms_its_logits_keeps_the_full_logits(caplog):
    torch.manual_seed(0)
    model, _ = make_tiny_model()
    forward = model.forward

    def soft_capped(*args, **kwargs):  # a transform after the head, as Gemma 2's soft-capping
        out = forward(*args, **kwargs)
        out.logits = 3.0 * torch.tanh(out.logits / 3.0)
        return out

    model.forward = soft_capped
    parts = parts_of(model)
    assert not parts.exact and "differs from the model's logits" in caplog.text
    batch = batch_of(model.config.vocab_size)
    mb = make_micro_batch(batch, torch.arange(4), CPU)
    with torch.no_grad():
        got = completion_stats(model, batch, mb, prompt_cache(model, batch, CPU), StatsSpec(TEMPERATURE))[0]
        want = full_logits_stats(model, batch, mb, False)[0]
    keep = mb.completion_mask.bool()
    torch.testing.assert_close(got[keep], want[keep], atol=1e-5, rtol=1e-5)
    assert parts_of(make_tiny_model()[0]).exact  # a plain Llama splits


def test_autograd_keeps_no_logits(monkeypatch):
    """What the graph saves for backward: the full-logits path keeps [positions, V] float32 tensors;
    the chunked path keeps the hidden states, never a tensor with the vocabulary as a dimension."""
    torch.manual_seed(0)
    model, _ = make_tiny_model()
    V = model.config.vocab_size
    monkeypatch.setattr(chunked_head, "CHUNK_POSITIONS", 4)
    monkeypatch.setattr(chunked_head, "KEEP_LOGITS_ELEMENTS", 2 * 9 * V - 1)  # just under these logits
    hidden = torch.randn(2, 9, model.config.hidden_size, requires_grad=True)
    ids = torch.randint(0, V, (2, 9))
    parts = parts_of(model)
    shapes: list[tuple[int, ...]] = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, ent, _ = token_stats(parts, hidden, ids, StatsSpec(TEMPERATURE, "grad"))
    assert not any(V in s for s in shapes), shapes
    (lp.sum() + ent.sum()).backward()
    shapes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = parts.head(hidden)
        algorithm.token_logprobs(logits, ids, TEMPERATURE) + algorithm.token_entropy(logits, TEMPERATURE)
    assert any(V in s for s in shapes)  # what the test is for: the full path keeps them
    shapes.clear()
    monkeypatch.setattr(chunked_head, "KEEP_LOGITS_ELEMENTS", 2 * 9 * V)  # now within the budget: kept
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_stats(parts, hidden, ids, StatsSpec(TEMPERATURE, "grad"))
    assert any(V in s for s in shapes)


def test_empty_and_no_grad_inputs():
    model, _ = make_tiny_model()
    parts = parts_of(model)
    empty = token_stats(parts, torch.zeros(2, 0, model.config.hidden_size), torch.zeros(2, 0, dtype=torch.long),
                        StatsSpec(1.0, "metric"))
    assert empty[0].shape == (2, 0) and empty[1].shape == (2, 0) and empty[2] is None
    with torch.no_grad():
        lp, _, _ = token_stats(parts, torch.randn(1, 3, model.config.hidden_size), torch.tensor([[1, 2, 3]]),
                               StatsSpec())
    assert lp.shape == (1, 3) and not lp.requires_grad and (lp < 0).all()


def test_the_split_cache_keeps_no_model_alive(caplog):
    """parts_of caches a split per model object; dropping the model frees it (a notebook that trains
    several models in turn would otherwise keep every one): a plain model, a full-logits one and
    a LoRA policy's reference."""
    import gc
    import weakref

    def capped():
        model, _ = make_tiny_model()
        forward = model.forward

        def soft(*args, **kwargs):
            out = forward(*args, **kwargs)
            out.logits = torch.tanh(out.logits)
            return out

        model.forward = soft
        return model

    def lora_reference():
        model = get_peft_model(make_tiny_model()[0], LoraConfig(r=2, target_modules=["q_proj"]))
        return AdapterDisabledReference(model)

    for build in (lambda: make_tiny_model()[0], capped, lora_reference):
        model = build()
        parts_of(model)
        gone = weakref.ref(model)
        del model
        gc.collect()
        assert gone() is None
