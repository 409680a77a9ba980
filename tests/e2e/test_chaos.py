"""Kill -9 at random moments, resume, and get the uninterrupted run's results (tests/support/chaos.py).

Runs the chaos script as a separate process: it forks its training runs from a clean
forkserver, which this test process (with its torch threads already started) could not do
safely. The short version runs with the suite; the full one (10 kills) is marked slow.
The kills are timed by events in the run directory (a metrics line, a checkpoint's temp
directory, config.yaml rewritten), not by the clock, so every kill lands however fast or
slow the machine is: each test asserts that none missed.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REWARDS_FILE
from tests.support.tiny import make_tiny_model_dir, make_tiny_reward_model_dir

ROOT = Path(__file__).resolve().parents[2]


def chaos(tmp_path, *args, timeout):
    out = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, "-m", "tests.support.chaos", *args, "--workdir", str(tmp_path / "work"),
                           "--json", str(out)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.exists(), proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert proc.returncode == 0 and summary["ok"], json.dumps(summary, indent=1)
    assert all(k["killed"] for k in summary["kill_log"]), json.dumps(summary["kill_log"], indent=1)
    return summary


def test_kills_and_a_sigint_lose_nothing(tmp_path):
    summary = chaos(tmp_path, "--kills", "3", "--sigint", timeout=240)
    assert summary["kills"] == 3 and summary["all_resumed"] and not summary["final_problems"]
    assert summary["sigint"]["exitcode"] == 130
    assert summary["sigint"]["checkpoint"] == summary["sigint"]["last_logged_step"] >= 2


def test_kills_lose_nothing_with_dynamic_sampling(tmp_path):
    # rounds of generation per step draw more prompts: the stream position must resume exactly
    odd = REWARDS_FILE
    summary = chaos(tmp_path, "--kills", "2", "--override", "algorithm.dynamic_sampling=true",
                    "--override", f"rewards=[{{name: '{odd}:odd_answers_only'}}]", timeout=240)
    assert summary["kills"] == 2 and summary["all_resumed"] and not summary["final_problems"]


def test_kills_lose_nothing_with_the_difficulty_pool(tmp_path):
    # each step's prompts depend on the estimates the earlier steps left: they must resume exactly
    summary = chaos(tmp_path, "--kills", "2", "--override", "task.sampler=difficulty_pool",
                    "--override", f"task.difficulty.success_reward={REWARDS_FILE}:length_reward",
                    "--override", "task.difficulty.success_threshold=1.0", timeout=240)
    assert summary["kills"] == 2 and summary["all_resumed"] and not summary["final_problems"]


def test_kills_lose_nothing_in_iterative_rl(tmp_path):
    # the reward model is retrained every 2 steps: its weights and samples must resume exactly
    length = REWARDS_FILE
    rm = make_tiny_reward_model_dir(tmp_path / "rm")
    summary = chaos(tmp_path, "--kills", "2", "--override", f"rewards=[{{name: '{length}:length_reward', weight: 0}}, "
                    f"{{name: reward_model, options: {{path: '{rm}'}}}}]", "--override", "iterative.retrain_every=2",
                    "--override", f"iterative.label={length}:length_reward", "--override", "algorithm.beta=0.1",
                    timeout=300)
    assert summary["kills"] == 2 and summary["all_resumed"] and not summary["final_problems"]


def test_kills_lose_nothing_with_distillation_terms(tmp_path):
    # a frozen teacher's and the policy-as-teacher's log-probs enter every step: recomputed after a resume
    teacher = make_tiny_model_dir(tmp_path / "teacher", hidden_size=32, num_layers=1)  # the policy's tokenizer
    terms = (f"algorithm.aux_losses=[{{name: distill, weight: 0.5, teacher_path: '{teacher}'}}, "
             "{name: self_distill, weight: 0.5}]")
    summary = chaos(tmp_path, "--kills", "2", "--override", terms, timeout=240)
    assert summary["kills"] == 2 and summary["all_resumed"] and not summary["final_problems"]


@pytest.mark.slow
def test_ten_kills_lose_nothing(tmp_path):
    summary = chaos(tmp_path, "--kills", "10", "--sigint", timeout=900)
    assert summary["kills"] == 10 and summary["kills_mid_checkpoint_write"] >= 1


def chaos_async(tmp_path, *args, timeout):
    out = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, "-m", "tests.support.chaos_async", *args, "--workdir",
                           str(tmp_path / "work"), "--json", str(out)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert out.exists(), proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert proc.returncode == 0 and summary["ok"], json.dumps(summary, indent=1)
    return summary


def test_async_run_and_its_server_killed_lose_nothing(tmp_path):
    """rollout.max_staleness=1 through a real `grpo serve-rollout` (tests/support/chaos_async.py):
    the trainer SIGKILLed mid-push and mid-step, the server mid-generation and mid-push; the run
    ends with the reference's example order, every step once, every row within the bound."""
    summary = chaos_async(tmp_path, timeout=600)
    assert summary["kills"] == 4 and all(k["landed"] for k in summary["kill_log"])


@pytest.mark.slow
def test_async_run_killed_three_times_each_way_loses_nothing(tmp_path):
    summary = chaos_async(tmp_path, "--rounds", "3", timeout=1500)
    assert summary["kills"] == 12


def test_the_async_check_finds_a_lost_a_repeated_and_a_stale_step(tmp_path):
    from tests.support.chaos_async import problems

    def write(run, records):
        (run / "final").mkdir(parents=True)
        (run / "final" / "model.safetensors").touch()
        (run / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    ref = [{"step": s, "trained_version": s - 1, "example_ids": [f"x{s}"], "policy_versions": [max(0, s - 2)]}
           for s in (1, 2, 3)]
    write(tmp_path / "ok", ref)
    assert problems(tmp_path / "ok", ref, 3) == []
    write(tmp_path / "repeated", [ref[0], ref[1], ref[1], ref[2]])
    assert any("once each" in p for p in problems(tmp_path / "repeated", ref, 3))
    write(tmp_path / "lost", [ref[0], {**ref[1], "example_ids": ["x3"]}, ref[2]])
    assert any("example order" in p for p in problems(tmp_path / "lost", ref, 3))
    write(tmp_path / "stale", [ref[0], ref[1], {**ref[2], "policy_versions": [0]}])
    assert any("staleness" in p for p in problems(tmp_path / "stale", ref, 3))
