"""grpo.compute.attention (grouped-query SDPA without key/value copies) and the preallocated decode cache."""

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from grpo.compute.attention import NAME
from grpo.compute.models import load_policy
from grpo.config import ModelConfig
from grpo.rollout.shared_prefix import PreallocatedLayer


def test_cpu_policy_loads_with_the_gqa_attention(tiny_model_dir):
    model, _ = load_policy(ModelConfig(path=str(tiny_model_dir)))
    assert model.config._attn_implementation == NAME and model.config.num_key_value_heads < 4


def padded_batch():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [3, 4, 5, 6, 7, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


def test_gqa_attention_equals_transformers_sdpa_forward_backward_and_cached(tiny_model_dir):
    """Left-padded batch, no cache and with a cache (prefill then one decode token): the same
    logits and the same gradients as transformers' own sdpa (which repeats key/value heads)."""
    ours = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=NAME)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    ids, mask, pos = padded_batch()
    grads = []
    for model in (ours, ref):
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos)
        (out.logits * torch.linspace(-1, 1, out.logits.shape[-1])).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        cache = DynamicCache()
        model(input_ids=ids[:, :5], attention_mask=mask[:, :5], position_ids=pos[:, :5], past_key_values=cache)
        step = model(input_ids=ids[:, 5:], attention_mask=mask, position_ids=pos[:, 5:], past_key_values=cache)
        grads[-1]["logits"], grads[-1]["decode"] = out.logits.detach(), step.logits.detach()
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_preallocated_layer_writes_in_place_and_grows_when_full():
    cache = DynamicCache()
    k, v = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8)
    cache.update(k, v, 0)
    layer = PreallocatedLayer(cache.layers[0], extra=2)
    buffer = layer._keys
    new = [(torch.randn(3, 2, 1, 8), torch.randn(3, 2, 1, 8)) for _ in range(3)]
    for i, (nk, nv) in enumerate(new):
        keys, values = layer.update(nk, nv)
        k, v = torch.cat([k, nk], -2), torch.cat([v, nv], -2)
        assert torch.equal(keys, k) and torch.equal(values, v) and layer.get_seq_length() == 5 + i
        assert (layer._keys is buffer) == (i < 2)  # in place until the 2 extra slots are used
    layer.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(layer.keys, k[[2, 0]]) and torch.equal(layer.values, v[[2, 0]])


def test_compaction_moves_only_the_rows_behind_a_hole():
    from grpo.rollout.shared_prefix import compaction

    going = torch.tensor([True, False, True, False, True, True])
    order, holes, sources = compaction(going)
    assert order.tolist() == [0, 4, 2, 5] and holes.tolist() == [1, 3] and sources.tolist() == [4, 5]
    assert [t.tolist() for t in compaction(torch.tensor([False, True]))] == [[1], [0], [1]]
    assert [t.tolist() for t in compaction(torch.tensor([True, True, False]))] == [[0, 1], [], []]
    cache = DynamicCache()
    k, v = torch.randn(6, 2, 3, 4), torch.randn(6, 2, 3, 4)
    cache.update(k, v, 0)
    layer = PreallocatedLayer(cache.layers[0], extra=2)
    layer.move_rows(holes, sources, len(order))
    assert torch.equal(layer.keys, k[order]) and torch.equal(layer.values, v[order])
    nk, nv = torch.randn(4, 2, 1, 4), torch.randn(4, 2, 1, 4)  # the kept rows go on decoding in place
    keys, values = layer.update(nk, nv)
    assert torch.equal(keys, torch.cat([k[order], nk], -2)) and torch.equal(values, torch.cat([v[order], nv], -2))
