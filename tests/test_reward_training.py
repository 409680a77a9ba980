"""`grpo train-rm`: an outcome reward model trained from a run's samples, loaded by `reward_model`."""

import json

from test_trainer import tiny_config

from grpo import rewards
from grpo.cli import main
from grpo.config import save_config
from grpo.tasks import build_task


def _run_with_samples(tmp_path, tiny_model_dir, data_file):
    """A run directory whose samples say right (the sum) or wrong (99) for each training question."""
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file)
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    lines = []
    for ex in build_task(cfg.task).train:
        for answer, right in ((ex.answer, 1.0), ("99", 0.0)):
            lines.append({"step": 1, "example_id": ex.id, "question": ex.question, "answer": ex.answer,
                          "completion": f"<think> sum </think> <answer> {answer} </answer>",
                          "rewards": {"accuracy": right, "format": 1.0}})
    lines.append({"example_id": ex.id, "completion": "failed", "rewards": {"accuracy": None}})  # no label: skipped
    (run / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return cfg, run


def test_train_rm_learns_the_runs_labels_and_reward_model_loads_it(tmp_path, tiny_model_dir, data_file, capsys):
    cfg, run = _run_with_samples(tmp_path, tiny_model_dir, data_file)
    out = tmp_path / "rm"
    assert main(["train-rm", str(run), "--base", str(tiny_model_dir), "--out", str(out), "--epochs", "20",
                 "--lr", "3e-3", "--held-out", "0.25"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics == json.loads((out / "rm_metrics.json").read_text())
    assert metrics["num_train"] + metrics["num_held_out"] == 2 * len(build_task(cfg.task).train)
    assert metrics["held_out_accuracy_after"] >= 0.9
    fn = rewards.get("reward_model", path=str(out))
    ex = build_task(cfg.task).eval[0]
    right, wrong = fn.batch([f"<think> sum </think> <answer> {ex.answer} </answer>",
                             "<think> sum </think> <answer> 99 </answer>"], [ex, ex])
    assert right > 0 > wrong  # the logit is the log-odds of "right"


def test_train_rm_names_bad_input(tmp_path, tiny_model_dir, data_file, capsys):
    _, run = _run_with_samples(tmp_path, tiny_model_dir, data_file)
    args = ["train-rm", str(run), "--base", str(tiny_model_dir), "--out", str(tmp_path / "rm")]
    assert main([*args, "--label", "nope"]) == 2
    assert "no sample has a `nope` reward" in capsys.readouterr().err
    assert main([*args[:2], "--base", str(tmp_path), "--out", "x"]) == 2
    assert "not a local model directory" in capsys.readouterr().err
    with open(run / "samples.jsonl", "a") as f:
        f.write("{not json\n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{run / 'samples.jsonl'}:" in err and "not a JSON record" in err
    assert main(["train-rm", str(tmp_path), "--base", str(tiny_model_dir), "--out", "x"]) == 2
    assert "not a run directory" in capsys.readouterr().err
