"""The Python API (grpo.train / grpo.evaluate): the CLI's Config and loop, with callables."""

import json

import pytest
import torch
import yaml

import grpo
from grpo.api import build_config
from grpo.config import load_config
from grpo.episodes.tools import load_tool
from tests.support.cli_runs import LENGTH, quick, run_cli, tiny_args, write_sums
from tests.support.tiny import make_tiny_model


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


def test_train_on_a_datasets_object_and_a_save_to_disk_directory(tiny_model_dir, tmp_path, monkeypatch):
    import datasets

    rows = [{"q": f"What is {a} + {b}?", "a": str(a + b)} for a in range(5) for b in range(4)]
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:16]),
                                   "test": datasets.Dataset.from_list(rows[16:])})
    base = overrides(tmp_path, tiny_model_dir) | {"task.question_field": "q", "task.answer_field": "a",
                                                  "rewards": [{"name": "format"}]}
    for key in ("task.source", "task.path"):
        del base[key]
    with quick(monkeypatch):
        grpo.train(None, dataset=splits, **base)
    saved = load_config(str(tmp_path / "run" / "config.yaml"))
    assert saved.task.path == str(tmp_path / "run" / "dataset" / "train")  # the run holds its data
    assert saved.task.eval_path == str(tmp_path / "run" / "dataset" / "test")
    # a save_to_disk directory works as task.path from the CLI's config too
    from grpo.tasks import build_task

    splits["train"].save_to_disk(str(tmp_path / "saved"))
    task = build_task(build_config(None, {"task.source": "file", "task.path": str(tmp_path / "saved"),
                                          "task.question_field": "q", "task.answer_field": "a",
                                          "task.num_eval": 4, "task.few_shot": 0}).task)
    assert len(task.eval) == 4 and len(task.train) == 12 and task.train[0].answer in {r["a"] for r in rows}
    with pytest.raises(ValueError, match="dataset must be"):
        grpo.train(None, dataset=[1, 2], **base)


def test_a_50_row_dataset_without_evaluation_trains_on_every_row(tiny_model_dir, tmp_path, monkeypatch):
    import datasets

    # the demo recipe holds out task.num_eval = 100; eval.num_examples=0 asks for no evaluation
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(50)]
    base = overrides(tmp_path, tiny_model_dir) | {"rewards": [{"name": "format"}]}
    for key in ("task.source", "task.path", "task.num_eval"):
        del base[key]
    with quick(monkeypatch):
        results = grpo.train(None, dataset=datasets.Dataset.from_list(rows), **(base | {"eval.num_examples": 0}))
    assert results == {}  # no evaluation was asked for
    saved = load_config(str(tmp_path / "run" / "config.yaml"))
    assert saved.task.num_eval == 0  # nothing held out: every row but the worked example trains
    with pytest.raises(ValueError, match=r"50 rows.*task.num_eval = 100.*eval.num_examples=0"):
        grpo.train(None, dataset=datasets.Dataset.from_list(rows), **(base | {"eval.num_examples": 100,
                                                                            "output_dir": str(tmp_path / "r2")}))


def test_a_broken_save_to_disk_directory_is_one_clear_error(tmp_path):
    from grpo.tasks import build_task

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a readable save_to_disk dataset"):
        build_task(build_config({}, {"task.source": "file", "task.path": str(broken)}).task)


def test_the_readme_example_a_loaded_model_a_cached_dataset_and_trackers_then_resume_from_the_cli(
        tiny_model_dir, tmp_path, monkeypatch, capsys, offline_trackers):
    model, tokenizer = make_tiny_model(seed=3)  # built here: no directory behind it
    model.config._name_or_path = "built-in-a-notebook"
    tokenizer.padding_side = "right"
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    sums = (tmp_path / "sums.jsonl")
    write_sums(sums)
    hub_cache_snapshot(tmp_path / "hf-home", "acme/sums", {"train.jsonl": sums.read_text()})
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    args = overrides(tmp_path, tiny_model_dir) | {"algorithm.beta": 0.1, "eval.num_examples": 2,
                                                  "log.report_to": ["wandb", "mlflow"]}
    for key in ("model.path", "task.source", "task.path"):
        del args[key]
    with quick(monkeypatch):
        grpo.train(None, model=model, tokenizer=tokenizer, dataset="acme/sums", rewards=[LENGTH], **args)
    run = tmp_path / "run"
    assert load_config(str(run / "config.yaml")).task.name == "acme/sums"
    assert load_config(str(run / "config.yaml")).model.path == str(run / "base_model")
    given = json.loads((run / "base_model" / "given.json").read_text())  # what the object was
    assert given["class"] == "transformers.models.llama.modeling_llama.LlamaForCausalLM"
    assert given["name_or_path"] == "built-in-a-notebook" and given["num_parameters"] == model.num_parameters()
    # the copy holds the initial weights (the reference's); the object itself was trained
    from safetensors.torch import load_file

    copy = load_file(run / "base_model" / "model.safetensors")
    assert all(torch.equal(copy[k], initial[k]) for k in copy)
    assert any(not torch.equal(v, initial[k]) for k, v in model.state_dict().items())
    assert tokenizer.padding_side == "right"  # the caller's tokenizer is not changed (grpo pads a copy left)
    # the run directory stands on its own: the CLI resumes it from the copy
    status, _, err = run_cli(capsys, "train", str(run / "config.yaml"), "resume=true", "train.num_steps=2")
    assert status == 0, err
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    # both trackers got both steps, the resumed one in the same tracker run
    from mlflow.tracking import MlflowClient

    from tests.support.tracker_files import wandb_history

    assert [row["step"] for row in wandb_history(run) if "loss" in row] == [1, 2]
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow' / 'mlflow.db'}")
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    assert [m.step for m in client.get_metric_history(run_id, "reward/mean")] == [1, 2]
    with quick(monkeypatch):
        results = grpo.evaluate(None, str(run / "config.yaml"), model=model, tokenizer=tokenizer,
                                **{"eval.num_examples": 2})
    assert results["num_examples"] == 2
    with pytest.raises(ValueError, match="model= needs its tokenizer"):
        grpo.train(None, model=model, **args)
    with pytest.raises(ValueError, match="`model.path`"):
        grpo.train(None, model=model, tokenizer=tokenizer, **(args | {"model.path": str(tiny_model_dir)}))


def hub_cache_snapshot(home, repo_id, files):
    """A dataset in huggingface_hub's cache layout, as `hf download --repo-type dataset` leaves it:
    blobs named by hash, a snapshot of symlinks to them, refs/main naming the snapshot."""
    import hashlib

    repo = home / "hub" / f"datasets--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    for name, text in files.items():
        blob = repo / "blobs" / hashlib.sha256(text.encode()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_text(text)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_a_dataset_name_in_the_local_hugging_face_cache_is_read_offline(tmp_path, monkeypatch):
    import socket

    from grpo.api import _dataset_fields
    from grpo.tasks import build_task

    def jsonl(rows):
        return "".join(json.dumps({"q": f"What is {a} + {b}?", "a": str(a + b)}) + "\n" for a, b in rows)

    home = tmp_path / "hf-home"
    hub_cache_snapshot(home, "acme/sums", {"data/train.jsonl": jsonl([(a, 1) for a in range(10)]),
                                           "data/test.jsonl": jsonl([(a, 2) for a in range(3)])})
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    connects = []

    def no_network(self, address):
        connects.append(address)
        raise OSError("the test allows no network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    columns = {"task.question_field": "q", "task.answer_field": "a", "task.few_shot": 0, "task.num_eval": 2}
    fields = _dataset_fields("acme/sums", tmp_path / "run", False)  # grpo.train(dataset="acme/sums")
    assert fields == {"task.source": "hub", "task.name": "acme/sums"}
    task = build_task(build_config({}, fields | columns).task)
    assert [ex.id for ex in task.eval] == ["test:0", "test:1"]  # the test split is held out
    assert len(task.train) == 10 and task.train[3].answer == "4"
    with pytest.raises(ValueError, match=r"^config field `task.name` = 'acme/nope' \(task.source=hub, offline: "
                                         r"nothing is downloaded\): it is in neither the hub cache"):
        build_task(build_config({}, {"task.source": "hub", "task.name": "acme/nope"} | columns).task)
    with pytest.raises(ValueError, match=r"task.subset"):
        build_task(build_config({}, fields | columns | {"task.subset": "nope"}).task)
    assert connects == []
