"""Prompt templates (task.template: chat, r1_zero, plain text) and the assistant prefill."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo import rewards
from grpo.config import Config, TaskConfig, load_config
from grpo.rollout import SamplingParams, SharedPrefixEngine
from grpo.tasks import Example, PromptFormat, build_task
from grpo.tasks.prompts import R1_ZERO_SYSTEM, default_system_prompt
from tests.support.cli_runs import fails, quick, run_cli, tiny_args

SHOT = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "<think> 1 + 1 = 2 </think> <answer> 2 </answer>"},
        {"role": "user", "content": "What is {2} + 3?"}]


def example(messages):
    return Example("q", messages, "5")


def test_r1_zero_renders_plain_text_with_worked_examples_as_turns():
    fmt = PromptFormat.from_config(TaskConfig(template="r1_zero", assistant_prefix=" <think>"))
    assert fmt.render(None, example(SHOT)) == (
        "SYS User: What is 1 + 1? Assistant: <think> 1 + 1 = 2 </think> <answer> 2 </answer>\n"
        "User: What is {2} + 3? Assistant: <think>")  # the question's braces are text, not placeholders
    no_shots = [SHOT[0], SHOT[3]]
    assert fmt.render(None, example(no_shots)) == "SYS User: What is {2} + 3? Assistant: <think>"


def test_a_custom_template_and_one_without_system():
    fmt = PromptFormat.from_config(TaskConfig(template="{system}\n\nQ: {question}\nA: {{"))
    assert fmt.render(None, example(SHOT)) == (
        "SYS\n\nQ: What is 1 + 1?\nA: { <think> 1 + 1 = 2 </think> <answer> 2 </answer>\nQ: What is {2} + 3?\nA: {")
    bare = PromptFormat.from_config(TaskConfig(template="Question: {question}\nAnswer:"))
    assert bare.render(None, example([SHOT[0], SHOT[3]])) == "Question: What is {2} + 3?\nAnswer:"


def test_the_system_prompt_default_follows_the_template():
    assert default_system_prompt(TaskConfig(template="r1_zero")) == R1_ZERO_SYSTEM
    assert default_system_prompt(TaskConfig(template="r1_zero", system_prompt="mine")) == "mine"
    task = build_task(TaskConfig(template="r1_zero", num_train=3, num_eval=2))
    assert task.train[0].prompt[0] == {"role": "system", "content": R1_ZERO_SYSTEM}
    assert "<think>" in default_system_prompt(TaskConfig())  # chat: the default asking for the tags


@pytest.mark.parametrize("template, says", [
    ("Q: {question} {question}", "exactly once"), ("no placeholder", "exactly once"),
    ("{question} {answer}", "unknown placeholders"), ("{question} {system}", "before {question}"),
    ("{question", "does not parse"),
])
def test_bad_templates_name_the_field_and_what_is_allowed(template, says):
    with pytest.raises(ValueError, match="task.template") as e:
        load_config(None, [f"task.template={json.dumps(template)}"])
    assert says in str(e.value) and "r1_zero" in str(e.value)


def no_chat_template_dir(tiny_model_dir, tmp_path):
    """The tiny model as a base model: its tokenizer has no chat template."""
    path = tmp_path / "base"
    shutil.copytree(tiny_model_dir, path)
    (path / "chat_template.jinja").unlink()
    assert AutoTokenizer.from_pretrained(path).chat_template is None
    return path


def test_chat_template_on_a_base_tokenizer_is_a_clear_error(tiny_model_dir, tmp_path, monkeypatch, capsys):
    base = no_chat_template_dir(tiny_model_dir, tmp_path)
    with quick(monkeypatch):
        fails(capsys, 2, "train", *tiny_args(tmp_path, base), says=("task.template", "'chat'", "r1_zero"))


def test_a_base_model_trains_with_the_plain_template_a_prefill_and_a_stop(tiny_model_dir, tmp_path, monkeypatch,
                                                                          capsys):
    base = no_chat_template_dir(tiny_model_dir, tmp_path)
    args = tiny_args(tmp_path, base) + ["task.template=r1_zero", "task.assistant_prefix=' <think>'",
                                        "rollout.stop=['</answer>']", "rollout.max_new_tokens=8",
                                        "rollout.engine=shared_prefix"]  # auto is vLLM in .venv-vllm
    with quick(monkeypatch):
        status, _, err = run_cli(capsys, "train", *args)
    assert status == 0, err
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["completion"].startswith(" <think>") for s in samples)
    saved = load_config(str(tmp_path / "run" / "config.yaml"), [])
    assert (saved.task.template, saved.task.assistant_prefix, saved.rollout.stop) == ("r1_zero", " <think>",
                                                                                      ["</answer>"])


def test_the_prefill_is_prompt_tokens_out_of_the_loss_and_the_format_reward_sees_it(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = SharedPrefixEngine(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer)
    fmt = PromptFormat(None, "<think>")
    ex = example([{"role": "user", "content": "What is 2 + 3?"}])
    params = SamplingParams(group_size=2, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=6, seed=0)
    batch = fmt.sample(engine, tokenizer, [ex], params)
    prefix_ids = tokenizer("<think>", add_special_tokens=False)["input_ids"]
    rendered = tokenizer(fmt.render(tokenizer, ex), add_special_tokens=False)["input_ids"]
    assert rendered[-len(prefix_ids):] == prefix_ids  # the prefill ends the prompt
    assert batch.prompt_ids[0, -len(rendered):].tolist() == rendered
    assert torch.equal(batch.loss_mask, batch.completion_mask)  # only the sampled tokens are trained
    assert batch.loss_mask.shape[1] <= 6
    bare = engine.generate([fmt.render(tokenizer, ex)], params)  # the same draw, without the text prefix
    assert batch.completions == ["<think>" + c for c in bare.completions]
    # the format reward scores prefix + completion: the prefill's <think> counts toward the layout
    fmt_reward = rewards.build(Config().rewards[:1])
    scores = rewards.score(fmt_reward, ["<think>" + " 2 + 3 = 5 </think> <answer> 5 </answer>",
                                        " 2 + 3 = 5 </think> <answer> 5 </answer>"], [ex, ex], 10.0)
    assert scores.per_function["format"].tolist() == [1.0, 0.0]
