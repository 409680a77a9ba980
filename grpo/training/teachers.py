"""The distillation terms' teachers (algorithm.aux_losses, names distill and self_distill).

    teachers = Teachers.build(cfg, model, tokenizer, sampler, device, precision)   # once per run
    logprobs = teachers.logprobs(trajectory, examples, rewards, groups)   # step 5: {name: [N, C]}, no grad

Each teacher's log-probs of the step's completion tokens are computed at step 5 of the loop, beside
the reference's and the same way: through grpo.training.logprobs.batch_logprobs (the shared prompt
pass and grpo.compute.chunked_head's token_stats: no full logits), at the sampling temperature, or
by a `grpo serve-ref` server (grpo.serve.client.RemoteReference, the reference's client). They are
a function of the step's trajectory and of weights a checkpoint holds (a frozen teacher is read
from its directory again; the self-distillation teacher is the policy), so a resumed run computes
the same ones: nothing of theirs is saved.

- distill: a teacher model, frozen, loaded as the reference is (grpo.compute.models.load_frozen_beside)
  after its tokenizer is checked against the policy's: the term compares log-probs of the same ids.
- self_distill (SDPO-like): the teacher is the policy of the step (the weights that sampled, before
  this step's updates; no gradient) reading, for each row of a group with a successful completion,
  the prompt with that completion as a worked example (`with_demonstration`), then the row's own
  completion tokens, exactly as sampled.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from grpo import algorithm
from grpo.compute import models
from grpo.serve.client import RemoteReference
from grpo.training.logprobs import LocalReference, ReferenceModel, batch_logprobs
from grpo.trajectory import TokenSequences, Trajectory

# What self_distill appends to the prompt's last user message: {solution} is the successful completion's
# text as decoded (with task.assistant_prefix, as rewards see it).
DEMONSTRATION = "\n\nA correct solution:\n{solution}\n\nSolve the problem again."


def with_demonstration(messages: list[dict[str, str]], solution: str) -> list[dict[str, str]]:
    """The prompt's chat messages with the worked example in the last user message (appended as a user
    message where there is none); a copy. Into the user's turn, not a turn of its own, so templates that
    require alternating roles render it too.
    # [system s, user "What is 2 + 2?"], "<answer>4</answer>" -> [system s, user "What is 2 + 2?\n\nA correct
    #   solution:\n<answer>4</answer>\n\nSolve the problem again."]
    """
    out = [dict(m) for m in messages]
    users = [i for i, m in enumerate(out) if m.get("role") == "user"]
    text = DEMONSTRATION.format(solution=solution)
    if users:
        out[users[-1]]["content"] = out[users[-1]]["content"] + text
    else:
        out.append({"role": "user", "content": text.lstrip()})
    return out


def demonstrated_batch(trajectory: Trajectory, rows: torch.Tensor, prompts: list[list[int]],
                       pad_id: int) -> TokenSequences:
    """Rows of `trajectory` with new prompts (token ids, left-padded with pad_id) and their own completions."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return TokenSequences(ids, mask, trajectory.completion_ids[rows].cpu(), trajectory.completion_mask[rows].cpu())


@dataclass
class SelfTeacher:
    """self_distill's teacher: the policy given each group's successful completion (algorithm.demonstrations)."""

    model: torch.nn.Module
    tokenizer: Any
    render: Callable[[list[dict[str, str]]], str]  # chat messages -> the prompt text, as rollouts render it
    min_reward: float | None
    micro_batch_size: int
    device: torch.device
    temperature: float
    autocast: Callable[[], AbstractContextManager] = nullcontext

    def logprobs(self, trajectory: Trajectory, examples: list[Any], rewards: torch.Tensor,
                 G: algorithm.GroupsLike) -> torch.Tensor:
        """[N, C] float32: the teacher's log-probs of the rows self_distill trains (demonstrated_roles), 0 elsewhere."""
        eligible, rewards = trajectory.loss_mask.bool().any(1).cpu(), rewards.cpu()
        demo = algorithm.demonstrations(rewards, G, eligible, self.min_reward)  # [N]
        rows = algorithm.demonstrated_roles(rewards, G, eligible, self.min_reward).nonzero().squeeze(1)
        out = torch.zeros(trajectory.completion_ids.shape, dtype=torch.float32)
        if len(rows) == 0:
            return out
        group_of = algorithm.Groups.of(G, len(rewards)).ids  # [N]: each row's example
        texts = [self.render(with_demonstration(examples[group_of[r]].prompt, trajectory.completions[demo[r]]))
                 for r in rows.tolist()]
        prompts = self.tokenizer(texts, add_special_tokens=False)["input_ids"]  # as the engines tokenize prompts
        batch = demonstrated_batch(trajectory, rows, prompts, self.tokenizer.pad_token_id)
        with self.autocast():  # as the old-policy pass of step 5 computes
            out[rows] = batch_logprobs(self.model, batch, self.micro_batch_size, self.device, self.temperature)
        return out


def check_same_tokenizer(teacher: Any, policy: Any, name: str, path: str) -> None:
    """A ValueError naming the field unless the teacher's vocabulary (token -> id) is the policy's."""
    ours, theirs = policy.get_vocab(), teacher.get_vocab()
    if ours != theirs:
        differ = sum(theirs.get(token) != i for token, i in ours.items()) + len(set(theirs) - set(ours))
        raise ValueError(f"config field `{name}` = {path!r}: the teacher's tokenizer differs from the policy's "
                         f"(model.path): {len(theirs)} tokens against {len(ours)}, {differ} without the same id; "
                         "distillation compares log-probs of the same token ids, so the teacher must share the "
                         "policy's tokenizer")


def model_teacher(cfg: Any, index: int, spec: Any, policy: torch.nn.Module, tokenizer: Any, device: torch.device,
                  precision: Any) -> ReferenceModel:
    """distill's teacher: spec.teacher_path loaded here, or spec.teacher_url's server; its tokens checked."""
    name = f"algorithm.aux_losses[{index}]"
    if spec.teacher_url is not None:
        token = os.environ.get(spec.teacher_token_env, "")
        if not token:
            raise ValueError(f"config field `{name}.teacher_url` = {spec.teacher_url!r} is set but the environment "
                             f"variable {spec.teacher_token_env} ({name}.teacher_token_env) holding the server's "
                             "bearer token is empty or not set")
        r = cfg.reference
        remote = RemoteReference(spec.teacher_url, token, cfg.rollout.temperature, r.timeout, r.max_retries, r.backoff)
        ours, theirs = policy.get_input_embeddings().num_embeddings, remote.vocab_size()
        if theirs != ours:  # the server holds no tokenizer: its vocabulary's size is what it can tell
            raise ValueError(f"config field `{name}.teacher_url` = {spec.teacher_url!r}: the teacher's vocabulary "
                             f"has {theirs} ids, the policy's {ours}; the teacher must share the policy's tokenizer")
        return remote
    path = models.resolve_model_dir(spec.teacher_path, f"{name}.teacher_path")
    check_same_tokenizer(models.load_tokenizer(path), tokenizer, f"{name}.teacher_path", spec.teacher_path)
    teacher = models.load_frozen_beside(replace(cfg.model, path=str(path)), policy, precision.compute)
    return LocalReference(teacher, cfg.train.micro_batch_size, device, cfg.rollout.temperature, precision.autocast)


@dataclass
class Teachers:
    """Each distillation term's teacher, by the term's name: models (distill) and selves (self_distill)."""

    models: dict[str, ReferenceModel] = field(default_factory=dict)
    selves: dict[str, SelfTeacher] = field(default_factory=dict)

    @classmethod
    def build(cls, cfg: Any, policy: torch.nn.Module, tokenizer: Any, sampler: Any, device: torch.device,
              precision: Any) -> Teachers:
        out = cls()
        for i, spec in enumerate(cfg.algorithm.aux_losses):
            kind = algorithm.AUX_LOSSES[spec.name].teacher
            if kind == "model":
                out.models[spec.name] = model_teacher(cfg, i, spec, policy, tokenizer, device, precision)
            elif kind == "self":
                def render(messages, fmt=sampler.format):
                    return fmt.render_messages(tokenizer, messages)

                out.selves[spec.name] = SelfTeacher(policy, tokenizer, render, spec.min_reward,
                                                    cfg.train.micro_batch_size, device, cfg.rollout.temperature,
                                                    precision.autocast)
        return out

    def logprobs(self, trajectory: Trajectory, examples: list[Any], rewards: torch.Tensor,
                 G: algorithm.GroupsLike) -> dict[str, torch.Tensor]:
        """{term name: [N, C] float32 teacher log-probs of the trajectory's completion tokens}, no grad."""
        out = {name: teacher.logprobs(trajectory) for name, teacher in self.models.items()}
        out.update({name: t.logprobs(trajectory, examples, rewards, G) for name, t in self.selves.items()})
        return out
