"""Multi-process training under torchrun on CPU (gloo): grpo.compute.distributed.

The 2-process runs are real: `python -m torch.distributed.run` starts the processes, which
join a gloo process group on loopback. One torch thread per process keeps the 2-core machine
from thrashing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support import ENVIRONMENTS_FILE, REWARDS_FILE, SUPPORT
from tests.support.cli_runs import tiny_args

ROOT = Path(__file__).resolve().parents[2]
WORKER = SUPPORT / "dist_worker.py"


def torchrun(nproc: int, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    # the checkout first, the caller's PYTHONPATH after it: a checkout run that way tests its own grpo
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def update_overrides(tmp_path: Path, model_dir: Path, *extra: str) -> list[str]:
    # 4 prompts x G=4; loss dapo: its normalizer (the token count) must be the global one
    return [*tiny_args(tmp_path, model_dir), "train.prompts_per_step=4", "train.micro_batch_size=4",
            "rollout.max_new_tokens=6", "algorithm.loss_type=dapo", "train.learning_rate=1e-3", *extra]


def one_update(tmp_path, model_dir, nproc: int, name: str, *extra: str) -> dict:
    out = tmp_path / f"{name}.pt"
    run = tmp_path / name
    overrides = [o for o in update_overrides(tmp_path, model_dir, *extra) if not o.startswith("output_dir=")]
    torchrun(nproc, str(WORKER), str(out), *overrides, f"output_dir={run}")
    return torch.load(out)


def assert_same_update(a: dict, b: dict, before: dict, lr: float) -> None:
    """The same completions, loss and gradient (each element to 1e-5 of the largest: only the
    summation order differs between world sizes), and the same parameters after the AdamW
    step: to 1e-3 * lr for all but 0.1% of the elements. Adam's first step moves an element
    by lr * g / (|g| + 1e-8), so an element whose gradient is at rounding level (~1e-9) may
    move by up to 2 * lr differently however exact the reduction: those few get that bound."""
    assert a["completions"] == b["completions"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    scale = max(g.abs().max().item() for g in b["grads"].values())
    assert a["grads"].keys() == b["grads"].keys() == before.keys()
    for n in before:
        torch.testing.assert_close(a["grads"][n], b["grads"][n], rtol=0, atol=1e-5 * scale, msg=n)
    moved = max((a["params"][n] - before[n]).abs().max().item() for n in before)
    assert moved > 0.5 * lr  # the step did something
    diff = torch.cat([(a["params"][n] - b["params"][n]).abs().flatten() for n in before])
    assert (diff > 1e-3 * lr).float().mean().item() < 1e-3 and diff.max().item() <= 2 * lr


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_model_dir):
    return one_update(tmp_path_factory.mktemp("single"), tiny_model_dir, 1, "single")


def initial_params(model_dir) -> dict:
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(model_dir).named_parameters())


def test_two_process_ddp_update_equals_one_process(tmp_path, tiny_model_dir, single):
    two = one_update(tmp_path, tiny_model_dir, 2, "ddp", "train.parallel=ddp")
    assert_same_update(two, single, initial_params(tiny_model_dir), lr=1e-3)


def test_two_process_fsdp_update_equals_one_process(tmp_path, tiny_model_dir, single):
    two = one_update(tmp_path, tiny_model_dir, 2, "fsdp", "train.parallel=fsdp")
    assert_same_update(two, single, initial_params(tiny_model_dir), lr=1e-3)


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time", "memory/"))} for r in rows]


def train_args(tmp_path: Path, model_dir: Path, run: Path, steps: int, *extra: str) -> list[str]:
    args = [o for o in tiny_args(tmp_path, model_dir) if not o.startswith(("output_dir=", "train.num_steps="))]
    return ["-m", "grpo", "train", *args, "train.prompts_per_step=4", "train.micro_batch_size=4",
            "eval.num_examples=4", f"train.num_steps={steps}", f"output_dir={run}", *extra]


def test_two_process_run_resumes_exactly(tmp_path, tiny_model_dir):
    """2 processes for 4 steps == 2 processes for 2 steps, then resumed to 4: the same metrics,
    evaluation and final weights; only rank 0 writes the record (one metrics line per step)."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    torchrun(2, *train_args(tmp_path, tiny_model_dir, whole, 4))
    torchrun(2, *train_args(tmp_path, tiny_model_dir, split, 2))
    assert [r["step"] for r in metrics(split)] == [1, 2] and (split / "checkpoint-000002").is_dir()
    torchrun(2, *train_args(tmp_path, tiny_model_dir, split, 4, "resume=true"))
    assert metrics(split) == metrics(whole)
    evals = {r: [json.loads(x) for x in (r / "eval.jsonl").read_text().splitlines()] for r in (split, whole)}
    assert [e["step"] for e in evals[split]] == [0, 2, 4]  # the 2-step run ended with its own eval
    assert evals[split][-1] == evals[whole][-1] and evals[whole][-1]["num_examples"] == 4  # both ranks' shares
    from safetensors.torch import load_file

    a, b = (load_file(r / "final" / "model.safetensors") for r in (split, whole))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_world_size_can_change_on_resume(tmp_path, tiny_model_dir):
    """A 2-process fsdp checkpoint continues in one process, and a 1-process one in 2 (ddp)."""
    run = tmp_path / "run"
    torchrun(2, *train_args(tmp_path, tiny_model_dir, run, 2, "train.parallel=fsdp"))
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(run / "final")  # gathered from the shards, plain HF
    saved = load_file(run / "checkpoint-000002" / "model.safetensors")
    assert all(torch.equal(p, saved[n]) for n, p in final.named_parameters())
    torchrun(1, *train_args(tmp_path, tiny_model_dir, run, 3, "resume=true"))
    torchrun(2, *train_args(tmp_path, tiny_model_dir, run, 4, "resume=true", "train.parallel=ddp"))
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4]
    assert (run / "final" / "model.safetensors").exists()


def test_prompts_not_divisible_by_world_size_is_a_clear_error(tmp_path, tiny_model_dir):
    args = train_args(tmp_path, tiny_model_dir, tmp_path / "run", 1, "train.prompts_per_step=3",
                      "train.micro_batch_size=4")
    proc = torchrun(2, *args, ok=False)
    assert "train.prompts_per_step" in proc.stderr and "divisible by the number of processes (2)" in proc.stderr


def test_fsdp_with_lora_is_a_clear_error(tmp_path, tiny_model_dir):
    args = train_args(tmp_path, tiny_model_dir, tmp_path / "run", 1, "train.parallel=fsdp", "model.lora.enabled=true")
    assert "use train.parallel=ddp" in torchrun(2, *args, ok=False).stderr


def test_two_process_dynamic_sampling_keeps_the_ranks_in_step(tmp_path, tiny_model_dir):
    """Each rank fills its share of groups with signal in rounds that end together; the ranks'
    kept rows differ in number (uneven gathers) and the run equals its resumed self."""
    odd = f"{REWARDS_FILE}:odd_answers_only"
    extra = (f"rewards=[{{name: '{odd}'}}]", "algorithm.dynamic_sampling=true", "algorithm.max_generation_rounds=2",
             "eval.num_examples=0")
    whole, split = tmp_path / "whole", tmp_path / "split"
    torchrun(2, *train_args(tmp_path, tiny_model_dir, whole, 3, *extra))
    torchrun(2, *train_args(tmp_path, tiny_model_dir, split, 2, *extra))
    torchrun(2, *train_args(tmp_path, tiny_model_dir, split, 3, "resume=true", *extra))
    rows = metrics(whole)
    assert metrics(split) == rows and all("dynamic/rounds" in r for r in rows)
    assert all(r["dynamic/prompts_drawn"] == 4 * r["dynamic/rounds"] for r in rows)


ENVS = ENVIRONMENTS_FILE
EPISODES = (f"rollout.environment='{ENVS}:Echo'", "rollout.environment_options={turns: 0}", "rollout.stop=[' ']",
            "rollout.max_turns=2", "rollout.max_episode_tokens=16")


def test_two_process_episode_update_equals_one_process(tmp_path, tiny_model_dir):
    """Multi-turn episodes (an environment answering every turn): each rank trains its share of
    the same episodes, and the update equals the one-process update."""
    single = one_update(tmp_path, tiny_model_dir, 1, "single", *EPISODES)
    double = one_update(tmp_path, tiny_model_dir, 2, "double", *EPISODES)
    assert_same_update(double, single, initial_params(tiny_model_dir), lr=1e-3)


def test_two_process_run_with_tools(tmp_path, tiny_model_dir):
    run = tmp_path / "tools"
    torchrun(2, *train_args(tmp_path, tiny_model_dir, run, 2, "rollout.tools=[calculator]", *EPISODES[2:4],
                            "rollout.max_episode_tokens=48",
                            "task.assistant_prefix='<tool_call>{\"name\": \"calculator\", \"arguments\": "
                            "{\"expression\": \"2 + 3\"}}</tool_call>'", "rollout.tool_format=inline"))
    rows = metrics(run)
    # the prefilled call runs where the first turn ends at the stop string (not at its budget)
    assert len(rows) == 2 and sum(r.get("tools/calculator/calls", 0) for r in rows) > 0
    assert all(r.get("tools/calculator/errors", 0) == 0 and "episode/turns" in r for r in rows)


VLLM_WORKER = SUPPORT / "vllm_dist_worker.py"


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory):
    from tests.support.tiny import make_tiny_model_dir

    # head_dim 32: vLLM's CPU attention has no kernels for the default tiny model's 16
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_vllm"), hidden_size=128)


@pytest.mark.vllm
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_vllm_engines_follow_the_weights_like_one_process(tmp_path, vllm_model_dir, parallel):
    """torchrun, 2 processes, each with its own vLLM engine in the trainer's process group
    (external_launcher): after 3 updates, each rank's greedy completions equal those of a
    one-process vLLM engine built on the trained weights, and the sampler's log-probs agree
    with the trainer's (importance weights ~1) on every rank and step."""
    pytest.importorskip("vllm")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.rollout.vllm_engine import VLLMEngine
    from tests.support.vllm_dist_worker import GREEDY, render

    args = [o for o in tiny_args(tmp_path, vllm_model_dir) if not o.startswith(("output_dir=", "train.num_steps="))]
    torchrun(2, str(VLLM_WORKER), str(tmp_path), *args, "rollout.engine=vllm", "train.prompts_per_step=4",
             "train.micro_batch_size=4", "rollout.max_new_tokens=6", "train.num_steps=3", "train.learning_rate=1e-2",
             f"train.parallel={parallel}", "rollout.max_prompt_tokens=256", f"output_dir={tmp_path / 'run'}")
    ranks = torch.load(tmp_path / "result.pt")
    assert [r["backend"] for r in ranks] == ["external_launcher"] * 2
    assert all(r["version"] == [3] * len(r["version"]) for r in ranks)
    for r in ranks:
        for step in r["steps"]:  # fp32 vLLM against the fp32 trainer: the same weights every step
            assert step["is_weight/mean"] == pytest.approx(1.0, abs=1e-3) and abs(step["sampler_kl"]) < 1e-6
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "final", dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(vllm_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(vllm_model_dir)
    single = VLLMEngine(model, tokenizer, max_model_len=256)  # one process, the initial weights
    before = single.generate(render(tokenizer), GREEDY).completion_ids.tolist()
    model.load_state_dict(trained.state_dict())
    single.sync_weights(model, 3)
    expected = single.generate(render(tokenizer), GREEDY).completion_ids.tolist()
    assert expected != before  # the updates changed what greedy decoding says
    assert ranks[0]["greedy"] == ranks[1]["greedy"] == expected


@pytest.mark.vllm
def test_two_process_lora_run_through_vllm_adapters_ends_cleanly(tmp_path, vllm_model_dir):
    """`grpo train` under torchrun, a LoRA policy whose adapters go to each rank's vLLM engine
    (rollout.vllm_lora_sync=adapter): the run ends with its evaluation and final model, the
    engines shut down after the last collective (no teardown error), importance weights ~1."""
    pytest.importorskip("vllm")
    run = tmp_path / "run"
    proc = torchrun(2, *train_args(tmp_path, vllm_model_dir, run, 2, "rollout.engine=vllm", "model.lora.enabled=true",
                                   "rollout.vllm_lora_sync=adapter", "rollout.max_prompt_tokens=256"))
    assert "Invalid process group" not in proc.stderr
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2] and (run / "final" / "adapter").is_dir()
    assert all(r["is_weight/mean"] == pytest.approx(1.0, abs=1e-3) for r in rows)


RUN_WORKER = SUPPORT / "dist_run_worker.py"


def ranks_after_run(tmp_path: Path, model_dir: Path, nproc: int, *extra: str) -> list[dict]:
    """A whole run under torchrun (tests/support/dist_run_worker.py): what each rank held."""
    out = tmp_path / "ranks"
    out.mkdir(parents=True)
    torchrun(nproc, str(RUN_WORKER), str(out), *train_args(tmp_path, model_dir, tmp_path / "run", 3, *extra)[3:])
    return [torch.load(out / f"rank{r}.pt") for r in range(nproc)]


def assert_ranks_bitwise_equal(ranks: list[dict]) -> None:
    first = ranks[0]["after"]
    for other in ranks[1:]:
        assert other["after"].keys() == first.keys()
        assert all(torch.equal(other["after"][n], first[n]) for n in first), "ranks' weights differ"


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_bf16_run_keeps_every_rank_bitwise_equal(tmp_path, tiny_model_dir, parallel):
    """model.precision=bfloat16: the master-weight dither happens on every rank before ddp's
    broadcast or fsdp's sharding (fsdp keeps each rank's own dithered shard, so the ranks must
    dither alike); after 3 steps every rank holds the same weights, bit for bit, moved off the
    dithered start."""
    ranks = ranks_after_run(tmp_path, tiny_model_dir, 2, "model.precision=bfloat16", f"train.parallel={parallel}",
                            "eval.num_examples=0")
    assert ranks[0]["before"] == ranks[1]["before"], "the dither differed between the ranks"
    assert_ranks_bitwise_equal(ranks)
    start = initial_params(tiny_model_dir)
    assert any(not torch.equal(ranks[0]["after"][n], start[n]) for n in start)
    assert all(r["version"] == 3 for r in ranks)


def test_two_process_fsdp_float16_run_agrees_on_overflows_and_updates(tmp_path, tiny_model_dir):
    """model.precision=float16 under fsdp: ShardedGradScaler all-reduces its overflow finding, so both
    ranks skip together (a 2^126 scale overflows every update; max_bad_steps=1 is not triggered by
    them) and, at the default scale, both step together."""
    common = ("train.parallel=fsdp", "model.precision=float16", "eval.num_examples=0")
    over, ok = tmp_path / "over", tmp_path / "ok"
    torchrun(2, *train_args(tmp_path, tiny_model_dir, over, 2, *common, "train.max_bad_steps=1",
                            "train.fp16_initial_scale=8.507059173023462e37"))
    assert [(r["fp16/scale"], r["fp16/skipped"], r["skipped_updates"]) for r in metrics(over)] == [
        (2.0**125, 1, 0), (2.0**124, 2, 0)]
    torchrun(2, *train_args(tmp_path, tiny_model_dir, ok, 2, *common))
    assert [(r["fp16/scale"], r["fp16/skipped"], r["skipped_updates"]) for r in metrics(ok)] == [
        (2.0**16, 0, 0), (2.0**16, 0, 0)]
    assert all(r["grad_norm"] > 0 for r in metrics(ok))
