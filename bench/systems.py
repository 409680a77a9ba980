"""One system's benchmark run in its own process: `python bench/systems.py grpo|trl --steps 8 --out f.json`.

`python bench/systems.py make-prompts` writes bench/prompts.jsonl (the fixed prompt file).
WORK["model"] picks the model: `bundled` (SmolLM2-135M-Instruct) or a shape of SHAPES, a
model of that architecture with random weights (seed 0) built from its config and the bundled
tokenizer, written once under the cache (speed needs the shape, not trained weights; nothing
is downloaded). Random weights never emit EOS, so every completion runs to max_new_tokens.
Each run: 1 warm-up step, then `steps` timed steps; per step the seconds per phase, tokens
generated, prompt/completion token counts (for the floor) and the mean reward.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PROMPTS = HERE / "prompts.jsonl"
sys.path.insert(0, str(HERE))
from compare_trl import WORK  # noqa: E402

from grpo import rewards  # noqa: E402
from grpo.tasks.base import Example  # noqa: E402
from grpo.tasks.prompts import PromptFormat  # noqa: E402


def make_prompts(n: int = 200) -> None:
    from grpo.config import load_config
    from grpo.tasks import build_task

    # fixed settings (not whatever demo.yaml says today): chain_sum, one worked example
    cfg = load_config(str(HERE.parent / "configs" / "demo.yaml"), [f"task.num_train={n}", "task.few_shot=1"])
    task = build_task(cfg.task)
    with PROMPTS.open("w") as f:
        for ex in task.train[:n]:
            f.write(json.dumps({"id": ex.id, "prompt": ex.prompt, "answer": ex.answer}) + "\n")


def load_prompts() -> list[Example]:
    return [Example(**json.loads(line)) for line in PROMPTS.read_text().splitlines()]


def prompt_token_counts(tokenizer, examples: list[Example]) -> list[int]:
    return [len(tokenizer(PromptFormat().render(tokenizer, ex), add_special_tokens=False)["input_ids"]) for ex in examples]


# Configs of public models' shapes (their config.json values; weights random).
SHAPES = {
    "smollm2-360m": ("LlamaConfig", dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                                         num_attention_heads=15, num_key_value_heads=5, vocab_size=49152,
                                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                                         tie_word_embeddings=True)),
    "qwen2.5-0.5b": ("Qwen2Config", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                         max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                                         tie_word_embeddings=True)),
}


def model_dir(name: str) -> Path:
    """The HF directory of WORK["model"]: the bundled model, or a random model of a SHAPES shape."""
    from grpo.compute.gguf_cache import bundled_model_dir, cache_root

    if name == "bundled":
        return bundled_model_dir()
    out = cache_root() / "bench-shapes" / name
    if not (out / "config.json").is_file():
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kind, fields = SHAPES[name]
        tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
        config = getattr(transformers, kind)(**fields, bos_token_id=tokenizer.bos_token_id,
                                             eos_token_id=tokenizer.eos_token_id)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tmp = out.with_name(out.name + ".tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out)
    return out


def num_params(path: Path) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(p.numel() for p in model.parameters())  # tied weights once


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def in_order(examples):
    """The prompt file in order, like TRL with shuffle_dataset=False: the trainer's data stream
    (grpo.tasks.sampling.PromptSampler, no difficulty estimates) drawing rows in file order."""
    from grpo.tasks.sampling import PromptSampler

    class InOrder(PromptSampler):
        name = "in_order"

        def take(self, n):
            out = [self.examples[(self.position + i) % len(self.examples)] for i in range(n)]
            self.position += n
            return out

    return InOrder(examples, 0, 0, None, (0.0, 1.0))


def grpo_config(w: dict, *overrides: str):
    """grpo's Config for the work `w` (WORK or a variant of it), plus dotted overrides."""
    from grpo.config import load_config

    path = model_dir(w.get("model", "bundled"))
    return load_config(None, [
        f"model.path={path}", f"output_dir={tempfile.mkdtemp()}", f"seed={w['seed']}", f"rollout.engine={w.get('engine', 'shared_prefix')}",
        *([f"rollout.vllm={json.dumps(w['vllm'])}"] if "vllm" in w else []),
        f"rollout.group_size={w['group_size']}", f"rollout.max_new_tokens={w['max_new_tokens']}",
        f"rollout.temperature={w['temperature']}", f"train.prompts_per_step={w['prompts_per_step']}",
        f"algorithm.beta={w['beta']}", f"algorithm.epsilon={w['epsilon']}", "algorithm.loss_type=grpo",
        f"train.learning_rate={w['learning_rate']}", "train.adam_betas=[0.9, 0.999]",
        f"train.micro_batch_size={w['micro_batch_size']}", "task.num_train=10", "task.num_eval=1",
        f"model.precision={w.get('precision', 'float32')}",
        "log.progress=false", "log.tensorboard=false", *overrides,
    ])


def run_grpo(steps: int) -> dict:
    from grpo.training.trainer import Trainer

    t0 = time.time()
    w = WORK
    trainer = Trainer.build(grpo_config(w))
    examples = load_prompts()
    counts = prompt_token_counts(trainer.tokenizer, examples)
    trainer.data = in_order(examples)
    startup = time.time() - t0
    records = []
    for i in range(steps + 1):
        start = trainer.data.position
        m, _ = trainer.train_step()
        if i == 0:
            continue  # warm-up
        records.append({
            "step": m["time/step"], "generation": m["time/generation"], "logprobs": m["time/logprobs"],
            "update": m["time/update"], "rewards": m["time/rewards"], "tokens_generated": m["tokens_generated"],
            "reward": m["reward/mean"], "prompt_tokens": sum(counts[start: start + w["prompts_per_step"]]),
            "completion_tokens": m["tokens_generated"], "max_completion": m["completion_length/max"],
        })
        print(f"grpo step {i}: {m['time/step']:.1f} s, reward {m['reward/mean']:.2f}", flush=True)
    return {"steps": records, "peak_rss_gib": peak_rss_gib(), "startup_s": startup, "num_params": num_params(model_dir(w.get("model", "bundled"))),
            "precision": trainer.precision.record()}


def run_trl(steps: int) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    t0 = time.time()
    w = WORK
    timers: dict[str, float] = defaultdict(float)
    path = model_dir(w.get("model", "bundled"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    examples = load_prompts()
    counts = prompt_token_counts(tokenizer, examples)
    by_id = {ex.id: ex for ex in examples}
    dataset = Dataset.from_list([{"prompt": ex.prompt, "answer": ex.answer, "ex_id": ex.id} for ex in examples])

    def reward_func(name):
        fn = rewards.get(name)

        def score(prompts, completions, ex_id, **kwargs):
            t = time.perf_counter()
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            out = [float(fn(text, by_id[i])) for text, i in zip(texts, ex_id, strict=True)]
            timers["rewards"] += time.perf_counter() - t
            return out

        score.__name__ = name
        return score

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers[key if key != "logprobs" or not torch.is_grad_enabled() else "policy_forward"] += (
                    time.perf_counter() - t)
        return wrapper

    model.generate = timed(model.generate, "generation")
    GRPOTrainer._get_per_token_logps_and_entropies = timed(GRPOTrainer._get_per_token_logps_and_entropies,
                                                           "logprobs")
    records: list[dict] = []

    class Clock(TrainerCallback):
        """Times each step; records it when it logs (HF logs right after on_step_end, and
        GRPOTrainer adds its reward and length metrics to the logs the callbacks receive)."""

        def on_step_begin(self, args, state, control, **kw):
            timers.clear()
            self.t = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "reward" not in logs:
                return
            step_time = time.perf_counter() - self.t
            i = state.global_step - 1  # 0 = the warm-up step
            if i == 0:
                return
            n = w["group_size"] * w["prompts_per_step"]
            mean_len = float(logs.get("completions/mean_length", 0.0))
            start = i * w["prompts_per_step"]
            phases = {k: timers.get(k, 0.0) for k in ("generation", "logprobs", "rewards")}
            records.append({
                "step": step_time, **phases, "update": step_time - sum(phases.values()),
                "tokens_generated": mean_len * n, "reward": float(logs["reward"]),
                "prompt_tokens": sum(counts[start: start + w["prompts_per_step"]]),
                "completion_tokens": mean_len * n,
                "max_completion": float(logs.get("completions/max_length", mean_len)),
            })
            print(f"trl step {i}: {step_time:.1f} s, reward {float(logs['reward']):.2f}", flush=True)

    clock = Clock()

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=w["group_size"] * w["prompts_per_step"],
        num_generations=w["group_size"], max_completion_length=w["max_new_tokens"], temperature=w["temperature"],
        top_p=1.0, top_k=0, beta=w["beta"], epsilon=w["epsilon"], loss_type="grpo", num_iterations=1,
        learning_rate=w["learning_rate"], lr_scheduler_type="constant", seed=w["seed"], max_steps=steps + 1,
        logging_steps=1, report_to="none", use_cpu=True, save_strategy="no", shuffle_dataset=False,
        gradient_checkpointing=False, bf16=w.get("trl_bf16", False), fp16=False,
        **({"use_vllm": True, "vllm_mode": "colocate", "vllm_enable_sleep_mode": False} if w.get("trl_vllm") else {}), max_grad_norm=1.0, disable_tqdm=True,
    )
    trainer = GRPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                          reward_funcs=[reward_func("format"), reward_func("accuracy")], callbacks=[clock])
    startup = time.time() - t0
    trainer.train()
    return {"steps": records, "peak_rss_gib": peak_rss_gib(), "startup_s": startup, "num_params": num_params(model_dir(w.get("model", "bundled"))),
            "precision": {"compute": "bfloat16" if w.get("trl_bf16") else "float32"}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=["grpo", "trl", "make-prompts"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default=None)
    parser.add_argument("--work", default="{}", help="JSON overrides of compare_trl.WORK (bench/scaling.py)")
    args = parser.parse_args()
    WORK.update(json.loads(args.work))
    if args.system == "make-prompts":
        make_prompts()
        return
    torch.manual_seed(WORK["seed"])
    result = run_grpo(args.steps) if args.system == "grpo" else run_trl(args.steps)
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
