"""Bad input, crashes and resource limits through the real CLI: one clear line, never a traceback.

Every case either ends in exactly one `grpo <command>: ...` line on stderr naming what is
wrong and where, with exit status 2 (input) or 1 (the operating system), or runs on with the
failure contained and counted in the metrics. tests/e2e/BAD_INPUT.md lists every case with what
the user sees; keep the two in step.
"""

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpo.compute import models
from grpo.guards import resources
from grpo.training import checkpoint
from tests.support.cli_runs import LENGTH, REWARDS, fails, metrics, quick, run_cli, tiny_args


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    with quick(monkeypatch):
        yield


@pytest.fixture
def args(tmp_path, tiny_model_dir):
    return tiny_args(tmp_path, tiny_model_dir)


@pytest.fixture
def data_file(args):
    return Path(next(a for a in args if a.startswith("task.path=")).split("=", 1)[1])


# --------------------------------------------------------------------------- config


def test_broken_yaml_names_file_and_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  num_steps: [1\n")
    fails(capsys, 2, "train", str(bad), says=(str(bad), "line 3", "not valid YAML"))


@pytest.mark.parametrize("override, says", [
    ("train.num_stepz=3", ("`train.num_stepz`", "did you mean `train.num_steps`?", "allowed:")),
    ("trian.num_steps=3", ("`trian`", "did you mean `train`?", "allowed:")),
    ("train.num_steps=ten", ("`train.num_steps`", "'ten'", "expected int")),
    ("algorithm.loss_type=ppo", ("`algorithm.loss_type`", "allowed: grpo, bnpo, dr_grpo, dapo")),
    ("train.adam_betas=0.9", ("`train.adam_betas`", "expected a list")),
    ("train.micro_batch_size=3", ("`train.micro_batch_size` = 3", "divisor of prompts_per_step * group_size = 8")),
    ("rollout.group_size=1", ("`rollout.group_size` = 1", ">= 2")),
    ("rollout.max_new_tokens=0", ("`rollout.max_new_tokens` = 0", ">= 1")),
    ("train.num_steps=[", ("'train.num_steps=['", "not valid YAML")),
    ("rollout.tools=[abacus]", ("`rollout.tools`", "built-in tools (calculator, python)")),
    ("rollout.tool_format=json", ("`rollout.tool_format`", "allowed: hermes, inline")),
    ("task.template='Q: {q}'", ("`task.template`", "{question} exactly once")),
])
def test_config_mistakes_name_the_field_and_what_is_allowed(capsys, args, override, says):
    fails(capsys, 2, "train", *args, override, says=says)


def test_tools_and_environments_that_do_not_load_are_one_line(capsys, args, tmp_path):
    fails(capsys, 2, "train", *args, f"rollout.tools=['{tmp_path}/nope.py:search']",
          says=("tool", "nope.py", "does not exist"))
    plain = tmp_path / "plain.py"
    plain.write_text("def search(q):\n    return q\n")
    fails(capsys, 2, "train", *args, f"rollout.tools=['{plain}:search']", says=("search",))
    fails(capsys, 2, "train", *args, f"rollout.environment='{plain}:Nope'", says=("environment", "Nope"))


def test_config_file_missing_not_utf8_directory_or_not_a_mapping(capsys, tmp_path):
    fails(capsys, 2, "train", str(tmp_path / "nope.yaml"), says=("nope.yaml", "does not exist"))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("output_dir: caf\xe9\n".encode("latin-1"))
    fails(capsys, 2, "train", str(latin), says=("latin.yaml", "not UTF-8"))
    fails(capsys, 2, "train", str(tmp_path), says=("is a directory",))
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    fails(capsys, 2, "train", str(listed), says=("list.yaml", "mapping"))
    good = tmp_path / "good.yaml"
    good.write_text("seed: 1\n")
    fails(capsys, 2, "train", str(good), "oops", says=("'oops'", "section.field=value"))


# --------------------------------------------------------------------------- model


def broken_copy(tiny_model_dir, tmp_path, name, damage):
    out = tmp_path / name
    shutil.copytree(tiny_model_dir, out)
    damage(out)
    return out


@pytest.mark.parametrize("name, damage, says", [
    ("gone", lambda d: shutil.rmtree(d), ("no such file or directory",)),
    ("no_config", lambda d: (d / "config.json").unlink(), ("has no config.json",)),
    ("no_weights", lambda d: (d / "model.safetensors").unlink(), ("has no weights",)),
    ("garbage_config", lambda d: (d / "config.json").write_text("garbage{"), ("config.json", "not a valid JSON")),
    ("truncated", lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]),
     ("could not load the model", "header")),
])
def test_missing_or_corrupt_model_directory(capsys, args, tiny_model_dir, tmp_path, name, damage, says):
    model = broken_copy(tiny_model_dir, tmp_path, name, damage)
    fails(capsys, 2, "train", *args, f"model.path={model}", says=(str(model), *says))


# --------------------------------------------------------------------------- data


@pytest.mark.parametrize("name, content, says", [
    ("missing.jsonl", b'{"question": "1+1?", "answer": "2"}\n{"question": "2+2?"}\n',
     ("line 2", "field 'answer'", "missing")),
    ("empty.jsonl", b"", ("has no rows",)),
    ("blank.csv", b"question,answer\n", ("has no rows",)),
    ("latin.jsonl", '{"question": "caf\xe9?", "answer": "1"}\n'.encode("latin-1"),
     ("not UTF-8", "byte 0xe9", "line 1")),
    ("broken.jsonl", b'{"question": "1+1?", "answer": "2"}\n{"question": \n', ("line 2", "invalid JSON")),
    ("table.txt", b"anything", ("unsupported extension", ".jsonl")),
])
def test_bad_data_file_names_file_and_row(capsys, args, tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    fails(capsys, 2, "train", *args, f"task.path={path}", says=(name, *says))


def test_missing_data_file(capsys, args, tmp_path):
    fails(capsys, 2, "train", *args, f"task.path={tmp_path / 'nope.jsonl'}", says=("task.path", "does not exist"))


def test_prompts_longer_than_the_context_fail_before_training(capsys, args):
    line = fails(capsys, 2, "train", *args, "rollout.max_prompt_tokens=5",
                 says=("training prompts are longer than rollout.max_prompt_tokens = 5 tokens (first: example 'sums.jsonl:",))
    assert re.search(r"\b(\d+) of \1 training prompts", line), line  # every prompt, however many
    # the tiny model's context is 1024: an eval completion of 1000 tokens leaves too little room
    fails(capsys, 2, "train", *args, "eval.num_examples=2", "eval.max_new_tokens=1015",
          says=("held-out prompts are longer than the model context (1024) minus the completion length (1015)",))


# --------------------------------------------------------------------------- rewards


def test_unknown_or_missing_reward_functions(capsys, args, tmp_path):
    fails(capsys, 2, "train", *args, "rewards=[{name: acuracy}]", says=("unknown reward 'acuracy'", "registered:"))
    fails(capsys, 2, "train", *args, f"rewards=[{{name: '{tmp_path / 'nope.py'}:f'}}]", says=("does not exist",))
    fails(capsys, 2, "train", *args, "rewards=[{name: format, options: {bogus: 1}}]", says=("no option `bogus`",))


def test_rewards_that_raise_hang_or_return_junk_are_contained_and_counted(capsys, args, tmp_path):
    names = [f"{REWARDS}:{fn}" for fn in ("broken_reward", "hanging_reward", "nan_reward", "none_reward",
                                          "string_reward")]
    specs = ", ".join(f"{{name: '{n}'}}" for n in [LENGTH, *names])
    status, lines, err = run_cli(capsys, "train", *args, f"rewards=[{specs}]", "reward_timeout=0.2")
    assert status == 0, err
    [m] = metrics(tmp_path / "run")
    for name in names:  # 2 prompts * G=4 completions, every call failed
        assert m[f"reward/{name}/errors"] == 8, name
        assert f"reward `{name}` failed on 8 completion(s)" in err
    assert m[f"reward/{LENGTH}/errors"] == 0
    assert m["skipped_updates"] == 0 and m["grad_norm"] is not None  # the length reward still trained


def test_calls_hanging_inside_torch_end_the_program_cleanly(args, tmp_path):
    """As a program (not main(argv) in-process): the abandoned calls, still inside torch at
    exit, once aborted the interpreter with "terminate called without an active exception"."""
    hanging = f"{REWARDS}:torch_hanging_reward"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-m", "grpo", "train", *args, "log.tensorboard=false",
                           f"rewards=[{{name: '{LENGTH}'}}, {{name: '{hanging}'}}]", "reward_timeout=0.2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "reward or tool call(s) abandoned after their timeout were still running at exit" in proc.stderr
    assert metrics(tmp_path / "run")[0][f"reward/{hanging}/errors"] == 8
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_equal_rewards_warn_once_and_leave_no_nan(capsys, args, tmp_path):
    status, _, err = run_cli(capsys, "train", *args, f"rewards=[{{name: '{REWARDS}:constant_reward'}}]",
                             "train.num_steps=4", "algorithm.beta=0.04")
    assert status == 0, err
    assert err.count("no learning signal") == 1, err  # once per run, not once per step
    rows = metrics(tmp_path / "run")
    assert [r["frac_reward_zero_std"] for r in rows] == [1.0] * 4
    for row in rows:
        bad = {k: v for k, v in row.items() if v is None or (isinstance(v, float) and v != v)}
        assert not bad, bad  # NaN would have been written as null
        assert row["advantage/abs_mean"] == 0.0


# --------------------------------------------------------------------------- non-finite loss


@pytest.fixture
def poisoned(monkeypatch):
    """Make the policy's forward with grad (the update, never generation) produce NaN, for
    the first `left[0]` such forwards (-1: all of them)."""
    left = [-1]
    load = models.load_policy

    def load_policy(cfg, loaded=None):
        model, tokenizer = load(cfg, loaded)

        def hook(module, inputs, output):
            if torch.is_grad_enabled() and left[0] != 0:
                left[0] -= 1
                return output * float("nan")
            return output

        model.get_input_embeddings().register_forward_hook(hook)
        return model, tokenizer

    monkeypatch.setattr(models, "load_policy", load_policy)
    return left


def test_one_nan_loss_skips_the_update_and_counts_it(capsys, args, tmp_path, poisoned):
    poisoned[0] = 1
    status, _, err = run_cli(capsys, "train", *args, "train.num_steps=2")
    assert status == 0, err
    rows = metrics(tmp_path / "run")
    assert [r["skipped_updates"] for r in rows] == [1, 1]
    assert rows[0]["grad_norm"] is None and rows[1]["grad_norm"] is not None  # NaN -> null in JSON
    assert err.count("update was skipped") == 1
    final = load_file(tmp_path / "run" / "checkpoint-000002" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in final.values())


def test_nan_loss_for_max_bad_steps_stops_with_a_checkpoint(capsys, args, tmp_path, tiny_model_dir, poisoned):
    fails(capsys, 2, "train", *args, "train.num_steps=5", "train.max_bad_steps=2",
          says=("not finite for 2 updates in a row", "train.max_bad_steps=2", "checkpoint-000002"))
    saved = load_file(tmp_path / "run" / "checkpoint-000002" / "model.safetensors")
    initial = load_file(tiny_model_dir / "model.safetensors")
    for name, tensor in saved.items():  # no poisoned update ever reached the weights
        assert torch.equal(tensor, initial[name]), name


# --------------------------------------------------------------------------- disk and memory


def checkpoint_files(path):
    return {p.name: p.read_bytes() for p in sorted(Path(path).iterdir())}


@pytest.mark.parametrize("writer", ["safetensors", "torch.save"])
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(capsys, args, tmp_path, monkeypatch, writer):
    run = tmp_path / "run"
    status, _, err = run_cli(capsys, "train", *args)  # checkpoint-000001, written normally
    assert status == 0, err
    before = checkpoint_files(run / "checkpoint-000001")

    def full(obj, path, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    if writer == "safetensors":
        monkeypatch.setattr(checkpoint, "save_file", full)
    else:
        monkeypatch.setattr(torch, "save", full)
    fails(capsys, 1, "train", *args, "train.num_steps=2", "resume=true",
          says=("could not write checkpoint", "checkpoint-000002", "No space left on device",
                "previous checkpoints are intact"))
    assert checkpoint_files(run / "checkpoint-000001") == before
    assert not list(run.glob(".tmp-*")) and not (run / "checkpoint-000002").exists()
    monkeypatch.undo()  # space freed: the run resumes from checkpoint 1 and finishes
    status, _, err = run_cli(capsys, "train", *args, "train.num_steps=2", "resume=true")
    assert status == 0, err
    assert [r["step"] for r in metrics(run)] == [1, 2]


def test_unwritable_checkpoint_directory(capsys, args, tmp_path, monkeypatch):
    # Tests run as root, for whom chmod does not block writes: the OS's refusal is simulated.
    run = tmp_path / "run"
    real = checkpoint.tempfile.mkdtemp

    def refuse(suffix=None, prefix=None, dir=None):
        if dir is not None and Path(dir) == run:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(run))
        return real(suffix, prefix, dir)

    monkeypatch.setattr(checkpoint.tempfile, "mkdtemp", refuse)
    fails(capsys, 1, "train", *args, says=("could not write checkpoint", str(run), "Permission denied"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod; simulated in the test above")
def test_unwritable_output_directory_for_real(capsys, args, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o500)
    try:
        fails(capsys, 1, "train", *args, says=("Permission denied", str(run)))
    finally:
        run.chmod(0o700)


def test_not_enough_disk_is_found_before_training_and_before_each_save(capsys, args, tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "free_disk", lambda path: 1000)
    fails(capsys, 1, "train", *args, says=("not enough disk space", str(tmp_path / "run"),
                                           "a checkpoint and the final model"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the first step
    calls = []

    def shrinking(path):  # room at build time and for checkpoint 1, none for checkpoint 2
        calls.append(path)
        return 10**12 if len(calls) <= 2 else 1000

    monkeypatch.setattr(resources, "free_disk", shrinking)
    fails(capsys, 1, "train", *args, "train.num_steps=2", says=("not enough disk space", "checkpoint 2"))
    assert (tmp_path / "run" / "checkpoint-000001" / "trainer_state.json").is_file()


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_training(capsys, args, monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda device: 2**20)
    fails(capsys, 2, "train", *args, says=("of cpu memory beyond the loaded weights", "only 1.0 MiB is available",
                                           "train.micro_batch_size (now 8)", "rollout.max_new_tokens (now 4)",
                                           "model.gradient_checkpointing=true", "train.check_resources=false"))
    status, _, err = run_cli(capsys, "train", *args, "train.check_resources=false")  # the escape hatch
    assert status == 0, err


def test_memory_estimate_grows_with_the_batch_and_shrinks_with_checkpointing(tiny_model_dir):
    from grpo.config import load_config

    model, _ = models.load_policy(load_config(None, [f"model.path={tiny_model_dir}"]).model)
    base = ["rollout.max_new_tokens=512", "train.micro_batch_size=16", "rollout.group_size=16"]
    small = sum(resources.estimate_memory(model, load_config(None, base), 100).values())
    big = sum(resources.estimate_memory(model, load_config(None, [*base, "train.micro_batch_size=32"]), 100).values())
    ckpt = sum(resources.estimate_memory(
        model, load_config(None, [*base, "model.gradient_checkpointing=true"]), 100).values())
    assert big > small > ckpt > 3 * sum(p.numel() * 4 for p in model.parameters())


# --------------------------------------------------------------------------- run directory


def test_output_dir_that_is_a_file_or_holds_another_run(capsys, args, tmp_path, data_file):
    fails(capsys, 2, "train", *args, f"output_dir={data_file}", says=("`output_dir`", "is a file"))
    status, _, err = run_cli(capsys, "train", *args)
    assert status == 0, err
    fails(capsys, 2, "train", *args, says=("already holds checkpoints", "resume=true"))


def test_corrupt_checkpoint_on_resume_names_it(capsys, args, tmp_path):
    status, _, err = run_cli(capsys, "train", *args)
    assert status == 0, err
    weights = tmp_path / "run" / "checkpoint-000001" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    fails(capsys, 2, "train", *args, "train.num_steps=2", "resume=true",
          says=("checkpoint-000001", "cannot be read", "delete that directory"))
    fails(capsys, 2, "eval", str(tmp_path / "run" / "checkpoint-000001"), *args,
          says=("checkpoint-000001", "cannot be read"))


# --------------------------------------------------------------------------- grpo eval


def test_eval_config_and_data_errors_are_one_line_too(capsys, args, tmp_path, tiny_model_dir):
    fails(capsys, 2, "eval", str(tmp_path / "nope"), says=("does not exist",))
    fails(capsys, 2, "eval", str(tiny_model_dir), "eval.pass_k=0", says=("`eval.pass_k` = 0",))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?"}\n')
    fails(capsys, 2, "eval", str(tiny_model_dir), *args[1:], f"task.path={bad}",
          says=("bad.jsonl", "line 1", "'answer'"))
