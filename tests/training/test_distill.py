"""Distillation terms in the update and the loop: the self-distillation teacher's log-probs against one
plain forward of the prompt with its worked example, the updater's gradient with a distill term against a
plain forward, short runs with a local teacher, a `grpo serve-ref` teacher and the policy as its own
teacher, a run whose only signal is distillation, exact resume, and the mismatched-tokenizer error."""

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from grpo import algorithm
from grpo.compute.distributed import World
from grpo.compute.models import load_frozen
from grpo.config import AlgorithmConfig, AuxLossSpec, ModelConfig
from grpo.serve.server import make_app
from grpo.training.loss import AuxiliaryLosses, PolicyLoss
from grpo.training.teachers import SelfTeacher, with_demonstration
from grpo.training.trainer import train
from grpo.training.update import UpdateBatch, Updater, UpdateSettings
from tests.support.runs import assert_same_final_weights, read_metrics, tiny_config
from tests.support.servers import ServerThread
from tests.support.tiny import make_tiny_model, make_tiny_model_dir
from tests.training.test_auxiliary import REWARDS
from tests.training.test_update import CPU, plain_logits, setup  # noqa: F401 (setup: the fixture)

TOKEN = "teacher-test-token-0123456789"
QUESTIONS = ["What is 3 + 4?", "What is 12 + 30 + 7?"]  # the setup fixture's prompts, one group each


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """Another tiny model with the policy's tokenizer (make_tiny_model's seed picks the tokenizer too)."""
    model, tokenizer = make_tiny_model(hidden_size=32, num_layers=1, seed=0)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_with_demonstration_by_hand():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "What is 2 + 2?"}]
    got = with_demonstration(messages, "<answer>4</answer>")
    assert got == [{"role": "system", "content": "s"}, {"role": "user", "content": "What is 2 + 2?\n\nA correct "
                   "solution:\n<answer>4</answer>\n\nSolve the problem again."}]
    assert messages[1]["content"] == "What is 2 + 2?"  # a copy
    assert with_demonstration([], "x") == [{"role": "user", "content": "A correct solution:\nx\n\nSolve the problem again."}]


def test_the_self_teacher_reads_the_prompt_with_the_groups_success(setup, tiny_model_dir):  # noqa: F811
    # rewards [0, 1, 1, 0 | 2, 0, 1, 3]: group 0's success is row 1, group 1's row 7; the other rows are taught
    model, trajectory, _ = setup
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def render(messages):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    examples = [SimpleNamespace(prompt=[{"role": "user", "content": q}]) for q in QUESTIONS]
    teacher = SelfTeacher(model, tokenizer, render, None, 3, CPU, 1.0)
    got = teacher.logprobs(trajectory, examples, REWARDS, 4)  # [8, C]
    for row, demo in [(0, 1), (2, 1), (3, 1), (4, 7), (5, 7), (6, 7)]:
        text = render(with_demonstration(examples[row // 4].prompt, trajectory.completions[demo]))
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        n = int(trajectory.completion_mask[row].sum())
        completion = trajectory.completion_ids[row, :n].tolist()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1]
        want = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(completion)[:, None])[:, 0]
        torch.testing.assert_close(got[row, :n], want, atol=1e-5, rtol=0)
    assert (got[[1, 7]] == 0).all()  # the successes themselves are not taught


def test_a_distill_term_gives_the_plain_forward_gradient_whatever_the_micro_batching(setup):  # noqa: F811
    # policy_loss + 0.4 * reverse KL against given teacher log-probs, from one plain forward
    model, trajectory, _ = setup
    a = AlgorithmConfig(aux_losses=[AuxLossSpec("distill", 0.4, teacher_path="unused")])
    loss, aux = PolicyLoss.from_config(a, 10), AuxiliaryLosses.from_config(a, 10, 10)
    params = [p for p in model.parameters() if p.requires_grad]
    advantages = torch.linspace(-1, 1, len(trajectory))
    torch.manual_seed(0)
    old = torch.randn(trajectory.completion_ids.shape) * 0.1 - 3
    teacher = torch.randn(trajectory.completion_ids.shape) * 0.5 - 4
    plan = aux.plan(REWARDS, trajectory.loss_mask, 4, 0, World(), {"distill": teacher})
    assert plan.roles["distill"].tolist() == [1] * 8 and plan.metrics["aux/distill/groups"] == 1.0
    logprobs = algorithm.token_logprobs(plain_logits(model, trajectory), trajectory.completion_ids)
    value, _ = loss(logprobs, old, advantages, trajectory.loss_mask, None, loss.local_items(trajectory.loss_mask))
    kl = algorithm.reverse_kl_loss(logprobs, teacher, trajectory.loss_mask, plan.roles["distill"], torch.zeros(8),
                                   plan.counts["distill"], algorithm.AuxOptions("grpo", 10))
    (value + 0.4 * kl).backward()
    want = [p.grad.clone() for p in params]
    scale = max(w.abs().max().item() for w in want)
    for micro in (2, 3):
        model.zero_grad(set_to_none=True)
        updater = Updater(model, params, loss, World(), UpdateSettings(micro, 1.0, CPU))
        got = updater.accumulate_gradients(UpdateBatch(trajectory, advantages, old, aux=plan))
        assert got["aux/distill"] == pytest.approx(kl.item(), rel=1e-5)
        for p, w in zip(params, want, strict=True):
            torch.testing.assert_close(p.grad, w, atol=1e-5 * scale, rtol=0)


def distill(teacher: str) -> str:
    return f"algorithm.aux_losses=[{{name: distill, weight: 1.0, {teacher}}}]"


def run(tmp_path, tiny_model_dir, data_file, where, *more):
    cfg = tiny_config(tmp_path / where, tiny_model_dir, data_file, "eval.num_examples=0", *more)
    train(cfg)
    return read_metrics(cfg.output_dir)


def test_short_runs_with_a_local_and_a_served_teacher_agree(tmp_path, tiny_model_dir, data_file, teacher_dir,
                                                             monkeypatch):
    local = run(tmp_path, tiny_model_dir, data_file, "local", distill(f"teacher_path: '{teacher_dir}'"))
    assert [m["step"] for m in local] == [1, 2]
    for m in local:  # a different model: a positive KL estimate on the policy's own samples
        assert math.isfinite(m["aux/distill"]) and m["aux/distill"] > 0 and m["aux/distill/groups"] == 1.0
    server = ServerThread(make_app(load_frozen(ModelConfig(path=str(teacher_dir), device="cpu")), TOKEN))
    monkeypatch.setenv("GRPO_TEACHER_TOKEN", TOKEN)
    try:
        served = run(tmp_path, tiny_model_dir, data_file, "served", distill(f"teacher_url: '{server.url}'"))
    finally:
        server.stop()
    for a, b in zip(local, served, strict=True):  # the same log-probs, computed by the server
        assert b["aux/distill"] == pytest.approx(a["aux/distill"], rel=1e-4)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)


def test_distillation_alone_trains_when_the_rewards_weigh_nothing(tmp_path, tiny_model_dir, data_file, teacher_dir):
    # every reward weight 0: every advantage is 0, the policy loss is 0, the distill term is all the loss
    metrics = run(tmp_path, tiny_model_dir, data_file, "alone", "rewards=[{name: format, weight: 0}]",
                  distill(f"teacher_path: '{teacher_dir}'"))
    for m in metrics:
        assert m["loss"] == pytest.approx(m["aux/distill"], rel=1e-5) and m["grad_norm"] > 0


def test_a_short_self_distillation_run_logs_it(tmp_path, tiny_model_dir, data_file):
    metrics = run(tmp_path, tiny_model_dir, data_file, "self", "algorithm.aux_losses=[{name: self_distill, weight: 1.0}]")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["aux/self_distill"]) and 0 <= m["aux/self_distill/groups"] <= 1 for m in metrics)
    assert any(m["aux/self_distill/groups"] > 0 for m in metrics)  # length rewards differ: a group had a success


def test_resume_is_exact_with_both_distillation_terms(tmp_path, tiny_model_dir, data_file, teacher_dir):
    terms = (f"algorithm.aux_losses=[{{name: distill, weight: 0.5, teacher_path: '{teacher_dir}'}}, "
             "{name: self_distill, weight: 0.5}]")
    whole = run(tmp_path, tiny_model_dir, data_file, "full", "train.num_steps=4", terms)
    run(tmp_path, tiny_model_dir, data_file, "half", "train.num_steps=2", terms)
    resumed = run(tmp_path, tiny_model_dir, data_file, "half", "train.num_steps=4", "resume=true", terms)
    assert resumed == whole
    assert_same_final_weights(tmp_path / "full" / "run", tmp_path / "half" / "run")


def test_a_teacher_with_another_tokenizer_is_refused(tmp_path, tiny_model_dir, data_file):
    other = make_tiny_model_dir(tmp_path / "other", seed=1)  # seed 1: another corpus, another BPE vocabulary
    with pytest.raises(ValueError, match=r"`algorithm.aux_losses\[0\].teacher_path` = .*tokenizer differs"):
        run(tmp_path, tiny_model_dir, data_file, "bad", distill(f"teacher_path: '{other}'"))


def test_a_served_teacher_with_another_vocabulary_is_refused(tmp_path, tiny_model_dir, data_file, monkeypatch):
    other = make_tiny_model_dir(tmp_path / "other", vocab_size=400)
    server = ServerThread(make_app(load_frozen(ModelConfig(path=str(other), device="cpu")), TOKEN))
    monkeypatch.setenv("GRPO_TEACHER_TOKEN", TOKEN)
    try:
        with pytest.raises(ValueError, match=r"`algorithm.aux_losses\[0\].teacher_url` = .*vocabulary has \d+ ids, the policy's 384"):
            run(tmp_path, tiny_model_dir, data_file, "bad", distill(f"teacher_url: '{server.url}'"))
    finally:
        server.stop()

