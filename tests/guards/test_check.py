"""`grpo check`: passes for rewards that tell right from wrong, fails (exit 1) for ones that cannot."""

import json
from fractions import Fraction
from pathlib import Path

import pytest

from grpo.cli import main
from grpo.config import load_config
from grpo.guards.check import EQUIVALENT, MODEL, as_fraction, equivalent_forms, run_check
from tests.support import REWARDS_FILE

LENGTH_REWARD = f"{REWARDS_FILE}:length_reward"
CONSTANT_REWARD = f"{Path(__file__).resolve()}:constant_reward"
SMALL_TASK = ["task.num_train=20", "task.num_eval=4"]


def constant_reward(completion, example):
    """Loaded by file path as a user reward: the same score for everything."""
    return 1.0


def write_jsonl(path: Path, answers: list[str]) -> Path:
    rows = [{"question": f"Question number {i}: how many?", "answer": a} for i, a in enumerate(answers)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_equivalent_forms_of_a_gold_answer():
    assert as_fraction("1,234") == 1234 and as_fraction("1/2") == Fraction(1, 2) and as_fraction("Paris") is None
    half = dict(equivalent_forms("1/2"))
    assert half["decimal"] == "0.5" and half["latex fraction"] == "\\frac{1}{2}" and "fraction" not in half
    assert dict(equivalent_forms("0.5"))["fraction"] == "1/2"
    forty_two = {text for _, text in equivalent_forms("42")}
    assert forty_two == {"42.0", "42 dollars", "\\boxed{42}"}
    assert "1,234" in {text for _, text in equivalent_forms("1234")}
    assert equivalent_forms("Paris") == [("boxed", "\\boxed{Paris}")]


def test_default_rewards_pass_on_chain_sum_with_model_samples(tiny_model_dir):
    cfg = load_config(None, [*SMALL_TASK, f"model.path={tiny_model_dir}", "rollout.max_new_tokens=8"])
    result = run_check(cfg, num_examples=4)
    assert result.ok, result.failures
    assert result.reward_names == ["format", "accuracy"]
    assert len(result.indices(MODEL)) == 4 * 2  # G=2 samples per example
    # every equivalent form written inside the tags gets full marks
    assert all(result.total[i] == 2.0 for i in result.indices(EQUIVALENT) if "in tags" in result.candidates[i].form)


def test_default_rewards_pass_on_a_gsm8k_style_jsonl(tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", [
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "She has 1,000 + 234 = 1,234.\n#### 1,234",
        "#### -5", "Half of it.\n#### 0.5", "#### 3/4", "#### 18", "#### 7", "#### 12"])
    code = main(["check", "--no-model", *SMALL_TASK, "task.source=file", f"task.path={data}", "task.num_eval=2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "check passed" in out and "wrong answers" in out and "equivalent forms" in out


@pytest.mark.parametrize("reward, message", [
    (CONSTANT_REWARD, "cannot tell right from wrong"),
    (LENGTH_REWARD, "does not get the top score"),
])
def test_rewards_that_cannot_discriminate_fail(reward, message, capsys):
    code = main(["check", "--no-model", *SMALL_TASK, f"rewards=[{{name: '{reward}'}}]"])
    out = capsys.readouterr().out
    assert code == 1
    assert message in " ".join(out.split())  # rich wraps long lines


def test_accuracy_fails_on_gold_answers_that_are_not_numbers(tmp_path):
    data = write_jsonl(tmp_path / "words.jsonl", ["blue", "Paris", "twelve apples", "see above", "N/A", "yes"])
    cfg = load_config(None, ["task.source=file", f"task.path={data}", "task.num_eval=1", "rewards=[{name: accuracy}]"])
    result = run_check(cfg, use_model=False)
    assert not result.ok
    assert "cannot tell right from wrong" in result.failures[0]
    assert "do not parse as math" in result.failures[0] and "accuracy" in result.failures[0]


def test_each_rewards_spread_is_printed_and_a_constant_one_named(capsys):
    # accuracy separates the written completions (the total varies); constant_reward gives 1 to all of them
    code = main(["check", "--no-model", *SMALL_TASK, f"rewards=[{{name: accuracy}}, {{name: '{CONSTANT_REWARD}'}}]"])
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert code == 0, out
    assert "reward spread" in out and "distinct" in out
    (line,) = [w for w in out.split("warning: ")[1:] if "constant_reward" in w and "scored all" in w]
    assert "written completions 1:" in line and "rewards[1]" in line, line
    assert "reward `accuracy` scored all" not in out
