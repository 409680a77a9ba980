"""`grpo train | eval | check | report | serve-ref | serve-rollout | train-rm`.

    grpo train [overrides...]                   the demo recipe (configs/demo.yaml)
    grpo train configs/gsm8k.yaml train.num_steps=200 algorithm.beta=0.04
    grpo train ... resume=true                  continue from the newest checkpoint
    grpo train --help-config                    every config field with default and meaning
    grpo eval runs/demo [config.yaml] [overrides...]
    grpo check [config.yaml] [overrides...] [--no-model]   can the rewards tell right from wrong?
    grpo report runs/demo                       runs/demo/report.html and runs/demo/plots/*.png
    grpo serve-ref --model PATH [--port 8765]   reference log-probs over HTTP (reference.url)
    grpo serve-rollout --model PATH [--port 8766]   generation over HTTP (rollout.engine=server)
    grpo train-rm runs/demo --base PATH --out DIR   a reward model from a run's samples

Every way a command can fail ends in one line on stderr, `grpo <command>: ...`, naming
what is wrong and where, and an exit status that says what to do next:
  0    done
  1    the operating system failed (disk full, permission denied, I/O error, CUDA out of
       memory): checkpoints on disk are intact; fix the cause and rerun with resume=true
  2    the input is wrong (config, data, model, checkpoint), the run cannot fit (memory,
       context), or training diverged (train.max_bad_steps): rerunning unchanged won't help
  130  SIGINT, 143 SIGTERM: stopped after the current step with a checkpoint saved (a second
       signal stops at once); rerun with resume=true (see grpo.training.interrupt)
A traceback means a bug in grpo.
"""

from __future__ import annotations

import argparse
import json
import logging
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
    from grpo.training.trainer import train

    path, overrides = split_args(args)
    cfg = load_config(path or str(find_demo_config()), overrides)  # no file: the demo recipe
    results = train(cfg)
    print_before_after(results, cfg.eval.temperature)
    return 0


def print_before_after(results: dict, temperature: float = 1.0) -> None:
    """One line per metric, strict accuracy first (the answer in its tags and the whole layout:
    what the task asks for), lenient after it: `held-out accuracy (greedy, strict ...): 18.0% -> 31.0%`."""
    before, after = results.get("before") or {}, results.get("after")
    if after is None:
        return
    labels = {"strict_accuracy": "held-out accuracy (greedy, strict: tagged answer, whole layout)",
              "accuracy": "held-out accuracy (greedy, lenient)",
              "sampled_strict_accuracy": f"held-out accuracy (sampled, T={temperature:g}, strict)",
              "sampled_accuracy": f"held-out accuracy (sampled, T={temperature:g}, lenient)",
              "format": "format rate (greedy)"}
    for key, label in labels.items():
        if key in after:
            start = f"{before[key]:.1%} -> " if key in before else ""
            print(f"{label}: {start}{after[key]:.1%}")


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
    from grpo.evaluation import print_table, run_eval

    if not args:
        raise ValueError("usage: grpo eval MODEL_OR_RUN_DIR [config.yaml] [overrides...]")
    run_config, target_overrides, checkpoint = resolve_eval_target(args[0])
    path, overrides = split_args(args[1:])
    cfg = load_config(path or run_config, [*target_overrides, *overrides])
    results = run_eval(cfg, checkpoint)
    print_table(results)
    print(json.dumps(results, indent=1))
    return 0


def cmd_check(args: list[str], use_model: bool = True) -> int:
    """Exit status 1 when the rewards cannot tell right from wrong (see grpo.guards.check)."""
    from grpo.guards.check import print_result, run_check

    path, overrides = split_args(args)
    result = run_check(load_config(path or str(find_demo_config()), overrides), use_model=use_model)
    print_result(result)
    return 0 if result.ok else 1


def cmd_report(args: list[str]) -> int:
    from grpo.record.report import write_report

    if len(args) != 1:
        raise ValueError("usage: grpo report RUN_DIR")
    print(write_report(args[0]))
    return 0


def cmd_help_config() -> int:
    for name, default, help_text in describe(Config):
        print(f"{name} = {default}\n    {help_text}")
    return 0


def cmd_serve(name: str, module: str, args: list[str]) -> int:
    """`grpo serve-ref` (grpo.serve.server) or `grpo serve-rollout` (grpo.serve.rollout_server)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        serve_main = __import__(module, fromlist=["main"]).main
    except ImportError as e:
        print(f"grpo {name}: error: {e}; install the server with `pip install grpo[serve]`", file=sys.stderr)
        return 2
    try:
        return serve_main(args)
    except ValueError as e:
        print(f"grpo {name}: error: {e}", file=sys.stderr)
        return 2


def cmd_train_rm(args: list[str]) -> int:
    from grpo.reward_model.training import RewardModelTraining, samples_from_run, train_reward_model

    d = RewardModelTraining()
    parser = argparse.ArgumentParser(prog="grpo train-rm", description="train an outcome reward model (one "
                                     "logit) from a run's samples, labelled by one of its rule-based rewards")
    parser.add_argument("run", help="run directory (config.yaml + samples.jsonl)")
    parser.add_argument("--base", required=True, help="local model directory to start from (a new head is added)")
    parser.add_argument("--out", required=True, help="where the reward model is written (a plain HF directory)")
    parser.add_argument("--label", default="accuracy", help="the reward whose value >= 0.5 marks a right sample")
    parser.add_argument("--epochs", type=float, default=d.epochs)
    parser.add_argument("--lr", type=float, default=d.learning_rate)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--max-length", type=int, default=d.max_length)
    parser.add_argument("--held-out", type=float, default=0.2, help="fraction of samples kept to measure accuracy")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--prm", action="store_true", help="a step-level (process) reward model from the samples' "
                        "scored steps (grpo.reward_model.prm), for process_reward_model mode token_classification")
    parser.add_argument("--split", default="newline", help="--prm: the steps the PRM reads (newline, sentence, tag:<text>)")
    ns = parser.parse_args(args)
    if not (ns.epochs > 0 and ns.lr > 0 and ns.batch_size >= 1 and ns.max_length >= 1 and 0 <= ns.held_out < 1):
        raise ValueError("--epochs, --lr must be > 0, --batch-size, --max-length >= 1, --held-out in [0, 1)")
    settings = RewardModelTraining(ns.epochs, ns.lr, ns.batch_size, ns.max_length, ns.seed)
    if ns.prm:
        from grpo.reward_model.prm import step_samples_from_run, train_process_reward_model

        metrics = train_process_reward_model(step_samples_from_run(ns.run), ns.base, ns.out, ns.split, settings,
                                             ns.held_out)
    else:
        metrics = train_reward_model(samples_from_run(ns.run, ns.label), ns.base, ns.out, settings, ns.held_out)
    print(json.dumps(metrics))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; called without argv (as the `grpo` program), it also ends the process
    (see `exit_past_abandoned_calls`)."""
    if argv is None:
        return exit_past_abandoned_calls(run_command(sys.argv[1:]))
    return run_command(argv)


def exit_past_abandoned_calls(status: int) -> int:
    """`status`, or the process ends here with it when reward or tool calls abandoned after
    their timeout still run (grpo.plugins.abandoned): CPython cannot stop them, and the interpreter's
    shutdown, tearing torch down under a thread still inside it, aborts with "terminate
    called without an active exception" (a core dump instead of the run's exit status).
    Everything the run wrote is already closed; stdout and stderr are flushed, then the
    process ends at once."""
    abandoned = sys.modules.get("grpo.plugins.abandoned")
    running = abandoned.running() if abandoned is not None else 0
    if not running:
        return status
    print(f"grpo: note: {running} reward or tool call(s) abandoned after their timeout were still running at "
          "exit (counted in reward/<name>/errors or tools/<name>/errors); ended without waiting for them",
          file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run_command(argv: list[str]) -> int:
    if argv[:1] == ["serve-ref"]:  # its own options (and --help): see grpo/serve/server.py
        return cmd_serve("serve-ref", "grpo.serve.server", argv[1:])
    if argv[:1] == ["serve-rollout"]:  # see grpo/serve/rollout_server.py
        return cmd_serve("serve-rollout", "grpo.serve.rollout_server", argv[1:])
    if argv[:1] == ["train-rm"]:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        try:
            return cmd_train_rm(argv[1:])
        except ValueError as e:
            print(f"grpo train-rm: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
    parser = argparse.ArgumentParser(prog="grpo", description="GRPO training on verifiable rewards")
    parser.add_argument("command", choices=["train", "eval", "check", "report", "serve-ref", "serve-rollout",
                                                 "train-rm"])
    parser.add_argument("--help-config", action="store_true", help="list every config field")
    parser.add_argument("--no-model", action="store_true", help="grpo check: skip sampling from the model")
    ns, rest = parser.parse_known_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub at run time
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if ns.help_config:
        return cmd_help_config()
    try:
        if ns.command == "check":
            return cmd_check(rest, use_model=not ns.no_model)
        return {"train": cmd_train, "eval": cmd_eval, "report": cmd_report}[ns.command](rest)
    except BaseException as e:
        failure = describe_failure(e)
        if failure is None:
            raise  # a bug in grpo (or SystemExit): the traceback is for us
        status, message = failure
        print(f"grpo {ns.command}: {' '.join(message.split())}", file=sys.stderr)  # one line
        return status


def describe_failure(e: BaseException) -> tuple[int, str] | None:
    """(exit status, message) for the failures a user can act on; None for a bug."""
    from grpo.training.interrupt import Interrupted

    trainer = sys.modules.get("grpo.training.trainer")  # imported only if training started
    if isinstance(e, Interrupted):
        return e.exit_code, str(e)
    if isinstance(e, KeyboardInterrupt):
        return 130, ("interrupted at once: the step in progress is lost, the checkpoints on disk are "
                     "intact (resume=true continues from the newest)")
    if isinstance(e, ValueError) or (trainer is not None and isinstance(e, trainer.TrainingStopped)):
        return 2, f"error: {e}"
    if type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch here
        return 1, (f"error: out of memory ({str(e).splitlines()[0] if str(e) else ''}); lower "
                   "train.micro_batch_size, rollout.max_new_tokens or train.prompts_per_step, or set "
                   "model.gradient_checkpointing=true; checkpoints on disk are intact (resume=true)")
    if isinstance(e, OSError):  # grpo's own OSErrors already say what to do next
        hint = "" if "resume=true" in str(e) else " (checkpoints already on disk are intact; resume=true continues from the newest)"
        return 1, f"error: {e}{hint}"
    return None


if __name__ == "__main__":
    sys.exit(main())
