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

gold_sft's teacher is the task itself: `GoldDemonstrations` turns each group's example's gold
demonstration (tasks.Example.demonstration) into tokens after that group's prompt, a
`DemonstrationBatch` the update trains by teacher forcing (step 5 builds it, `Teachers.demonstrations`).
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
from grpo.rollout.transformers_engine import eos_token_ids
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
class DemonstrationBatch(TokenSequences):
    """Gold demonstrations of some groups of a step: row j is the prompt of trajectory row prompt_rows[j]
    (its group's first row, the same ids) followed by a demonstration's tokens, right-padded, EOS last
    (completion_mask 1 on each of them: every one is trained). prompt_rows: [M] long."""

    prompt_rows: torch.Tensor


@dataclass
class GoldDemonstrations:
    """gold_sft's rows: each group's example's gold demonstration (tasks.Example.demonstration), its text
    after task.assistant_prefix (a prompt token, so not trained again) tokenized as a completion, then EOS.
    An example without one, or whose demonstration is longer than the run's completion budget (the policy
    could not write it), gives no row."""

    tokenizer: Any
    eos_id: int
    assistant_prefix: str
    max_tokens: int

    def tokens(self, example: Any) -> list[int] | None:
        """The demonstration's completion token ids, EOS last; None where the example gives no row.
        # prefix '<think>', '<think> 3 + 4 = 7 </think> <answer> 7 </answer>' -> ids of ' 3 + 4 = 7 </think>
        #   <answer> 7 </answer>' + [eos]
        """
        text = getattr(example, "demonstration", None)
        if not text:
            return None
        prefix = self.assistant_prefix.strip()
        if prefix and text.startswith(prefix):
            text = text[len(prefix):]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos_id]
        return ids if len(ids) <= self.max_tokens else None

    def batch(self, trajectory: Trajectory, examples: list[Any], G: algorithm.GroupsLike) -> DemonstrationBatch | None:
        """The step's demonstrations, one per group whose example gives one (examples: one per group, in
        group order); None where none does."""
        starts = algorithm.Groups.of(G, len(trajectory)).starts
        rows, sequences = [], []
        for group, example in enumerate(examples):
            ids = self.tokens(example)
            if ids is not None:
                rows.append(starts[group])
                sequences.append(ids)
        if not rows:
            return None
        width = max(len(ids) for ids in sequences)
        completion = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, ids in enumerate(sequences):
            completion[j, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[j, : len(ids)] = 1
        index = torch.tensor(rows, dtype=torch.long)
        return DemonstrationBatch(trajectory.prompt_ids[index.to(trajectory.prompt_ids.device)].cpu(),
                                  trajectory.prompt_mask[index.to(trajectory.prompt_mask.device)].cpu(),
                                  completion, mask, index)


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
    """Each distillation term's teacher, by the term's name: models (distill) and selves (self_distill);
    and gold_sft's gold demonstrations (`gold`, None without that term)."""

    models: dict[str, ReferenceModel] = field(default_factory=dict)
    selves: dict[str, SelfTeacher] = field(default_factory=dict)
    gold: GoldDemonstrations | None = None

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
            if algorithm.AUX_LOSSES[spec.name].gold:
                out.gold = GoldDemonstrations(tokenizer, eos_token_ids(policy, tokenizer)[0], cfg.task.assistant_prefix,
                                              cfg.rollout.max_new_tokens)
        return out

    def demonstrations(self, trajectory: Trajectory, examples: list[Any],
                       G: algorithm.GroupsLike) -> DemonstrationBatch | None:
        """gold_sft's rows for this step (GoldDemonstrations.batch); None without that term."""
        return None if self.gold is None else self.gold.batch(trajectory, examples, G)

    def logprobs(self, trajectory: Trajectory, examples: list[Any], rewards: torch.Tensor,
                 G: algorithm.GroupsLike) -> dict[str, torch.Tensor]:
        """{term name: [N, C] float32 teacher log-probs of the trajectory's completion tokens}, no grad."""
        out = {name: teacher.logprobs(trajectory) for name, teacher in self.models.items()}
        out.update({name: t.logprobs(trajectory, examples, rewards, G) for name, t in self.selves.items()})
        return out
