"""The transformers engine on the tiny random Llama: shapes, padding, masks, determinism."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.config import RolloutConfig
from grpo.rollout import (
    SamplingParams,
    SharedPrefixEngine,
    Trajectory,
    TransformersEngine,
    build_engine,
)
from grpo.rollout.base import completion_mask

QUESTIONS = ["What is 3 + 4?", "What is 12 + 30 + 7? Think step by step.", "1 + 1"]


@pytest.fixture(scope="module", params=[TransformersEngine, SharedPrefixEngine])
def engine(request, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return request.param(model, tokenizer)


def render(tokenizer, questions=QUESTIONS):
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]


def params(**kw):
    base = dict(group_size=2, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=12)
    return SamplingParams(**(base | kw))


def with_extra_eos(engine, token_id):
    """Same model, one more stop token: a random model rarely samples <|im_end|> by itself."""
    other = type(engine)(engine.model, engine.tokenizer)
    other.eos_ids = engine.eos_ids + [token_id]
    return other


def test_completion_mask_counts_up_to_and_including_the_first_eos():
    ids = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 2, 2, 2]])
    # row 0: eos at 1 -> [1, 1, 0, 0]; row 1: no eos -> all ones; row 2 (pad == eos) -> [1, 0, 0, 0]
    mask = completion_mask(ids, torch.tensor([2]))
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_shapes_padding_and_group_order(engine):
    prompts = render(engine.tokenizer)
    batch = engine.generate(prompts, params(group_size=3, seed=0))
    assert isinstance(batch, Trajectory)
    N = len(prompts) * 3
    assert batch.prompt_ids.shape[0] == batch.completion_ids.shape[0] == N == len(batch.completions)
    assert batch.prompt_ids.dtype == batch.completion_ids.dtype == torch.long
    assert batch.completion_ids.shape[1] <= 12
    pad = engine.tokenizer.pad_token_id
    for i, prompt in enumerate(prompts):
        ids = engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for row in range(3 * i, 3 * i + 3):  # rows of a group are contiguous, prompt order kept
            mask = batch.prompt_mask[row]
            assert batch.prompt_ids[row, mask.bool()].tolist() == ids
            # left padding: the padding, if any, comes first
            n_pad = mask.shape[0] - len(ids)
            assert mask.tolist() == [0] * n_pad + [1] * len(ids)
            assert batch.prompt_ids[row, :n_pad].tolist() == [pad] * n_pad
    assert batch.prompt_mask[:, -1].all()


def test_masks_and_finish_reasons(engine):
    prompts = render(engine.tokenizer)
    greedy = params(temperature=0.0, max_new_tokens=10)
    first = engine.generate(prompts, greedy)
    assert set(first.finish_reasons) == {"length"}  # the random model does not stop by itself
    assert first.completion_mask.all() and first.completion_ids.shape[1] == 10
    # make the token greedy writes 3rd in the first completion a stop token: that row now stops there
    stop = first.completion_ids[0, 2].item()
    eng = with_extra_eos(engine, stop)
    batch = eng.generate(prompts, greedy)
    pad = engine.tokenizer.pad_token_id
    for row in range(batch.completion_ids.shape[0]):
        ids, mask = batch.completion_ids[row].tolist(), batch.completion_mask[row].tolist()
        n = sum(mask)
        assert mask == [1] * n + [0] * (len(mask) - n)  # ones then zeros
        assert ids[n:] == [pad] * (len(ids) - n)  # right-padded with the pad id
        if batch.finish_reasons[row] == "eos":
            assert ids[n - 1] in eng.eos_ids and not any(t in eng.eos_ids for t in ids[: n - 1])
        else:
            assert n == 10 and not any(t in eng.eos_ids for t in ids)
    assert batch.finish_reasons[0] == "eos" and batch.completion_mask[0].sum() <= 3
    assert batch.num_generated_tokens == int(batch.completion_mask.sum())


def test_decoded_text_matches_the_ids(engine):
    batch = engine.generate(render(engine.tokenizer), params(seed=1))
    for ids, mask, text in zip(batch.completion_ids, batch.completion_mask, batch.completions, strict=True):
        assert text == engine.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)


def test_greedy_completions_of_a_group_are_identical(engine):
    batch = engine.generate(render(engine.tokenizer), params(group_size=3, temperature=0.0))
    for g in range(len(QUESTIONS)):
        group = batch.completion_ids[3 * g : 3 * g + 3]
        assert (group == group[0]).all()


def test_same_seed_same_samples_and_rng_untouched(engine):
    prompts = render(engine.tokenizer)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = engine.generate(prompts, params(group_size=4, seed=7))
    assert torch.equal(torch.get_rng_state(), state)  # a seeded call leaves the global RNG alone
    b = engine.generate(prompts, params(group_size=4, seed=7))
    c = engine.generate(prompts, params(group_size=4, seed=8))
    assert a.completions == b.completions and torch.equal(a.completion_ids, b.completion_ids)
    assert a.completions != c.completions
    assert len(set(a.completions[:4])) > 1  # sampling, not greedy: a group differs


def test_batched_greedy_equals_one_prompt_at_a_time(engine):
    # Prompts of different lengths are left-padded differently: equal outputs mean the
    # padding is masked out (checked: with an all-ones attention mask prompts 0 and 2 differ).
    # Position ids cannot be checked this way: RoPE only sees relative positions, so
    # shifting a whole row by its padding changes nothing once the padding is masked.
    prompts = render(engine.tokenizer)
    engine.tokenizer.padding_side = "right"  # the engine pads on the left whatever this says
    try:
        together = engine.generate(prompts, params(group_size=1, temperature=0.0, max_new_tokens=16))
    finally:
        engine.tokenizer.padding_side = "left"
    assert together.prompt_mask[:, -1].all()
    for i, prompt in enumerate(prompts):
        alone = engine.generate([prompt], params(group_size=1, temperature=0.0, max_new_tokens=16))
        n = int(alone.completion_mask.sum())
        assert together.completion_ids[i, :n].tolist() == alone.completion_ids[0, :n].tolist()
        assert together.completions[i] == alone.completions[0]


def test_model_generation_config_does_not_override_params(engine):
    model = engine.model
    saved = model.generation_config
    model.generation_config = copy.deepcopy(saved)
    model.generation_config.update(do_sample=False, top_k=1, temperature=0.01, repetition_penalty=5.0)
    try:
        sampled = engine.generate(render(engine.tokenizer)[:1], params(group_size=6, seed=0))
        greedy = engine.generate(render(engine.tokenizer)[:1], params(group_size=1, temperature=0.0))
    finally:
        model.generation_config = saved
    assert len(set(sampled.completions)) > 1  # top_k=1 / do_sample=False would make them equal
    plain = engine.generate(render(engine.tokenizer)[:1], params(group_size=1, temperature=0.0))
    assert greedy.completions == plain.completions  # repetition_penalty was not applied


def test_generation_restores_train_mode_and_needs_no_grad(engine):
    engine.model.train()
    batch = engine.generate(render(engine.tokenizer)[:1], params(group_size=2, seed=0))
    assert engine.model.training
    assert not batch.completion_ids.requires_grad and not batch.completion_ids.is_inference()
    engine.model.eval()


def test_prompt_length_limit_and_build_engine(engine):
    cfg = RolloutConfig(max_prompt_tokens=5)
    eng = build_engine(cfg, engine.model, engine.tokenizer)
    with pytest.raises(ValueError, match="max_prompt_tokens = 5"):
        eng.generate(render(engine.tokenizer), params())
    with pytest.raises(ValueError, match="group_size"):
        params(group_size=0)
    p = SamplingParams.from_config(RolloutConfig(group_size=4, top_k=5), seed=3)
    assert (p.group_size, p.top_k, p.seed, p.greedy) == (4, 5, 3, False)


# --------------------------------------------------------------------------- shared-prefix engine


def test_shared_prefix_greedy_equals_model_generate(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reference, fast = TransformersEngine(model, tokenizer), SharedPrefixEngine(model, tokenizer)
    prompts = render(tokenizer)
    greedy = params(group_size=3, temperature=0.0, max_new_tokens=14)
    a = reference.generate(prompts, greedy)
    # stop on a token that greedy emits early in some rows, so rows finish at different steps
    stops = [a.completion_ids[0, 3].item(), a.completion_ids[3, 6].item()]
    for eng in (reference, fast):
        eng.eos_ids = eng.eos_ids + stops
    a, b = reference.generate(prompts, greedy), fast.generate(prompts, greedy)
    assert len(set(b.completion_mask.sum(1).tolist())) > 1  # rows really finished at different steps
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert a.finish_reasons == b.finish_reasons and a.completions == b.completions


def test_sample_next_token_filters_by_hand():
    from grpo.rollout.shared_prefix import sample_next_token

    # probs [0.5, 0.3, 0.15, 0.05]: top_p 0.7 keeps {0, 1} (0.5 < 0.7, 0.8 >= 0.7); top_k 1 keeps {0}
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    torch.manual_seed(0)
    seen = sample_next_token(logits, params(top_p=0.7))[0].bincount(minlength=4)
    assert seen[2] == seen[3] == 0 and seen[0] / seen[1] == pytest.approx(0.5 / 0.3, rel=0.1)
    assert set(sample_next_token(logits, params(top_k=1))[0].tolist()) == {0}
    assert set(sample_next_token(logits, params(temperature=0.0))[0].tolist()) == {0}
    # temperature 1, no filters: frequencies follow the probabilities
    freq = sample_next_token(logits, params())[0].bincount(minlength=4).float() / 4000
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03, rtol=0)


def test_a_rows_draw_does_not_depend_on_where_the_batch_holds_it():
    from grpo.rollout.shared_prefix import sample_next_token

    logits = torch.randn(5, 7)
    p = SamplingParams(group_size=1, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=1)
    torch.manual_seed(3)
    token, logprob = sample_next_token(logits, p, torch.tensor([0, 2, 5, 8, 9]))
    order = torch.tensor([3, 0, 4, 1, 2])  # the same rows held in another order
    torch.manual_seed(3)
    moved, moved_logprob = sample_next_token(logits[order], p, torch.tensor([0, 2, 5, 8, 9])[order])
    assert torch.equal(moved, token[order]) and torch.equal(moved_logprob, logprob[order])


def test_inverse_cdf_draw_by_hand():
    from grpo.rollout.shared_prefix import inverse_cdf_draw

    # cdf [0.125, 0.375, 0.375, 1.0] (exact in binary): token 2 (probability 0) is never drawn
    probs = torch.tensor([[0.125, 0.25, 0.0, 0.625]]).repeat(5, 1)
    u = torch.tensor([[0.0625], [0.125], [0.375], [0.99], [1.0 - 2**-53]], dtype=torch.float64)
    assert inverse_cdf_draw(probs, u).squeeze(1).tolist() == [0, 1, 3, 3, 3]
    # unnormalized rows, and a last token of probability 0 that rounding must not reach
    probs = torch.tensor([[2.0, 6.0, 0.0]])
    for value, token in [(0.2, 0), (0.25, 1), (1.0 - 2**-53, 1)]:
        assert inverse_cdf_draw(probs, torch.tensor([[value]], dtype=torch.float64)).item() == token


def test_shared_prefix_samples_follow_the_model_distribution(tiny_model_dir):
    # first sampled token of many completions vs the model's next-token distribution
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = render(tokenizer, ["1 + 1"])
    batch = SharedPrefixEngine(model, tokenizer).generate(prompt, params(group_size=3000, max_new_tokens=1, seed=0))
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -1], -1)
    freq = batch.completion_ids[:, 0].bincount(minlength=probs.shape[0]).float() / 3000
    assert (freq - probs).abs().max() < 0.03


def test_common_prefix_length_by_hand():
    from grpo.rollout.shared_prefix import common_prefix_length

    # rows [0 5 6 7] and [5 6 8] left-padded with 0: both start 5 6 -> 2
    ids = torch.tensor([[5, 6, 7], [5, 6, 8]])
    assert common_prefix_length(torch.tensor([[0, 5, 6, 7], [0, 5, 6, 8]]), torch.tensor([3, 3])) == 2
    assert common_prefix_length(torch.tensor([[5, 6, 7, 9], [0, 5, 6, 8]]), torch.tensor([4, 3])) == 2
    # identical prompts still keep one token each of their own
    assert common_prefix_length(ids[:1].repeat(2, 1), torch.tensor([3, 3])) == 2
    assert common_prefix_length(torch.tensor([[1, 2], [3, 2]]), torch.tensor([2, 2])) == 0


def test_long_common_prefix_prefilled_once_gives_the_same_greedy_tokens(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    system = {"role": "system", "content": "Think inside <think> tags, answer inside <answer> tags. " * 3}
    prompts = [tokenizer.apply_chat_template([system, {"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True)
               for q in ("1 + 1", "What is 12 + 30 + 7? Think step by step.", "7 + 8 + 9 =")]
    greedy = params(group_size=2, temperature=0.0, max_new_tokens=10)
    a = TransformersEngine(model, tokenizer).generate(prompts, greedy)
    b = SharedPrefixEngine(model, tokenizer).generate(prompts, greedy)
    assert torch.equal(a.completion_ids, b.completion_ids)


def test_auto_engine_is_vllm_where_installed_in_any_number_of_processes(monkeypatch):
    import grpo.rollout as rollout
    from grpo.config import RolloutConfig
    from grpo.rollout import engine_name

    installed = {"vllm": False}
    monkeypatch.setattr(rollout, "find_spec", lambda name: object() if installed.get(name) else None)
    assert engine_name(RolloutConfig()) == "shared_prefix"  # the default is auto
    installed["vllm"] = True
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert engine_name(RolloutConfig()) == "vllm"
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun: an engine per process
    assert engine_name(RolloutConfig()) == "vllm"
    assert engine_name(RolloutConfig(engine="transformers")) == "transformers"


def test_unequal_group_sizes_give_each_prompt_its_own_count(tiny_model_dir):
    # sizes (3, 1, 2): 6 rows, group by group; greedy rows of one prompt are its greedy completion,
    # so each row equals the row of its prompt in a run of G = 3, and both engines agree
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = render(tokenizer)
    for engine in (TransformersEngine(model, tokenizer), SharedPrefixEngine(model, tokenizer)):
        equal = engine.generate(prompts, params(group_size=3, temperature=0.0))
        unequal = engine.generate(prompts, params(group_size=3, temperature=0.0, group_sizes=(3, 1, 2)))
        rows = [0, 1, 2, 3, 6, 7]  # prompt 0's three rows, prompt 1's first, prompt 2's first two
        assert len(unequal) == 6
        assert torch.equal(unequal.prompt_ids, equal.prompt_ids[rows])
        C = unequal.completion_ids.shape[1]
        assert torch.equal(unequal.completion_ids, equal.completion_ids[rows, :C])
        assert unequal.completions == [equal.completions[i] for i in rows]
        sampled = engine.generate(prompts, params(group_sizes=(2, 4, 1), seed=0))
        assert len(sampled) == 7 and torch.equal(sampled.prompt_ids[2:6], sampled.prompt_ids[2:3].expand(4, -1))
    with pytest.raises(ValueError, match="group_sizes holds 2 sizes for 3 prompts"):
        engine.generate(prompts, params(group_sizes=(2, 2)))
    with pytest.raises(ValueError, match="expected integers >= 1"):
        params(group_sizes=(2, 0, 1))
