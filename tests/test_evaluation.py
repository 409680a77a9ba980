"""Evaluation metrics on canned completions: greedy accuracy, format, pass@k, sampled accuracy."""

import pytest
import torch

from grpo.config import load_config
from grpo.evaluation import evaluate
from grpo.tasks.base import Example
from tests.support.trajectories import sampled_trajectory

EXAMPLES = [Example(f"q{i}", [{"role": "user", "content": f"{i} + 1 ="}], str(i + 1)) for i in range(3)]


class CannedEngine:
    """Greedy calls get `greedy[i]`; sampled calls get `sampled[i]` (k completions per prompt)."""

    def __init__(self, greedy, sampled):
        self.greedy, self.sampled = greedy, sampled

    def generate(self, prompts, params):
        index = [int(p.split()[0]) for p in prompts]  # prompt "i + 1 =" -> example i
        texts = [self.greedy[i] for i in index] if params.greedy else [t for i in index for t in self.sampled[i]]
        n = len(texts)
        ids = torch.ones(n, 3, dtype=torch.long)
        return sampled_trajectory(ids, ids.clone(), ids.clone(), ids.clone(), texts, ["eos"] * n)


class Tok:
    chat_template = "last message"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return messages[-1]["content"]


def test_accuracy_format_pass_at_k_and_sampled_accuracy():
    right = lambda i: f"<think> {i} + 1 = {i + 1} </think> <answer> {i + 1} </answer>"  # noqa: E731
    greedy = [right(0), "the answer is 2", "<answer> 7 </answer>"]  # right+format, right (last number), wrong
    sampled = [[right(0), "9", "9", "9"], ["9", "9", "9", "9"], [right(2)] * 4]
    cfg = load_config(None, ["eval.pass_k=4", "eval.batch_size=2"])
    results = evaluate(CannedEngine(greedy, sampled), Tok(), EXAMPLES, cfg)
    # greedy: q0 right, q1 right ("2" is the last number), q2 wrong -> 2/3; format only q0 -> 1/3
    assert results["accuracy"] == 2 / 3 and results["format"] == 1 / 3
    # pass@4: q0 (one of four) and q2 -> 2/3; sampled accuracy (1/4 + 0 + 1) / 3 = 0.41667
    assert results["pass@4"] == 2 / 3
    assert abs(results["sampled_accuracy"] - 1.25 / 3) < 1e-9
    assert results["num_examples"] == 3 and results["mean_length"] == 3
    # strict: the right answer inside <answer> and the whole layout: greedy only q0 -> 1/3
    # (q1's untagged "2" is lenient-right only); sampled (1/4 + 0 + 1) / 3 as both rights are tagged
    assert results["strict_accuracy"] == 1 / 3
    assert abs(results["sampled_strict_accuracy"] - 1.25 / 3) < 1e-9


def test_strict_accuracy_needs_the_tags_and_the_layout():
    strict_wrong = ["the answer is 1", "<answer> 1 </answer>", "\\boxed{1}"]  # no tags / no think / boxed only
    cfg = load_config(None, ["eval.pass_k=1"])
    for text in strict_wrong:
        results = evaluate(CannedEngine([text], []), Tok(), EXAMPLES[:1], cfg)
        assert (results["accuracy"], results["strict_accuracy"]) == (1.0, 0.0), text
    # training can drop the fallback too: the accuracy reward's option
    from grpo import rewards

    fn = rewards.get("accuracy", fallback=False)
    assert fn("the answer is 1", EXAMPLES[0]) == 0.0 and fn("<answer> 1 </answer>", EXAMPLES[0]) == 1.0
    with pytest.raises(ValueError, match="fallback"):
        rewards.get("accuracy", fallback="yes")


def test_strict_accuracy_is_the_headline_and_lenient_stands_beside_it(capsys):
    from grpo.cli import print_before_after

    greedy = ["<think> 0 + 1 = 1 </think> <answer> 1 </answer>", "2", "7"]
    cfg = load_config(None, ["eval.pass_k=2", "eval.batch_size=3", "eval.temperature=0.7"])
    results = evaluate(CannedEngine(greedy, [["9", "9"]] * 3), Tok(), EXAMPLES, cfg)
    keys = [k for k in results if k.endswith("accuracy")]
    assert keys == ["strict_accuracy", "accuracy", "sampled_strict_accuracy", "sampled_accuracy"]
    print_before_after({"before": results, "after": results}, cfg.eval.temperature)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("held-out accuracy (greedy, strict") and lines[1].startswith(
        "held-out accuracy (greedy, lenient)")
    assert lines[2] == "held-out accuracy (sampled, T=0.7, strict): 0.0% -> 0.0%"  # the temperature evaluated at
