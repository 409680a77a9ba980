"""Reordered (oneDNN) linear weights during rollouts: same results, never used for gradients."""

import contextlib

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import grpo.rollout.transformers_engine as hf
from grpo.compute import packed_linear
from grpo.compute.packed_linear import packed_linears
from grpo.rollout import SamplingParams, SharedPrefixEngine

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.fixture
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def patched(model):
    return [m for m in model.modules() if "forward" in vars(m)]


def test_no_grad_forward_matches_and_the_layers_are_restored(model):
    ids = torch.randint(3, 300, (3, 17))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with packed_linears(model):
            assert len(patched(model)) == sum(isinstance(m, torch.nn.Linear) for m in model.modules()) > 0
            packed = model(input_ids=ids).logits
    assert not patched(model)  # the class's forward again
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-5)


def test_forwards_with_autograd_use_the_live_weights(model):
    ids = torch.randint(3, 300, (2, 9))
    weight = model.model.layers[0].mlp.down_proj.weight  # not the lm head: that one is tied to the embedding
    expected = torch.autograd.grad(model(input_ids=ids).logits.sum(), weight)[0]
    with packed_linears(model):
        with torch.no_grad():  # a changed weight is not seen by the no-grad path (a snapshot)...
            before = model(input_ids=ids).logits
            weight.mul_(2.0)
            assert torch.equal(model(input_ids=ids).logits, before)
            weight.div_(2.0)
        # ...while a forward with autograd runs the layer itself, on the live weights
        grad = torch.autograd.grad(model(input_ids=ids).logits.sum(), weight)[0]
    torch.testing.assert_close(grad, expected)


def test_other_dtypes_keep_the_plain_path(model):
    model.double()
    with packed_linears(model):
        assert not patched(model)


def test_greedy_generation_gives_the_same_tokens_with_and_without_reordering(tiny_model_dir, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = SharedPrefixEngine(model, tokenizer)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in ("What is 3 + 4?", "1 + 1")]
    greedy = SamplingParams(group_size=2, temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=16)
    seen = []

    @contextlib.contextmanager
    def recording(m, dtype):
        with packed_linears(m, dtype):
            seen.append(len(patched(m)))
            yield

    monkeypatch.setattr(hf, "rollout_linears", recording)
    packed = engine.generate(prompts, greedy)
    assert seen[0] > 0  # the engine did take the reordered path
    monkeypatch.setattr(hf, "rollout_linears", lambda m, dtype: torch.no_grad())
    plain = engine.generate(prompts, greedy)
    assert torch.equal(packed.completion_ids, plain.completion_ids)
    assert packed.completions == plain.completions


def test_sibling_layers_share_one_product_and_any_input_gets_its_own_result(model, monkeypatch):
    attention, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    x, other = torch.randn(3, attention.q_proj.in_features), torch.randn(3, attention.q_proj.in_features)
    h = torch.randn(3, attention.o_proj.in_features)
    multiplied = []  # the reordered weight of every oneDNN product, in call order
    product = packed_linear._packed_product

    def recorded(x, packed, bias, dtype):
        multiplied.append(packed)
        return product(x, packed, bias, dtype)

    monkeypatch.setattr(packed_linear, "_packed_product", recorded)
    q, k, v = attention.q_proj, attention.k_proj, attention.v_proj
    with torch.no_grad():
        expected = [q(x), k(x), v(x), q(x), k(other), v(x)]
        with packed_linears(model):
            got = [q(x), k(x), v(x)]
            assert len(multiplied) == 1  # q, k and v of one input: one product for the three
            mlp.gate_proj(x), mlp.up_proj(x)
            assert len(multiplied) == 2  # gate and up: one more
            attention.o_proj(h)  # reads another input: its own product, of its own weight
            assert len(multiplied) == 3 and multiplied[2] is not multiplied[0] and multiplied[2] is not multiplied[1]
            # k_proj reads another input than q_proj did: its slice is recomputed, never taken stale
            got += [q(x), k(other), v(x)]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
