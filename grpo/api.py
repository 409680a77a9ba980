"""The Python API: the same Config and the same loop as the CLI, from Python or a notebook.

    import grpo
    results = grpo.train("configs/demo.yaml",
                         rewards=[lambda completion, example: float("42" in completion), "format"],
                         **{"train.num_steps": 50}, output_dir="runs/mine")

`config` is a YAML path, a dict, a `Config` or None (the demo recipe); keyword overrides are
dotted config keys (`**{"rollout.group_size": 4}`) or top-level fields (`output_dir=...`).
Rewards and tools may be Python callables as well as names: a callable is registered under
a name that says what it was, `python:<qualified name> (<file>:<line>)`, which is what the
run's config.yaml records (a later `grpo train ... resume=true` from the CLI cannot find that
function by name: resume from Python with the same callables). A reward is a callable, a
name, a (callable or name, weight) pair or a {name, weight, options} dict.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from grpo.config import Config, from_dict, read_yaml, to_dict


def train(config: str | Path | dict | Config | None = None, *, model: Any = None, tokenizer: Any = None,
          rewards: list | None = None, tools: list | None = None, dataset: Any = None,
          **overrides: Any) -> dict[str, Any]:
    """Train as `grpo train` does; returns {"before": ..., "after": ...} held-out results.

    model, tokenizer: a loaded transformers model and its tokenizer. The model object is the
    policy, trained in place (no second copy in memory); its initial weights and the tokenizer
    are first saved into <output_dir>/base_model (with given.json: its class, name_or_path,
    size, dtype, device), which model.path then names, so the reference model (beta > 0), the
    vLLM engine, torchrun's other ranks and `grpo train ... resume=true` from the CLI read that
    directory. Resuming from Python, pass the same (untrained) model again: a checkpoint holds
    the trained weights (LoRA: the adapters over the object's weights). model.device and
    model.dtype: auto keeps the object where it is.

    dataset: a `datasets.Dataset` or `DatasetDict` (its `train` split trains, `test` or
    `validation` is held out), saved into <output_dir>/dataset so the run directory holds
    its data and resumes from it; a directory written by `save_to_disk`; or a dataset name
    (`org/name`, not an existing path) in the local Hugging Face cache, read offline
    (task.source=hub; task.subset picks its configuration). The columns are
    task.question_field / answer_field, as for files. Without a held-out split the held-out
    rows (task.num_eval) come out of `train`, none when eval.num_examples is 0 (no evaluation:
    every row trains), as for a data file (grpo.config.rules.held_out_for_evaluation)."""
    from grpo.training.trainer import train as run

    cfg = build_config(config, overrides, rewards, tools)
    if dataset is not None:
        cfg = build_config(cfg, _dataset_fields(dataset, Path(cfg.output_dir), cfg.resume))
    loaded = None
    if model is not None:
        from grpo.compute.models import LoadedModel

        loaded = LoadedModel.check(model, tokenizer)
        base = str(Path(cfg.output_dir) / "base_model")
        if cfg.model.path not in (None, base):  # a resumed run's config.yaml names the copy
            raise ValueError(f"model= was given and config field `model.path` = {cfg.model.path!r} too: "
                             "give one of them (model.path: null with model=)")
        cfg = build_config(cfg, {"model.path": base})
    elif tokenizer is not None:
        raise ValueError("tokenizer= comes with model= (a loaded model); for model.path its own tokenizer is used")
    return run(cfg, loaded)


def evaluate(target: str | Path | None = None, config: str | Path | dict | Config | None = None, *,
             model: Any = None, tokenizer: Any = None, rewards: list | None = None,
             **overrides: Any) -> dict[str, Any]:
    """Held-out evaluation as `grpo eval TARGET`: a run directory (its final model, its config),
    a checkpoint (its weights over the run's base model) or a model directory (with `config`,
    else the defaults). Or, instead of a target, a loaded model and its tokenizer, evaluated
    as they are (nothing saved; rollout.engine auto means shared_prefix here: vLLM needs a
    directory of weights, and the object's may differ from any on disk)."""
    from grpo.cli import resolve_eval_target
    from grpo.evaluation import run_eval

    if model is not None:
        from grpo.compute.models import LoadedModel

        if target is not None:
            raise ValueError("grpo.evaluate takes a target path or model=, not both")
        loaded = LoadedModel.check(model, tokenizer)
        # model.path: null, the object is what is evaluated
        cfg = build_config(config if config is not None else {}, {**overrides, "model.path": None}, rewards, None)
        if cfg.rollout.engine == "vllm":
            raise ValueError("config field `rollout.engine` = 'vllm' needs a model directory; with model= use "
                             "shared_prefix or transformers (or save the model and pass its directory)")
        if cfg.rollout.engine == "auto":
            cfg = build_config(cfg, {"rollout.engine": "shared_prefix"})
        return run_eval(cfg, None, loaded)
    if target is None:
        raise ValueError("grpo.evaluate needs a target (a run, checkpoint or model directory) or model=")

    run_config, target_overrides, checkpoint = resolve_eval_target(str(target))
    base = config if config is not None else run_config
    model = dict(item.split("=", 1) for item in target_overrides)  # model.path of the final model
    cfg = build_config(base if base is not None else {}, {**model, **overrides}, rewards, None)
    return run_eval(cfg, None if checkpoint is None else str(checkpoint))


def build_config(config: Any, overrides: dict[str, Any], rewards: list | None = None,
                 tools: list | None = None) -> Config:
    """The validated Config for `config` with `overrides`, rewards and tools applied."""
    data = _as_dict(config)
    for key, value in overrides.items():
        node = data
        *sections, name = key.split(".")
        for part in sections:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {key!r}: `{part}` is not a section")
        node[name] = value
    if rewards is not None:
        data["rewards"] = [_reward_spec(r) for r in rewards]
    if tools is not None:
        from grpo.episodes.tools import register_function

        data.setdefault("rollout", {})["tools"] = [register_function(t) if callable(t) else t for t in tools]
    return from_dict(Config, data).validate()


def _dataset_fields(dataset: Any, run_dir: Path, resume: bool) -> dict[str, Any]:
    """task.* overrides that read `dataset` as a file task (saving a datasets object first)."""
    if isinstance(dataset, (str, Path)):
        if not Path(dataset).exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(dataset)):
            return {"task.source": "hub", "task.name": str(dataset)}  # a name in the local HF cache
        return {"task.source": "file", "task.path": str(dataset)}
    import datasets

    if not isinstance(dataset, (datasets.Dataset, datasets.DatasetDict)):
        raise ValueError(f"dataset must be a datasets.Dataset, a DatasetDict or a save_to_disk directory; "
                         f"got {type(dataset).__name__}")
    splits = dataset if isinstance(dataset, datasets.DatasetDict) else datasets.DatasetDict({"train": dataset})
    if "train" not in splits:
        raise ValueError(f"the DatasetDict has splits {list(splits)}; grpo trains on a 'train' split")
    held_out = next((s for s in ("test", "validation") if s in splits), None)
    where = run_dir / "dataset"
    if not (resume and where.is_dir()):  # a resumed run keeps the data it started with
        splits.save_to_disk(str(where))
    fields = {"task.source": "file", "task.path": str(where / "train")}
    if held_out is not None:
        fields["task.eval_path"] = str(where / held_out)
    return fields


def _as_dict(config: Any) -> dict[str, Any]:
    if config is None:
        from grpo.cli import find_demo_config

        return read_yaml(find_demo_config())
    if isinstance(config, Config):
        return to_dict(config)
    if isinstance(config, dict):
        return copy.deepcopy(config)
    if isinstance(config, (str, Path)):
        return read_yaml(config)
    raise ValueError(f"config must be a YAML path, a dict, a grpo Config or None; got {type(config).__name__}")


def _reward_spec(reward: Any) -> dict[str, Any]:
    from grpo.rewards import register_function

    if isinstance(reward, dict):
        return dict(reward)
    weight = 1.0
    if isinstance(reward, tuple) and len(reward) == 2:
        reward, weight = reward
    if callable(reward):
        reward = register_function(reward)
    if not isinstance(reward, str):
        raise ValueError(f"a reward is a callable, a name, a (reward, weight) pair or a dict; got {reward!r}")
    return {"name": reward, "weight": float(weight)}

