"""rollout.group_policy adaptive on 2 processes (gloo, tests/compute/test_distributed.py's torchrun): the
budget is split over the whole step's prompts, each rank generates its share's sizes (so the ranks hold
different row counts), and a resumed run continues the estimates and sizes exactly."""

import json

from tests.compute.test_distributed import metrics, torchrun, train_args
from tests.support.runs import LENGTH_REWARD
from tests.training.test_adaptive_groups import SOLVED, four_prompts

# 4 prompts a step (train_args), all four of the file: a budget of 24 in [2, 12] each
ADAPTIVE = ("rollout.group_policy.name=adaptive", "rollout.group_policy.budget=24",
            "rollout.group_policy.min_group_size=2", "rollout.group_policy.max_group_size=12",
            "task.difficulty.decay=1.0", f"rewards=[{{name: '{LENGTH_REWARD}'}}, {{name: '{SOLVED}', weight: 0.5}}]",
            f"task.difficulty.success_reward='{SOLVED}'", "task.difficulty.success_threshold=1.0",
            "eval.num_examples=0", "log.num_samples=24")


def test_two_ranks_split_one_budget_and_resume_exactly(tmp_path, tiny_model_dir):
    data = four_prompts(tmp_path)
    whole, split = tmp_path / "whole", tmp_path / "split"
    torchrun(2, *train_args(tmp_path, tiny_model_dir, whole, 4, f"task.path={data}", *ADAPTIVE))
    rows = metrics(whole)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:  # every rank's groups: 4 prompts, 24 completions
        assert r["group/size_mean"] == 6 and 2 <= r["group/size_min"] <= r["group/size_max"] <= 12
        assert r["group/budget_used"] == 1.0
    assert rows[0]["group/size_min"] == rows[0]["group/size_max"] == 6  # every prompt unseen: an even split
    assert any(r["group/size_min"] < r["group/size_max"] for r in rows)
    # samples.jsonl holds rank 0's rows only: its two prompts' sizes, which differ from rank 1's at some step
    samples = [json.loads(line) for line in (whole / "samples.jsonl").read_text().splitlines()]
    rank0 = {step: sum(1 for s in samples if s["step"] == step) for step in (1, 2, 3, 4)}
    assert rank0[1] == 12 and any(n != 12 for n in rank0.values())
    torchrun(2, *train_args(tmp_path, tiny_model_dir, split, 2, f"task.path={data}", *ADAPTIVE))
    torchrun(2, *train_args(tmp_path, tiny_model_dir, split, 4, f"task.path={data}", "resume=true", *ADAPTIVE))
    assert metrics(split) == metrics(whole)


def test_two_ranks_split_one_token_budget_and_resume_exactly(tmp_path, tiny_model_dir):
    # a budget of 104 generated tokens: every rank holds the same expected lengths (gathered like the counts)
    tokens = tuple(a for a in ADAPTIVE if "budget" not in a) + (
        "rollout.group_policy.unit=tokens", "rollout.group_policy.budget=104", "rollout.max_new_tokens=12",
        "rollout.stop=[e, a]")
    data = four_prompts(tmp_path)
    whole, split = tmp_path / "whole", tmp_path / "split"
    torchrun(2, *train_args(tmp_path, tiny_model_dir, whole, 4, f"task.path={data}", *tokens))
    rows = metrics(whole)
    assert rows[0]["group/size_min"] == rows[0]["group/size_max"] == 2  # 104 tokens at 12 each: 8 completions, 2 each
    assert all(r["group/budget_used"] == r["tokens_generated"] / 104 for r in rows)
    assert len({r["group/size_mean"] for r in rows}) > 1  # the observed lengths (under 12) buy a 9th completion later
    torchrun(2, *train_args(tmp_path, tiny_model_dir, split, 2, f"task.path={data}", *tokens))
    torchrun(2, *train_args(tmp_path, tiny_model_dir, split, 4, f"task.path={data}", "resume=true", *tokens))
    assert metrics(split) == metrics(whole)
