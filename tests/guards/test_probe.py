"""The first-run check (grpo.guards.probe): the silent failures, each in one line naming the field."""

from grpo.config import Config
from grpo.guards.probe import ProbeReport, problems
from tests.support.cli_runs import LENGTH, REWARDS, metrics, quick, run_cli, tiny_args
from tests.support.rewards_for_tests import constant_reward, length_reward


def report(**changes):
    fields = dict(prompt="<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nq", system_prompt="Be brief.",
                  truncation_rate=0.0, zero_variance_groups=0.5, reward_min=0.0, reward_max=2.0, num_samples=16)
    return ProbeReport(**(fields | changes))


def test_each_problem_is_one_line_naming_the_field():
    cfg = Config()
    assert problems(report(), cfg) == []
    (line,) = problems(report(truncation_rate=0.75), cfg)
    assert "75% of 16 probe completions" in line and "rollout.max_new_tokens = 128" in line
    (line,) = problems(report(reward_min=1.0, reward_max=1.0, zero_variance_groups=1.0), cfg)
    assert "same total reward (1)" in line and "`rewards`" in line
    (line,) = problems(report(zero_variance_groups=1.0), cfg)
    assert "rollout.group_size = 8" in line and "rollout.temperature" in line
    (line,) = problems(report(prompt="<|im_start|>user\nq"), cfg)
    assert "system prompt" in line and "task.system_prompt" in line


def test_train_warns_about_a_truncating_budget_and_rewards_that_cannot_separate(tiny_model_dir, tmp_path,
                                                                                monkeypatch, capsys):
    # the tiny random model never answers: accuracy alone scores everything 0; 4 tokens truncate every sample
    args = tiny_args(tmp_path, tiny_model_dir) + ["rewards=[{name: accuracy}]"]
    with quick(monkeypatch):
        status, _, err = run_cli(capsys, "train", *args)
    assert status == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning (first-run check)")]
    assert len(warnings) == 2, err
    assert "hit the token budget (rollout.max_new_tokens = 4)" in warnings[0]
    assert "same total reward (0)" in warnings[1]
    assert (tmp_path / "run" / "prompt.txt").read_text().endswith("<|im_start|>assistant\n")


def test_the_check_leaves_the_run_unchanged(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Its own seed: a run with the check trains exactly like one without it."""
    rows = []
    for on in ("true", "false"):
        args = [a for a in tiny_args(tmp_path, tiny_model_dir) if not a.startswith(("output_dir", "train.num_steps"))]
        args += [f"train.first_run_check={on}", f"output_dir={tmp_path / on}", "train.num_steps=2"]
        with quick(monkeypatch):
            assert run_cli(capsys, "train", *args)[0] == 0
        rows.append(metrics(tmp_path / on, drop_times=True))
    assert rows[0] == rows[1]
    assert (tmp_path / "true" / "prompt.txt").is_file() and not (tmp_path / "false" / "prompt.txt").exists()


def test_train_names_a_reward_that_scores_every_completion_alike_while_the_total_varies(tiny_model_dir, tmp_path,
                                                                                        monkeypatch, capsys):
    # tiny_args rewards length (varies: the total varies) and format, which a random model never satisfies:
    # format is 0 on all 2 x G=4 probe completions, invisible in the total (issue 33: the calculator recipe)
    with quick(monkeypatch):
        status, _, err = run_cli(capsys, "train", *tiny_args(tmp_path, tiny_model_dir))
    assert status == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning (first-run check)")]
    (line,) = [w for w in warnings if "reward `format`" in w]
    assert "scored all 8 probe completions 0:" in line and "rewards[1]" in line, line
    assert not any("length_reward" in w for w in warnings), warnings
    assert not any("same total reward" in w for w in warnings), warnings


def test_a_reward_that_fails_on_every_completion_is_reported_as_failing_not_constant(tiny_model_dir, tmp_path,
                                                                                      monkeypatch, capsys):
    broken = f"{REWARDS}:broken_reward"
    args = tiny_args(tmp_path, tiny_model_dir) + [f"rewards=[{{name: '{LENGTH}'}}, {{name: '{broken}'}}]"]
    with quick(monkeypatch):
        status, _, err = run_cli(capsys, "train", *args)
    assert status == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning (first-run check)")]
    (line,) = [w for w in warnings if "broken_reward" in w]
    assert "failed on all 8 probe completions" in line and "scored all" not in line, line


def test_spreads_judge_each_function_and_leave_step_rewards_out_of_the_constant_test():
    import torch

    from grpo.guards.probe import reward_problems, spreads
    from grpo.rewards import RewardScores
    from grpo.rewards.steps import step_reward

    nan = float("nan")
    fns = [("varies", 1.0, length_reward), ("flat", 1.0, constant_reward), ("half_broken", 1.0, constant_reward),
           ("broken", 1.0, constant_reward), ("steps", 1.0, step_reward("newline")(constant_reward)),
           ("no_steps", 1.0, step_reward("newline")(constant_reward)), ("unweighted", 0.0, constant_reward)]
    rows = {"varies": [0.0, 1.0, 2.0, 1.0], "flat": [0.0] * 4, "half_broken": [2.0, nan, 2.0, nan],
            "broken": [nan] * 4, "steps": [0.5] * 4,  # e.g. steps [1, 0] and [0, 1]: one mean, still a signal
            "no_steps": [nan] * 4, "unweighted": [3.0] * 4}
    scores = RewardScores(torch.zeros(4), {k: torch.tensor(v) for k, v in rows.items()},
                          {"half_broken": 2, "broken": 4})
    got = {s.name: s for s in spreads(fns, scores)}
    # varies: [0, 1, 2, 1]: mean 1, population std sqrt((1 + 0 + 1 + 0) / 4) = 0.707; 3 distinct values
    assert (got["varies"].min, got["varies"].max, got["varies"].num_distinct) == (0.0, 2.0, 3)
    assert abs(got["varies"].std - 0.5 ** 0.5) < 1e-6
    assert got["half_broken"].num_failed == 2 and got["no_steps"].num_failed == 0
    lines = reward_problems(list(got.values()), "probe completions", total_varies=True)
    assert len(lines) == 4, lines
    assert "reward `flat` scored all 4 probe completions 0:" in lines[0] and "rewards[1]" in lines[0]
    assert "reward `half_broken` scored all 2 probe completions 2 (2 more failed)" in lines[1]
    assert "reward `broken` failed on all 4 probe completions" in lines[2]
    assert "step reward `no_steps` found no step" in lines[3] and "rewards[5].steps" in lines[3]
    # a constant total has its own line: only the failing functions are named then
    assert len(reward_problems(list(got.values()), "probe completions", total_varies=False)) == 2
