"""Generation with transformers' `model.generate` (rollout.engine=transformers): the plain
reference the faster engines are tested against, and the base class they share.

The G completions of a prompt are G copies of its row (repeat_interleave), so the prompt is
prefilled G times and finished rows keep decoding as padding (shared_prefix avoids both).
`TransformersEngine.generate` turns any subclass's sampled tokens into the Trajectory, so
masks, padding, finish reasons and policy versions are the same for every engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from grpo.compute.packed_linear import rollout_linears
from grpo.rollout.base import (
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_STOP,
    SamplingParams,
    Trajectory,
    completion_mask,
)
from grpo.rollout.stops import StopStrings


class TransformersEngine:
    """Engine over a (possibly peft-wrapped) causal LM and its tokenizer.

    max_prompt_tokens: prompts longer than this raise ValueError; None = the model's
    context (max_position_embeddings) minus max_new_tokens. dtype: what the linear layers of a
    rollout compute in (rollout.precision; grpo.compute.packed_linear.rollout_linears).
    """

    decodes_with_policy = True  # the policy module itself runs the decode (not a copy elsewhere)

    def __init__(self, model: Any, tokenizer: Any, max_prompt_tokens: int | None = None,
                 dtype: torch.dtype = torch.float32):
        self.model = model
        self.dtype = dtype
        self.version = 0  # optimizer updates the sampling weights have seen (sync_weights)
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.eos_ids = eos_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = model.generation_config.pad_token_id
        self.pad_id = self.eos_ids[0] if pad is None else pad

    def sync_weights(self, model: Any, version: int) -> None:
        """The policy module decodes itself, so new weights are used at once: record the version."""
        assert model is self.model, "sync_weights got a different model than the engine's policy"
        self.version = version

    def close(self) -> None:
        """Nothing to release: the policy module is the trainer's."""

    def generate(self, prompts: list[str], params: SamplingParams) -> Trajectory:
        if not prompts:
            raise ValueError("generate() needs at least one prompt")
        # The prompts are rendered chat texts: the template already holds the special tokens.
        return self.generate_tokens(self.tokenizer(prompts, add_special_tokens=False)["input_ids"], params)

    def generate_tokens(self, prompts: list[list[int]], params: SamplingParams) -> Trajectory:
        """generate() on prompts given as token ids (multi-turn episodes continue from the ids
        sampled so far, never from re-tokenized text)."""
        if not prompts:
            raise ValueError("generate_tokens() needs at least one prompt")
        params.sizes(len(prompts))  # a count per prompt, or refused before any forward
        device = next(self.model.parameters()).device
        self._check_lengths([len(p) for p in prompts], params.max_new_tokens)
        P = max(len(p) for p in prompts)
        unique_ids = torch.tensor([[self.pad_id] * (P - len(p)) + p for p in prompts], device=device)  # [B, P]
        unique_mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], device=device)  # [B, P]
        reordered = rollout_linears(self.model, self.dtype) if self.decodes_with_policy else nullcontext()
        with _eval_mode(self.model), torch.no_grad(), _seeded(params.seed, device), reordered:
            # no_grad, not inference_mode: the ids feed later forwards that need autograd
            completion_ids, logprobs = self._sample(unique_ids, unique_mask, params)  # [N, C] each
        prompt_ids = params.repeat(unique_ids)  # [N, P]
        prompt_mask = params.repeat(unique_mask)  # [N, P]
        mask, rows, texts, reasons = self._ends(completion_ids, params)
        completion_ids = completion_ids.masked_fill(mask == 0, self.pad_id)
        return Trajectory(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            completion_ids=completion_ids,
            completion_mask=mask,
            loss_mask=mask.clone(),  # every token after the prompt was sampled by the policy
            # greedy puts all mass on the token it picks: log 1 = 0
            sampler_logprobs=torch.where(mask.bool(), logprobs.float(), 0.0),
            policy_version=torch.full((len(rows),), self.version, dtype=torch.long),
            completions=texts,
            finish_reasons=reasons,
        )

    def _ends(self, completion_ids: torch.Tensor,
              params: SamplingParams) -> tuple[torch.Tensor, list[list[int]], list[str], list[str]]:
        """Where each sampled row [N, C] ends: at its first EOS, at the token completing its
        first stop string, or at the token budget. -> (mask [N, C], token rows, texts, reasons)."""
        eos = torch.tensor(self.eos_ids, device=completion_ids.device)
        mask = completion_mask(completion_ids, eos)  # [N, C]
        has_eos = (torch.isin(completion_ids, eos) & (mask == 1)).any(1).tolist()
        rows = [ids[:n] for ids, n in zip(completion_ids.tolist(), mask.sum(1).tolist(), strict=True)]
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        reasons = [FINISH_EOS if e else FINISH_LENGTH for e in has_eos]
        if params.stop:
            stops = StopStrings(self.tokenizer, params.stop)
            for i, row in enumerate(rows):
                cut = stops.cut(row) if stops.held(texts[i]) else None
                if cut is not None:
                    rows[i], texts[i], reasons[i] = row[: cut[0]], cut[1], FINISH_STOP
            lengths = torch.tensor([len(r) for r in rows], device=mask.device)
            mask = (torch.arange(mask.shape[1], device=mask.device)[None] < lengths[:, None]).long()
        # a row the engine ended early ended on an EOS or a stop string
        assert all(r != FINISH_LENGTH or len(row) == params.max_new_tokens for r, row in zip(reasons, rows, strict=True))
        return mask, rows, texts, reasons

    def _sample(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
        """G completions per prompt row (params.sizes): [B, P] -> token ids [B*G, C] (C <= max_new_tokens) and
        each token's log-probability under the distribution it was drawn from [B*G, C].

        generate's `scores` are the processed logits it sampled from (after its temperature,
        top-k and top-p warpers), one [N, V] per step, all held until it returns: this
        reference engine pays C * N * V floats for them (the faster engines pay nothing).
        """
        stopping = [TailStop(StopStrings(self.tokenizer, params.stop), prompt_ids.shape[1])] if params.stop else []
        out = self.model.generate(
            input_ids=params.repeat(prompt_ids),
            attention_mask=params.repeat(prompt_mask),
            stopping_criteria=StoppingCriteriaList(stopping),
            **self._generate_kwargs(params),
        )  # sequences [N, P + C]; position ids come from the attention mask inside generate
        tokens = out.sequences[:, prompt_ids.shape[1] :]  # [N, C]
        if params.greedy:
            return tokens, torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
        logprobs = [torch.log_softmax(step.float(), dim=-1).gather(1, tokens[:, t : t + 1])
                    for t, step in enumerate(out.scores)]  # C x [N, 1]
        return tokens, torch.cat(logprobs, dim=1)

    def _generate_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        # Everything that shapes the distribution is passed explicitly, so a model's own
        # generation_config (SmolLM2 or a user's model may set temperature, top_k, penalties)
        # never overrides our config. top_k=0 must be passed: left unset, generate uses 50.
        kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=0,
            num_beams=1,
            num_return_sequences=1,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            use_cache=True,
            output_scores=not params.greedy,  # the processed logits sampled from (sampler log-probs)
            return_dict_in_generate=True,
        )
        if params.greedy:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        return kwargs

    def _check_lengths(self, lengths: list[int], max_new_tokens: int) -> None:
        limit = self.max_prompt_tokens
        name = "rollout.max_prompt_tokens"
        if limit is None:
            limit = self.model.config.max_position_embeddings - max_new_tokens
            name = "the model context minus rollout.max_new_tokens"
        for i, n in enumerate(lengths):
            if n > limit:
                raise ValueError(f"prompt {i} has {n} tokens, more than {name} = {limit}")


class TailStop(StoppingCriteria):
    """generate's per-row stop test for stop strings: the text of each row's last tokens
    (the same test the shared_prefix loop runs), so every engine stops rows alike."""

    def __init__(self, stops: StopStrings, prompt_width: int):
        self.stops, self.prompt_width = stops, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        start = max(self.prompt_width, input_ids.shape[1] - self.stops.window)
        return torch.tensor(self.stops.hits(input_ids[:, start:].tolist()), device=input_ids.device)


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's eos plus the generation config's (ChatML models: <|im_end|> and more)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    gen = model.generation_config.eos_token_id
    for i in gen if isinstance(gen, list) else [gen]:
        if i is not None and i not in ids:
            ids.append(i)
    if not ids:
        raise ValueError("the tokenizer and the model's generation_config define no eos token")
    return ids


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Eval mode while generating (no dropout); the policy's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the sampler for this call only; the caller's RNG streams are restored after."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
