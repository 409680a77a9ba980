"""`grpo train | eval`.

    grpo train                                  the demo recipe (configs/demo.yaml)
    grpo train configs/gsm8k.yaml train.num_steps=200 algorithm.beta=0.04
    grpo train ... resume=true                  continue from the newest checkpoint
    grpo train --help-config                    every config field with default and meaning
    grpo eval runs/demo [config.yaml] [overrides...]

A user's mistake (bad config, bad data, missing model) ends in one line naming what is
wrong and where, and exit status 2; a traceback means a bug in grpo.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from grpo.config import Config, describe, load_config

DEMO_CONFIG = "configs/demo.yaml"


def find_demo_config() -> Path:
    """configs/demo.yaml from the working directory, else from the source checkout."""
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (base / DEMO_CONFIG).is_file():
            return base / DEMO_CONFIG
    raise ValueError(f"no {DEMO_CONFIG} found; pass a config file: grpo train CONFIG.yaml")


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """First argument is a config file unless it looks like an override (`a.b=c`)."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def cmd_train(args: list[str]) -> int:
    from grpo.trainer import train

    path, overrides = split_args(args)
    if path is None and not overrides:
        path = str(find_demo_config())
    cfg = load_config(path, overrides)
    results = train(cfg)
    print_before_after(results)
    return 0


def print_before_after(results: dict) -> None:
    before, after = results.get("before"), results.get("after")
    if after is None:
        return
    line = f"held-out accuracy: {after['accuracy']:.1%}  (format {after['format']:.1%})"
    if before is not None:
        line = (f"held-out accuracy: {before['accuracy']:.1%} -> {after['accuracy']:.1%}   "
                f"format: {before['format']:.1%} -> {after['format']:.1%}")
    print(line)


def resolve_eval_target(target: str) -> tuple[str | None, list[str], Path | None]:
    """(run config, overrides, checkpoint) for a run directory, a checkpoint or a model directory.

    A run directory evaluates its final model with the run's own config; a checkpoint loads
    its weights over the run's base model; anything else is a model path.
    """
    p = Path(target)
    if not p.exists():
        raise ValueError(f"{target!r} does not exist (expected a model directory, run directory or checkpoint)")
    if (p / "config.yaml").is_file() and (p / "final").is_dir():
        return str(p / "config.yaml"), [f"model.path={p / 'final'}"], None
    if p.name.startswith("checkpoint-") and (p.parent / "config.yaml").is_file():
        return str(p.parent / "config.yaml"), [], p
    return None, [f"model.path={p}"], None


def cmd_eval(args: list[str]) -> int:
    from grpo.evaluate import print_table, run_eval

    if not args:
        raise ValueError("usage: grpo eval MODEL_OR_RUN_DIR [config.yaml] [overrides...]")
    run_config, target_overrides, checkpoint = resolve_eval_target(args[0])
    path, overrides = split_args(args[1:])
    cfg = load_config(path or run_config, [*target_overrides, *overrides])
    results = run_eval(cfg, checkpoint)
    print_table(results)
    print(json.dumps(results, indent=1))
    return 0


def cmd_help_config() -> int:
    for name, default, help_text in describe(Config):
        print(f"{name} = {default}\n    {help_text}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="grpo", description="GRPO training on verifiable rewards")
    parser.add_argument("command", choices=["train", "eval"])
    parser.add_argument("--help-config", action="store_true", help="list every config field")
    ns, rest = parser.parse_known_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub at run time
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if ns.help_config:
        return cmd_help_config()
    try:
        return cmd_train(rest) if ns.command == "train" else cmd_eval(rest)
    except ValueError as e:
        print(f"grpo {ns.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"grpo {ns.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
