"""`grpo train-rm`: an outcome reward model trained from a run's samples, loaded by `reward_model`."""

import json

from grpo import rewards
from grpo.cli import main
from grpo.config import save_config
from grpo.tasks import build_task
from tests.support.runs import tiny_config


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


def test_train_rm_prm_learns_the_scored_steps_and_process_reward_model_reads_it(tmp_path, tiny_model_dir, capsys):
    """Samples whose steps arithmetic_steps scored: each line one equation, right or `= 99`."""
    from grpo.tasks.base import Example

    check = rewards.get("arithmetic_steps")
    run = tmp_path / "run"
    run.mkdir()
    lines = []
    for a in range(8):
        for b in range(6):
            second = f"{a} + {b} = {a + b}" if (a + b) % 2 else f"{a} + {b} = 99"
            completion = f"{b} + {a} = {a + b}\n{second}\n"
            steps = [list(s) for s in check(completion, None)]
            lines.append({"question": f"What is {a} + {b}?", "completion": completion, "steps": steps})
    lines.append({"question": "q", "completion": "no steps", "steps": []})  # nothing to learn from: skipped
    (run / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "prm"
    assert main(["train-rm", str(run), "--prm", "--split", "newline", "--base", str(tiny_model_dir), "--out",
                 str(out), "--epochs", "15", "--lr", "3e-3", "--held-out", "0.25"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["num_train"] + metrics["num_held_out"] == 48 and metrics["steps"] == 96
    assert metrics["held_out_step_accuracy_after"] >= 0.9
    fn = rewards.get("process_reward_model", path=str(out), mode="token_classification", split="newline")
    scores = [s for _, s in fn("3 + 4 = 7\n4 + 3 = 99\n", Example("x", [], "7", {"question": "What is 3 + 4?"}))]
    assert scores[0] > 0.5 > scores[1]
    assert main(["train-rm", str(run), "--prm", "--split", "offsets", "--base", str(tiny_model_dir),
                 "--out", str(out)]) == 2
    assert "--split" in capsys.readouterr().err


def test_the_new_head_is_the_same_whatever_ran_before(tiny_model_dir):
    # from_pretrained draws a causal LM's new classification head from the global RNG: seeded,
    # the same base gives the same head (and the same trained reward model) in any process state
    import torch

    from grpo.reward_model.training import load_for_training

    heads = []
    for state in (1, 2):
        torch.manual_seed(state)
        before = torch.random.get_rng_state()
        model, _ = load_for_training(tiny_model_dir, seed=0)
        assert torch.equal(torch.random.get_rng_state(), before)  # the global stream left as it was
        heads.append(model.score.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])
    assert not torch.equal(heads[0], load_for_training(tiny_model_dir, seed=1)[0].score.weight)
