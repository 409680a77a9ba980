"""One short real training run on the bundled SmolLM2-135M-Instruct (the demo recipe, shrunk)."""

import json
from pathlib import Path

from transformers import AutoModelForCausalLM

from grpo.cli import main


def test_two_steps_of_the_demo_recipe_on_the_bundled_model(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["train", f"output_dir={out}", "train.num_steps=2", "train.prompts_per_step=1",
                   "rollout.group_size=4", "rollout.max_new_tokens=24", "train.micro_batch_size=4",
                   "eval.num_examples=4", "eval.batch_size=4", "eval.pass_k=1", "task.few_shot=1",
                   "log.progress=false", "log.tensorboard=false"])
    assert status == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(0 <= m["reward/mean"] <= 2 and m["grad_norm"] >= 0 for m in metrics)
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 2]
    printed = capsys.readouterr().out
    assert "held-out accuracy (greedy, lenient): " in printed and "held-out accuracy (greedy, strict" in printed
    assert (out / "report.html").is_file() and (out / "checkpoint-000002").is_dir()
    model = AutoModelForCausalLM.from_pretrained(Path(out) / "final")
    assert model.num_parameters() > 100e6
