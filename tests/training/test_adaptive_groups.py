"""rollout.group_policy adaptive end to end on one process: unequal groups through the whole step,
their metrics and samples, and a resume that continues the estimates and sizes exactly."""

import json
from pathlib import Path

from grpo.training.trainer import train
from tests.support import REWARDS_FILE
from tests.support.runs import LENGTH_REWARD, read_metrics, tiny_config

SOLVED = f"{REWARDS_FILE}:answer_decides"
ADAPTIVE = ("rollout.group_policy.name=adaptive", "rollout.group_policy.budget=12",
            "rollout.group_policy.min_group_size=2", "rollout.group_policy.max_group_size=10",
            "task.difficulty.decay=1.0",
            f"rewards=[{{name: '{LENGTH_REWARD}'}}, {{name: '{SOLVED}', weight: 0.5}}]",
            f"task.difficulty.success_reward='{SOLVED}'", "task.difficulty.success_threshold=1.0",
            "train.micro_batch_size=3", "eval.num_examples=0", "log.num_samples=12")


def four_prompts(tmp_path):
    """Four prompts, two always solved, two by their length (answer_decides): every step revisits
    some, and their estimates part."""
    path = tmp_path / "four.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                            for q, a in (("What is 3 - 2?", "1"), ("What is 12 + 30 + 7?", "49"), ("5 - 4", "1"),
                                         ("What is 50 + 6?", "56"))))
    return path


def whole_and_resumed(tmp_path, tiny_model_dir, steps, first, *overrides):
    """The configs of a run of `steps` on four_prompts, and of one stopped after `first` steps and resumed."""
    data_file = four_prompts(tmp_path)
    full = tiny_config(tmp_path / "full", tiny_model_dir, data_file, f"train.num_steps={steps}", *overrides)
    train(full)
    train(tiny_config(tmp_path / "half", tiny_model_dir, data_file, f"train.num_steps={first}", *overrides))
    resumed = tiny_config(tmp_path / "half", tiny_model_dir, data_file, f"train.num_steps={steps}", "resume=true",
                          *overrides)
    train(resumed)
    return full, resumed


def samples_by_step(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "samples.jsonl").read_text().splitlines()]
    out = {}
    for row in rows:
        out.setdefault(row["step"], []).append(row)
    return out


def test_an_adaptive_run_trains_unequal_groups_and_records_their_sizes(tmp_path, tiny_model_dir, data_file):
    cfg = tiny_config(tmp_path, tiny_model_dir, four_prompts(tmp_path), "train.num_steps=6", *ADAPTIVE)
    train(cfg)
    metrics = read_metrics(cfg.output_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    for m in metrics:
        # two prompts share a budget of 12: their mean is 6, each within [2, 10], all of it generated
        assert m["group/size_mean"] == 6 and 2 <= m["group/size_min"] <= m["group/size_max"] <= 10
        assert m["group/size_min"] + m["group/size_max"] == 12 and m["group/budget_used"] == 1.0
    # step 1: both prompts unseen (estimate 0.5 each): the budget splits evenly; later the estimates part
    assert metrics[0]["group/size_min"] == metrics[0]["group/size_max"] == 6
    assert any(m["group/size_min"] < m["group/size_max"] for m in metrics)
    # samples.jsonl: every completion of a step (12 rows) with its group's size; a group's rows are consecutive
    for step, rows in samples_by_step(cfg.output_dir).items():
        sizes = [r["group_size"] for r in rows]
        assert len(rows) == 12, step
        k, groups = 0, []
        while k < len(rows):
            group = rows[k : k + sizes[k]]
            assert {r["example_id"] for r in group} == {group[0]["example_id"]} and {r["group_size"] for r in group} == {
                len(group)}
            groups.append(len(group))
            k += sizes[k]
        assert sum(groups) == 12
    from grpo.record import report

    plots = {p["id"]: [s["name"] for s in p["series"]] for p in report.build_data(Path(cfg.output_dir))["plots"]}
    assert plots["group_size"] == ["group/size_mean", "group/size_min", "group/size_max"]
    assert plots["budget"] == ["group/budget_used"]


def test_an_adaptive_run_resumes_exactly(tmp_path, tiny_model_dir, data_file):
    full, resumed = whole_and_resumed(tmp_path, tiny_model_dir, 6, 3, *ADAPTIVE)
    # the estimates (sampling.json) come back with the checkpoint, so steps 4-6 split the budget alike
    # (unequally at steps 5 and 6: test_an_adaptive_run_trains_unequal_groups...)
    metrics = read_metrics(resumed.output_dir)
    assert read_metrics(full.output_dir) == metrics and metrics[4]["group/size_min"] < metrics[4]["group/size_max"]
    assert samples_by_step(full.output_dir)[6] == samples_by_step(resumed.output_dir)[6]


def test_unequal_groups_work_with_dynamic_sampling_aux_terms_and_step_rewards(tmp_path, tiny_model_dir):
    # every reader of groups at once: dynamic sampling's kept groups, SFT / DPO rows, process advantages
    steps = f"{REWARDS_FILE}:character_steps"
    overrides = [o for o in ADAPTIVE if not o.startswith("rewards=")]
    cfg = tiny_config(tmp_path, tiny_model_dir, four_prompts(tmp_path), "train.num_steps=6", *overrides,
                      f"rewards=[{{name: '{LENGTH_REWARD}'}}, {{name: '{SOLVED}', weight: 0.5}}, "
                      f"{{name: '{steps}', steps: offsets}}]", "rollout.max_new_tokens=9",
                      "algorithm.dynamic_sampling=true", "algorithm.aux_losses=[{name: sft}, {name: dpo}]",
                      "algorithm.mask_truncated_completions=true")
    train(cfg)
    metrics = read_metrics(cfg.output_dir)
    assert len(metrics) == 6 and any(m["group/size_min"] < m["group/size_max"] for m in metrics)
    for m in metrics:
        assert m["process/steps"] > 0 and m["aux/dpo/groups"] >= 0 and "aux/sft" in m
        assert m["dynamic/groups_with_signal"] <= 2 and 0 < m["group/budget_used"] <= 1


TOKENS = tuple(a for a in ADAPTIVE if "budget" not in a) + ("rollout.group_policy.unit=tokens",
                                                             "rollout.group_policy.budget=48", "rollout.max_new_tokens=12",
                                                             "rollout.stop=[e, a]")


def test_a_token_budget_splits_by_expected_length_and_resumes_exactly(tmp_path, tiny_model_dir):
    full, resumed = whole_and_resumed(tmp_path, tiny_model_dir, 5, 2, *TOKENS)
    metrics = read_metrics(full.output_dir)
    assert read_metrics(resumed.output_dir) == metrics  # the lengths come back with the checkpoint too
    state = json.loads((Path(full.output_dir) / "checkpoint-000005" / "sampling.json").read_text())
    # step 1: nothing seen, every completion expected at the episode budget of 12 tokens: 48 / 12 = 4
    # completions, 2 each; later the observed lengths (stop strings end most completions early) buy more
    assert (metrics[0]["group/size_min"], metrics[0]["group/size_max"]) == (2, 2)
    assert len({m["group/size_mean"] for m in metrics}) > 1 and max(m["group/size_mean"] for m in metrics) > 2
    # what each step generated is what group/budget_used reads: tokens over the 48 of the budget
    assert all(m["group/budget_used"] == m["tokens_generated"] / 48 for m in metrics)
    seen = sum(n for _, n in state["lengths"].values())
    assert state["all_lengths"][0] == sum(m["tokens_generated"] for m in metrics) and 0 < seen
