"""Multi-turn episodes on the tiny model: ids as sampled across turns, inserted tokens out of
the loss, the turn and token budgets, tools and environments by import path."""

import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.compute.distributed import World
from grpo.config import AlgorithmConfig, load_config
from grpo.episodes.environment import ToolEnvironment, environment_factory, parse_tool_calls
from grpo.episodes.tools import load_tool
from grpo.episodes.turns import build_sampler
from grpo.rollout import SamplingParams, SharedPrefixEngine, TransformersEngine
from grpo.tasks import PromptFormat
from grpo.training.loss import PolicyLoss
from grpo.training.update import UpdateBatch, Updater, UpdateSettings
from grpo.trajectory import FINISH_LENGTH, FINISH_TURNS
from tests.support import ENVIRONMENTS_FILE
from tests.support.episodes import EXAMPLES, echo, sampler

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "12 * 7"}}</tool_call>'


class Recording:
    """The engine, with every generate_tokens call kept: (prompt ids, params, trajectory)."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate_tokens(self, prompts, params):
        out = self.engine.generate_tokens(prompts, params)
        self.calls.append((prompts, params, out))
        return out


@pytest.fixture(scope="module", params=[SharedPrefixEngine, TransformersEngine])
def engine(request, tiny_model_dir):
    return request.param(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                         AutoTokenizer.from_pretrained(tiny_model_dir))


PARAMS = SamplingParams(group_size=2, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8, seed=0, stop=(" ",))


def row_ids(t, i):
    return t.completion_ids[i][t.completion_mask[i].bool()].tolist()


def test_the_trainer_input_is_the_sampler_ids_across_turns(engine):
    recording = Recording(engine)
    t = sampler(recording, echo(turns=0)).sample(EXAMPLES, PARAMS)
    assert len(recording.calls) >= 2 and t.episodes is not None
    prompts = [t.prompt_ids[i][t.prompt_mask[i].bool()].tolist() for i in range(len(t))]
    for turn, (contexts, params, out) in enumerate(recording.calls):
        G = params.group_size  # turn 1: G samples of each prompt; later turns: one row per context
        for k in range(len(out)):
            context, sampled = contexts[k // G], row_ids(out, k)
            for i in range(len(t)):
                at = len(context) - len(prompts[i])  # where this turn's tokens start in row i
                full = prompts[i] + row_ids(t, i)
                got = full[len(context) : len(context) + len(sampled)]
                if at < 0 or full[: len(context)] != context or not got or got != sampled[: len(got)]:
                    continue
                # exactly as sampled: the ids, trained on, with the sampler's own log-probs
                assert t.loss_mask[i, at : at + len(got)].all()
                torch.testing.assert_close(t.sampler_logprobs[i, at : at + len(got)],
                                           out.sampler_logprobs[k, : len(got)].cpu())
                break
            else:
                raise AssertionError(f"turn {turn} row {k}: its context and tokens are in no episode")
    inserted = t.completion_mask.bool() & ~t.loss_mask.bool()
    assert inserted.any() and (t.sampler_logprobs[inserted] == 0).all()
    # an inserted reply is the chat template's text for it, as token ids
    reply = PromptFormat().continuation(engine.tokenizer, [{"role": "user", "content": "Go on."}], "hermes", False)
    assert "<|im_start|>user\nGo on.<|im_end|>\n<|im_start|>assistant\n" in reply


def test_unequal_groups_run_each_example_its_own_number_of_episodes(engine):
    # group_sizes (3, 1): 4 episodes, the first three of example 0; turn 1 prefills each prompt once
    recording = Recording(engine)
    t = sampler(recording, echo(turns=0)).sample(EXAMPLES, replace(PARAMS, group_sizes=(3, 1)))
    prompts, params, out = recording.calls[0]
    assert len(t) == 4 and len(prompts) == 2 and params.group_sizes == (3, 1) and len(out) == 4
    assert all(p.group_sizes is None and p.group_size == 1 for _, p, _ in recording.calls[1:])
    first = t.prompt_ids[0][t.prompt_mask[0].bool()].tolist()
    assert all(t.prompt_ids[i][t.prompt_mask[i].bool()].tolist() == first for i in range(3))
    assert t.prompt_ids[3][t.prompt_mask[3].bool()].tolist() != first


def test_inserted_tokens_get_no_gradient(engine):
    t = sampler(engine, echo(turns=0)).sample(EXAMPLES, PARAMS)
    inserted = t.completion_mask.bool() & ~t.loss_mask.bool()
    assert inserted.any() and t.loss_mask.any()
    model = engine.model
    params = [p for p in model.parameters() if p.requires_grad]
    loss = PolicyLoss.from_config(AlgorithmConfig(beta=0.1), 64)
    advantages = torch.linspace(-1, 1, len(t))
    old = torch.full(t.completion_ids.shape, -3.0)
    grads = []
    for poison in (False, True):
        old_p, ref_p = old.clone(), old.clone() - 0.1
        if poison:  # NaN / huge values at the inserted positions must reach neither loss nor gradient
            old_p[inserted], ref_p[inserted] = float("nan"), 1e30
        model.zero_grad(set_to_none=True)
        updater = Updater(model, params, loss, World(), UpdateSettings(2, 1.0, torch.device("cpu")))
        got = updater.accumulate_gradients(UpdateBatch(t, advantages, old_p, ref_p))
        assert torch.isfinite(torch.tensor(got["loss"]))
        grads.append([p.grad.clone() for p in params])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_the_turn_budget(engine):
    t = sampler(engine, echo(turns=0), max_turns=2, budget=200).sample(EXAMPLES, PARAMS)
    for episode, reason in zip(t.episodes, t.finish_reasons, strict=True):
        turns = sum(m["role"] == "assistant" for m in episode)
        assert turns <= 2
        if reason == FINISH_TURNS:  # ended only because the model had no turn left
            assert turns == 2
    assert FINISH_TURNS in t.finish_reasons


def test_the_token_budget(engine):
    t = sampler(engine, echo(turns=0), max_turns=10, budget=20).sample(EXAMPLES, PARAMS)
    assert int(t.completion_mask.sum(1).max()) <= 20
    assert FINISH_LENGTH in t.finish_reasons and FINISH_TURNS not in t.finish_reasons


def test_an_environment_that_is_done_ends_the_episode_and_one_that_raises_is_contained(engine):
    t = sampler(engine, echo(turns=1), max_turns=5, budget=200).sample(EXAMPLES, PARAMS)
    assert all(sum(m["role"] == "assistant" for m in e) == 1 for e in t.episodes)
    assert t.loss_mask.sum() == t.completion_mask.sum()  # nothing was inserted
    broken = sampler(engine, environment_factory(f"{ENVIRONMENTS_FILE}:Broken", {})).sample(EXAMPLES, PARAMS)
    assert all(e[-1]["role"] == "environment" and e[-1]["error"] == "raised" for e in broken.episodes)


def test_a_tool_call_is_answered_and_the_model_goes_on(engine):
    """The prefill makes the tiny model 'call' the calculator: the reply is inserted, inline."""
    env = lambda: ToolEnvironment([load_tool("calculator")], timeout=10.0)  # noqa: E731
    t = sampler(engine, env, max_turns=2, budget=120, tool_format="inline", prefix=CALL).sample(EXAMPLES, PARAMS)
    for i, episode in enumerate(t.episodes):
        assert episode[0]["content"].startswith(CALL)
        assert episode[1] == {"role": "tool", "name": "calculator", "content": "84", "error": None}
        assert "<tool_response>\n84\n</tool_response>" in t.completions[i]
        assert t.completions[i].episode is episode  # what a reward that wants the episode reads
        text = engine.tokenizer.decode(row_ids(t, i))
        assert "<tool_response>\n84\n</tool_response>" in text


def test_tool_calls_that_cannot_run_are_observations():
    def envstep(text, *tools):
        return ToolEnvironment([load_tool(s) for s in tools or ("calculator",)], timeout=0.5).step(text)

    replies, done = envstep("no call at all")
    assert (replies, done) == ([], True)
    cases = {
        "<tool_call>{not json}</tool_call>": ("invalid", "malformed", "not valid JSON"),
        '<tool_call>{"arguments": {}}</tool_call>': ("invalid", "malformed", "JSON object"),
        '<tool_call>{"name": "calculator", "arguments"': ("invalid", "malformed", "not closed"),
        '<tool_call>{"name": "search", "arguments": {}}</tool_call>': ("invalid", "unknown_tool", "no tool 'search'"),
        '<tool_call>{"name": "calculator", "arguments": {"x": 1}}</tool_call>': ("calculator", "bad_arguments", ""),
        '<tool_call>{"name": "calculator", "arguments": {"expression": "1/0"}}</tool_call>':
            ("calculator", "raised", "zero"),
    }
    for text, (name, kind, says) in cases.items():
        replies, done = envstep(text)
        assert not done and len(replies) == 1, text
        assert (replies[0]["name"], replies[0]["error"]) == (name, kind), (text, replies)
        assert says in replies[0]["content"], (text, replies)
    user = [f"{ENVIRONMENTS_FILE}:boom", f"{ENVIRONMENTS_FILE}:slow", f"{ENVIRONMENTS_FILE}:unprintable", f"{ENVIRONMENTS_FILE}:lookup"]
    calls = ('<tool_call>{"name": "boom", "arguments": {"x": 1}}</tool_call>'
             '<tool_call>{"name": "slow", "arguments": {"seconds": 5}}</tool_call>'
             '<tool_call>{"name": "unprintable", "arguments": {"x": 1}}</tool_call>'
             '<tool_call>{"name": "lookup", "arguments": "{\\"key\\": \\"pi\\"}"}</tool_call>')
    replies, _ = envstep(calls, *user)
    assert [(r["name"], r["error"]) for r in replies] == [("boom", "raised"), ("slow", "timeout"),
                                                          ("unprintable", "bad_output"), ("lookup", None)]
    assert replies[3]["content"] == "3.14159"
    assert len(parse_tool_calls(CALL * 3)) == 3


def test_config_builds_tools_and_environments_by_import_path(engine, tmp_path):
    cfg = load_config(None, [f"rollout.tools=[calculator, '{ENVIRONMENTS_FILE}:lookup']", "rollout.max_turns=2"])
    built = build_sampler(cfg, engine, engine.tokenizer)
    env = built.make_env()
    assert sorted(s["function"]["name"] for s in env.schemas) == ["calculator", "lookup"]
    # SmolLM2's / the tiny model's ChatML template ignores tools=: the schemas go into the system prompt
    assert '"name": "lookup"' in built.render(EXAMPLES[0]) and "<tool_call>" in built.render(EXAMPLES[0])
    cfg = load_config(None, [f"rollout.environment='{ENVIRONMENTS_FILE}:Echo'", "rollout.environment_options={turns: 1}"])
    assert build_sampler(cfg, engine, engine.tokenizer).make_env().turns == 1
    for bad, field in ((["rollout.tools=[nope]"], "rollout.tools"),
                       ([f"rollout.environment='{ENVIRONMENTS_FILE}:Echo'", "rollout.tools=[calculator]"], "rollout.environment"),
                       (["rollout.max_turns=0"], "rollout.max_turns")):
        with pytest.raises(ValueError, match=field):
            load_config(None, bad)
    with pytest.raises(ValueError, match="environment_options"):
        build_sampler(load_config(None, [f"rollout.environment='{ENVIRONMENTS_FILE}:Echo'",
                                         "rollout.environment_options={colour: red}"]), engine, engine.tokenizer)


def test_a_training_run_with_a_tool_logs_episodes_and_the_report_shows_them(tiny_model_dir, tmp_path, monkeypatch,
                                                                            capsys):
    from grpo.record.report import build_data
    from tests.support.cli_runs import metrics, quick, run_cli, tiny_args

    prefix = CALL.replace("12 * 7", "2 + 3")
    args = tiny_args(tmp_path, tiny_model_dir) + [
        "rollout.tools=[calculator]", "rollout.tool_format=inline", "rollout.max_turns=2",
        "rollout.max_episode_tokens=48", "rollout.stop=[' ']", "rollout.max_new_tokens=6",
        f"task.assistant_prefix='{prefix}'", "train.num_steps=2",
        "eval.num_examples=2", "rollout.engine=shared_prefix"]
    with quick(monkeypatch):
        status, _, err = run_cli(capsys, "train", *args)
    assert status == 0, err
    rows = metrics(tmp_path / "run")
    # a first turn that ends at the stop string (not at its token budget) runs the prefilled call
    assert sum(r.get("tools/calculator/calls", 0) for r in rows) > 0
    assert all(r.get("tools/calculator/errors", 0) == 0 and 1 <= r["episode/turns"] <= 2 for r in rows)
    evals = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert evals and all(0 <= r["tool_call_rate"] <= 1 for r in evals)  # held-out episodes ran the tools too
    data = build_data(tmp_path / "run")
    replies = [m for s in data["samples"] for m in s["episode"] if m["role"] == "tool"]
    assert replies and all(m["content"] == "5" and m["name"] == "calculator" for m in replies)
