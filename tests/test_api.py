"""The Python API (grpo.train / grpo.evaluate): the CLI's Config and loop, with callables."""

import pytest
import yaml
from cli_runs import quick, tiny_args

import grpo
from grpo.api import build_config
from grpo.config import load_config
from grpo.tools import load_tool


def overrides(tmp_path, model_dir):
    """tiny_args (CLI `key=value` strings) as the keyword overrides a Python user would write."""
    out = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in tiny_args(tmp_path, model_dir))}
    del out["rewards"]
    return out


def test_train_from_python_with_a_closure_and_a_lambda_reward(tiny_model_dir, tmp_path, monkeypatch):
    seen = []

    def odd_length(completion, example):  # a closure over the test's data
        seen.append(example.id)
        return float(len(completion) % 2)

    with quick(monkeypatch):
        results = grpo.train(None, rewards=[odd_length, (lambda completion, example: 0.5, 0.1), "format"],
                             **(overrides(tmp_path, tiny_model_dir) | {"eval.num_examples": 2}))
    assert seen and set(results) == {"before", "after"} and "accuracy" in results["after"]
    saved = load_config(str(tmp_path / "run" / "config.yaml"))
    names = [r.name for r in saved.rewards]
    # the run records what the functions were: qualified name, file and line
    assert names[0].startswith("python:test_train_from_python_with_a_closure_and_a_lambda_reward.<locals>.odd_length")
    assert "test_api.py:" in names[0] and "<lambda>" in names[1] and names[2] == "format"
    assert [r.weight for r in saved.rewards] == [1.0, 0.1, 1.0]
    with quick(monkeypatch):
        again = grpo.evaluate(tmp_path / "run", **{"eval.num_examples": 2})  # the run's final model
    assert again["num_examples"] == 2 and "strict_accuracy" in again


def test_configs_from_dicts_objects_and_dotted_keys_and_tools_as_functions(tmp_path):
    def lookup(key: str) -> str:
        """Look a key up.

        Args:
            key: the key
        """
        return key

    cfg = build_config({"train": {"num_steps": 3}}, {"rollout.group_size": 4, "output_dir": str(tmp_path)},
                       tools=[lookup, "calculator"])
    assert (cfg.train.num_steps, cfg.rollout.group_size, cfg.output_dir) == (3, 4, str(tmp_path))
    assert cfg.rollout.tools[0].startswith("python:") and cfg.rollout.tools[1] == "calculator"
    assert load_tool(cfg.rollout.tools[0]).name == "lookup"
    assert build_config(cfg, {"seed": 5}).seed == 5 and cfg.seed == 0  # a Config is copied, not changed
    with pytest.raises(ValueError, match="train.num_stepz"):
        build_config(None, {"train.num_stepz": 1})
    with pytest.raises(ValueError, match="a reward is"):
        build_config(None, {}, rewards=[42])
