"""Rewards that run a local model: a sequence-classification reward model and an LLM judge.

    get("reward_model", path="runs/rm")        # the model's score of prompt + completion
    get("judge", path="models/judge-1.5b")      # 1.0 if the judge says the answers match

Both take a local Hugging Face directory (nothing is downloaded), load it once on first use
or when `fn.load()` is called (`rewards.build` calls it, so a bad directory fails before
training), run under torch.no_grad, and score a whole group in micro-batches through
`fn.batch(completions, examples) -> list[float]`, which the harness prefers;
`fn(completion, example)` is a batch of one. Each is a ModelReward: a Reward
(grpo.rewards.reward) that also holds its model, for iterative RL's retraining. Calls into one model are serialized by a lock
(fast tokenizers are not safe to share between threads).

The config's `reward_timeout` (sized for user functions, which can hang) does not apply to
them: a model reward's cost is a known forward pass, which on a CPU can take longer than
any fixed limit (the judge on the bundled model failed every batch at the default reward_timeout).
Option `timeout` gives one its own limit in seconds per batch; the default null means none.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grpo.rewards import check_option
from grpo.rewards.answers import extract_answer
from grpo.rewards.reward import Reward
from grpo.tasks.base import Example

JUDGE_TEMPLATE = (
    "You are grading an answer to a question. Decide whether the candidate answer means the "
    "same as the reference answer (the same value or object, possibly written differently).\n"
    "Question: {question}\n"
    "Reference answer: {gold}\n"
    "Candidate answer: {answer}\n"
    "Is the candidate answer equivalent to the reference answer? Reply Yes or No."
)
YES_VARIANTS = ("Yes", " Yes")
NO_VARIANTS = ("No", " No")


class _Lazy:
    """What `load` returns, computed once by whichever thread asks first; holds the lock
    that serializes use of the model."""

    def __init__(self, load: Callable[[], Any]):
        self._load, self._value, self.lock = load, None, threading.RLock()

    def get(self) -> Any:
        with self.lock:
            if self._value is None:
                self._value = self._load()
            return self._value


def _check_common(reward: str, path: Any, batch_size: Any, max_length: Any, timeout: Any) -> None:
    check_option(isinstance(path, str) and (Path(path) / "config.json").is_file(), reward, "path", path,
                 "a local model directory holding config.json")
    check_option(isinstance(batch_size, int) and batch_size >= 1, reward, "batch_size", batch_size, "an integer >= 1")
    check_option(isinstance(max_length, int) and max_length >= 1, reward, "max_length", max_length, "an integer >= 1")
    check_option(timeout is None or (isinstance(timeout, int | float) and not isinstance(timeout, bool)
                                     and timeout > 0), reward, "timeout", timeout,
                 "null (no limit) or a number of seconds > 0")


def _device_dtype(reward: str, device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    from grpo.compute.models import resolve_device, resolve_dtype

    try:
        dev = resolve_device(device)
    except ValueError:
        raise ValueError(f"reward `{reward}` option `device` = {device!r} is invalid: expected auto, cpu, "
                         "cuda or cuda:N (on a machine with CUDA)") from None
    try:
        return dev, resolve_dtype(dtype, dev)
    except ValueError:
        raise ValueError(f"reward `{reward}` option `dtype` = {dtype!r} is invalid: expected auto, float32, "
                         "bfloat16 or float16") from None


@dataclass(frozen=True)
class ModelReward(Reward):
    held: _Lazy | None = None  # the model, for iterative RL's retraining (grpo.reward_model.iterative)


def _attach(reward: str, held: _Lazy, batch: Callable[[list[str], list[Example]], list[Any]],
            timeout: float | None, steps: str | None = None) -> ModelReward:
    """The Reward of a model `batch` function: one completion is a batch of one, `timeout`
    (the option, not the config's reward_timeout) its limit."""

    def one(completion: str, example: Example) -> Any:
        return batch([completion], [example])[0]

    one.__name__ = one.__qualname__ = reward
    return ModelReward(one, batch=batch, load=held.get, timeout=timeout, steps=steps, held=held)


def reward_model_text(tokenizer: Any, prompt: list[dict[str, str]], completion: str) -> str:
    """What a reward model scores (and `grpo train-rm` trains it on): the chat template over the
    prompt's messages plus the completion as the assistant turn."""
    return tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": completion}], tokenize=False)


def reward_model(*, path: str, label: int | None = None, device: str = "cpu", dtype: str = "float32",
                 batch_size: int = 8, max_length: int = 2048,
                 timeout: float | None = None) -> ModelReward:
    """The logit of an AutoModelForSequenceClassification for prompt + completion.

    The text scored is the tokenizer's chat template over example.prompt plus the completion
    as the assistant turn. label: which logit (required when the model has several; a reward
    model has one). Sequences longer than max_length tokens lose their beginning, not the
    end the score is read from. timeout: seconds one batch may take (null: no limit).
    """
    _check_common("reward_model", path, batch_size, max_length, timeout)
    check_option(label is None or (isinstance(label, int) and label >= 0), "reward_model", "label", label,
                 "null or an integer >= 0")
    dev, dt = _device_dtype("reward_model", device, dtype)

    def load() -> tuple[Any, Any, int]:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        if not tok.chat_template:
            raise ValueError(f"reward `reward_model`: the tokenizer in {path!r} has no chat template to render "
                             "prompt + completion with")
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dt).to(dev).eval()
        num_labels = model.config.num_labels
        if label is None and num_labels != 1:
            raise ValueError(f"reward `reward_model`: the model in {path!r} has {num_labels} labels; set option "
                             "`label` to the index of the one to use")
        check_option(label is None or label < num_labels, "reward_model", "label", label,
                     f"an index below the model's {num_labels} labels")
        if tok.pad_token is None:  # the model reads the last non-pad token of each row
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
        tok.truncation_side = "left"
        return tok, model, label or 0

    held = _Lazy(load)

    def batch(completions: list[str], examples: list[Example]) -> list[float]:
        with held.lock:
            tok, model, index = held.get()
            texts = [reward_model_text(tok, ex.prompt, c) for c, ex in zip(completions, examples, strict=True)]
            scores: list[float] = []
            with torch.no_grad():
                for s in range(0, len(texts), batch_size):
                    enc = tok(texts[s : s + batch_size], padding=True, truncation=True, max_length=max_length,
                              add_special_tokens=False, return_tensors="pt").to(dev)
                    scores += model(**enc).logits[:, index].float().tolist()  # [b]
            return scores

    return _attach("reward_model", held, batch, timeout)


def _first_tokens(tok: Any, words: tuple[str, ...]) -> set[int]:
    return {ids[0] for w in words if (ids := tok.encode(w, add_special_tokens=False))}


def judge(*, path: str, template: str = JUDGE_TEMPLATE, soft: bool = False, device: str = "cpu",
          dtype: str = "float32", batch_size: int = 8, max_length: int = 2048,
          timeout: float | None = None) -> ModelReward:
    """LLM-as-judge: 1.0 if a local causal LM finds the answer equivalent to the gold, else 0.0.

    The answer is `extract_answer(completion)` (no answer: 0.0 without asking). The judge
    reads `template` (placeholders {question}, {gold}, {answer}) as a user turn of its chat
    template (plain text + "\\nAnswer:" without one) and we compare the probability of its
    next token being "Yes" vs "No" (summed over the first tokens of YES_VARIANTS and
    NO_VARIANTS): no sampling, so the same inputs always get the same reward. soft=True
    returns P(Yes) / (P(Yes) + P(No)) instead of the 0/1 verdict. timeout: seconds one batch
    may take (null: no limit).
    """
    _check_common("judge", path, batch_size, max_length, timeout)
    check_option(isinstance(soft, bool), "judge", "soft", soft, "true or false")
    check_option(isinstance(template, str) and "{answer}" in template and "{gold}" in template, "judge",
                 "template", template, "a string with {answer} and {gold} (and optionally {question})")
    try:
        template.format(question="", gold="", answer="")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"reward `judge` option `template` is invalid: {e!r}; placeholders allowed: "
                         "{question}, {gold}, {answer} (write literal braces as {{ }})") from None
    dev, dt = _device_dtype("judge", device, dtype)

    def load() -> tuple[Any, Any, list[int], list[int]]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt).to(dev).eval()
        yes, no = _first_tokens(tok, YES_VARIANTS), _first_tokens(tok, NO_VARIANTS)
        yes, no = yes - no, no - yes
        if not yes or not no:
            raise ValueError(f"reward `judge`: the tokenizer in {path!r} gives Yes and No the same first token")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = tok.truncation_side = "left"  # the next token is read at position -1
        return tok, model, sorted(yes), sorted(no)

    held = _Lazy(load)

    def prompt(tok: Any, completion: str, example: Example) -> str | None:
        answer = extract_answer(completion)
        if not answer:
            return None
        text = template.format(question=example.question, gold=example.answer, answer=answer)
        if tok.chat_template:
            return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
        return text + "\nAnswer:"

    def batch(completions: list[str], examples: list[Example]) -> list[float]:
        with held.lock:
            tok, model, yes, no = held.get()
            prompts = [prompt(tok, c, ex) for c, ex in zip(completions, examples, strict=True)]
            asked = [i for i, p in enumerate(prompts) if p is not None]
            out = [0.0] * len(prompts)
            with torch.no_grad():
                for s in range(0, len(asked), batch_size):
                    rows = asked[s : s + batch_size]
                    enc = tok([prompts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                              add_special_tokens=not tok.chat_template, return_tensors="pt").to(dev)
                    mask = enc["attention_mask"]  # [b, T], left-padded
                    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [b, T], as if unpadded
                    logits = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions,
                                   logits_to_keep=1).logits[:, -1].float()  # [b, V]
                    logp = logits.log_softmax(-1)  # [b, V]
                    margin = logp[:, yes].logsumexp(-1) - logp[:, no].logsumexp(-1)  # [b] log P(Yes)/P(No)
                    verdict = margin.sigmoid() if soft else (margin > 0).float()  # [b]
                    for i, value in zip(rows, verdict.tolist(), strict=True):
                        out[i] = value
            return out

    return _attach("judge", held, batch, timeout)
