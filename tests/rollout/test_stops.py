"""Stop strings (rollout.stop) in the transformers and shared_prefix engines (vLLM: test_vllm_engine.py)."""

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.config import load_config
from grpo.rollout import SamplingParams, SharedPrefixEngine, TransformersEngine
from grpo.rollout.stops import StopStrings
from grpo.trajectory import FINISH_STOP
from tests.support.trajectories import assert_cut_at_stops, first_cut, split_stop

QUESTIONS = ["What is 3 + 4?", "What is 12 + 30 + 7? Think step by step.", "1 + 1"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module", params=[TransformersEngine, SharedPrefixEngine])
def engine(request, tiny_model_dir, tokenizer):
    return request.param(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer)


def prompts(tokenizer):
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                          add_generation_prompt=True) for q in QUESTIONS]


def greedy(stop=()):
    return SamplingParams(group_size=1, temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=24, stop=stop)


def test_cut_finds_a_stop_split_across_tokens(tokenizer):
    ids = tokenizer("<think> 1 + 2 = 3 </think> <answer> 3 </answer> and then more", add_special_tokens=False)
    ids = ids["input_ids"]
    stops = StopStrings(tokenizer, ("</answer>",))
    pieces = [tokenizer.decode([i]) for i in ids]
    assert "</answer>" not in pieces  # the stop spans several tokens
    keep, text = stops.cut(ids)
    assert text == "<think> 1 + 2 = 3 </think> <answer> 3 </answer>"
    assert (keep, text) == first_cut(tokenizer, ids, ("</answer>",))
    assert stops.cut(ids[: keep - 1]) is None
    assert StopStrings(tokenizer, ("zzz",)).cut(ids) is None


def test_greedy_with_stops_equals_the_no_stop_output_cut_at_them(engine, tokenizer):
    plain = engine.generate(prompts(tokenizer), greedy())
    rows = [ids[m.bool()].tolist() for ids, m in zip(plain.completion_ids, plain.completion_mask, strict=True)]
    # stops from rows 0 and 1 (row 2 may or may not hold them: whatever it holds is checked)
    stops = (split_stop(tokenizer, rows[0]), split_stop(tokenizer, rows[1]))
    stopped = engine.generate(prompts(tokenizer), greedy(stops))
    assert_cut_at_stops(tokenizer, plain, stopped, stops, engine.pad_id)
    assert stopped.finish_reasons[:2] == [FINISH_STOP, FINISH_STOP]


def test_sampled_rows_stop_at_their_own_stop(engine, tokenizer):
    """Sampling: every row either ends at the first stop in its text or holds none at all."""
    stops = (" ", "<")  # frequent: most rows stop within a few tokens
    params = SamplingParams(group_size=4, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=16, seed=0, stop=stops)
    batch = engine.generate(prompts(tokenizer), params)
    for i, reason in enumerate(batch.finish_reasons):
        ids = batch.completion_ids[i][batch.completion_mask[i].bool()].tolist()
        cut = first_cut(tokenizer, ids, stops)
        if reason == FINISH_STOP:
            assert cut == (len(ids), batch.completions[i])
        else:
            assert cut is None
    assert batch.finish_reasons.count(FINISH_STOP) >= len(batch.finish_reasons) // 2
    # decoding stopped with the rows (a post-hoc cut alone would leave a full-width batch)
    assert batch.completion_ids.shape[1] == int(batch.completion_mask.sum(1).max())


def test_config_stop_reaches_the_sampling_params_and_is_validated():
    cfg = load_config(None, ["rollout.stop=['</answer>']"])
    assert SamplingParams.from_config(cfg.rollout).stop == ("</answer>",)
    with pytest.raises(ValueError, match="rollout.stop"):
        load_config(None, ["rollout.stop=['']"])
