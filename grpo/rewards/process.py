"""Built-in step (process) rewards: `arithmetic_steps` (a rule) and `process_reward_model` (a model).

Both return [(end offset, score), ...] for a completion (grpo.rewards.steps, split `offsets`).

    get("arithmetic_steps")                        # every `a op b = c` checked exactly
    get("process_reward_model", path="prm/", mode="causal_lm", step_tag="ки")
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

import torch

from grpo.episodes.tools.calculator import evaluate
from grpo.episodes.tools.errors import ToolError
from grpo.rewards import check_option
from grpo.rewards import steps as step_splits
from grpo.rewards.model_rewards import ModelReward, _attach, _check_common, _device_dtype, _Lazy
from grpo.rewards.reward import Reward
from grpo.tasks.base import Example

# A number as models write them: a sign (also the unicode minus), thousands separators
# (1,234,567: groups of exactly three digits), decimals.
_NUMBER = r"[-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)"
_OPERATOR = r"[-+\u2212*\u00d7/\u00f7]"
# `a op b (op c ...) = c`; the left side starts at a number that is not the tail of a longer
# token (`x2 + 3` is not an equation about 2), the right side is one number.
_EQUATION = re.compile(rf"(?<![\w.,])({_NUMBER}(?:\s*{_OPERATOR}\s*{_NUMBER})+)\s*=\s*({_NUMBER})")


def _plain(number: str) -> str:
    """A number as the calculator reads it: no separators, an ASCII minus."""
    return number.replace(",", "").replace("\u2212", "-")


def arithmetic_steps(*, correct_score: float = 1.0, wrong_score: float = 0.0) -> Reward:
    """Each equation `a op b (op ...) = c` in the completion is a step, checked exactly.

    A step ends at the end of its right-hand number; its score is correct_score when the
    left side's exact value (grpo.episodes.tools.calculator.evaluate: + - * / with ordinary
    precedence, no eval) equals c, else wrong_score. Integers, decimals, negatives, the
    unicode minus and thousands separators (1,234) are read; the running-sum layout
    "3 + 45 = 48, 48 - 2 = 46" gives two steps. Text that is not a whole equation (`3 + = 5`,
    `= 5`, words) is no step; a completion without equations has no steps.
    """
    for option, value in (("correct_score", correct_score), ("wrong_score", wrong_score)):
        check_option(isinstance(value, int | float) and not isinstance(value, bool), "arithmetic_steps", option,
                     value, "a number")

    def score(completion: str, example: Example) -> list[tuple[int, float]]:
        out, position = [], 0
        while match := _EQUATION.search(completion, position):
            left = re.sub(_NUMBER, lambda m: _plain(m.group(0)), match.group(1))
            try:
                right = evaluate(left) == Fraction(_plain(match.group(2)))
            except ToolError:  # e.g. a division by zero: a wrong step
                right = False
            out.append((match.end(), float(correct_score if right else wrong_score)))
            # the right side may start the next equation: "3 + 4 = 7 + 1 = 8" is two steps
            position = match.start(2)
        return out

    score.__name__ = "arithmetic_steps"
    return Reward(score, steps="offsets")


def prm_layout(tokenizer: Any, question: str, completion: str, split: str,
               tag_ids: list[int] | None = None) -> tuple[list[int], list[int], list[int]]:
    """A PRM's input for one completion: (ids, the position read for each step, the steps' end
    offsets). `{question} ` then each step of `split`, stripped, + " " (+ the tag's ids), each
    piece tokenized alone so the positions are exact. `grpo train-rm --prm` trains on it."""
    ends = step_splits.step_ends(completion, split)
    ids = tokenizer.encode(f"{question} ", add_special_tokens=False)
    positions, start = [], 0
    for end in ends:
        ids += tokenizer.encode(f"{completion[start:end].strip()} ", add_special_tokens=False)
        if tag_ids:
            ids += tag_ids
        positions.append(len(ids) - 1)
        start = end
    return ids, positions, ends


# How a process reward model is read: its head class and where its step scores come from.
PRM_MODES = {
    # a causal LM asked for a good/bad token at each step tag (Math-Shepherd's PRM layout)
    "causal_lm": "AutoModelForCausalLM",
    # a token-classification head read at each step's last token
    "token_classification": "AutoModelForTokenClassification",
}


def process_reward_model(*, path: str, mode: str = "causal_lm", split: str = "newline", step_tag: str = "ки",
                         good_token: str = "+", bad_token: str = "-", label: int = 1, device: str = "cpu",
                         dtype: str = "float32", batch_size: int = 8, max_length: int = 2048,
                         timeout: float | None = None) -> ModelReward:
    """Step scores in [0, 1] from a local process reward model, one per step of `split`.

    The input is the question, a space, then the completion's steps (grpo.rewards.steps split
    `split`: newline, sentence or tag:<text>), each stripped and followed by a space:
      mode causal_lm:            `{question} {step 1} {step_tag}{step 2} {step_tag}...`; a step's
                                 score is softmax([logit(good_token), logit(bad_token)])[0] read
                                 at its tag's last token (Math-Shepherd's PRM is read this way)
      mode token_classification: `{question} {step 1} {step 2} ...`; the probability of label
                                 `label` (softmax over the labels; sigmoid with one label) at
                                 each step's last token
    Segments are tokenized one by one, so each step's position is exact. A completion whose
    input exceeds max_length tokens, or has no steps, fails for this reward (counted).
    """
    check_option(mode in PRM_MODES, "process_reward_model", "mode", mode, f"one of {', '.join(PRM_MODES)}")
    problem = step_splits.check_split(split)
    check_option(problem is None and split != "offsets", "process_reward_model", "split", split,
                 "newline, sentence or tag:<text>")
    check_option(isinstance(label, int) and label >= 0, "process_reward_model", "label", label, "an integer >= 0")
    _check_common("process_reward_model", path, batch_size, max_length, timeout)
    dev, dt = _device_dtype("process_reward_model", device, dtype)

    def load() -> tuple[Any, Any, list[int]]:
        import transformers

        tok = transformers.AutoTokenizer.from_pretrained(path)
        model = getattr(transformers, PRM_MODES[mode]).from_pretrained(path, dtype=dt).to(dev).eval()
        if mode == "token_classification":
            check_option(model.config.num_labels == 1 or label < model.config.num_labels, "process_reward_model",
                         "label", label, f"an index below the model's {model.config.num_labels} labels")
            return tok, model, []
        read = []
        for option, text in (("step_tag", step_tag), ("good_token", good_token), ("bad_token", bad_token)):
            ids = tok.encode(text, add_special_tokens=False)
            check_option(bool(ids) and (option == "step_tag" or len(ids) == 1), "process_reward_model", option,
                         text, "text that the PRM's tokenizer encodes as one token" if option != "step_tag"
                         else "non-empty text")
            read.append(ids)
        return tok, model, read

    held = _Lazy(load)

    def layout(tok: Any, read: list[list[int]], completion: str, example: Example):
        """(input ids, positions to read, end offsets) of one completion, or None if it does not fit."""
        ids, positions, ends = prm_layout(tok, example.question, completion, split, read[0] if read else None)
        return (ids, positions, ends) if ends and len(ids) <= max_length else None

    def scores_at(model: Any, read: list[list[int]], rows: list[tuple]) -> list[list[float]]:
        width = max(len(ids) for ids, _, _ in rows)
        pad = model.config.pad_token_id or 0
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _, _ in rows], device=dev)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _, _ in rows], device=dev)
        logits = model(input_ids=input_ids, attention_mask=mask).logits.float()  # [b, L, V or labels]
        out = []
        for k, (_, positions, _) in enumerate(rows):
            at = logits[k, positions]  # [steps, V or labels]
            if mode == "causal_lm":
                probs = at[:, [read[1][0], read[2][0]]].softmax(-1)[:, 0]
            elif at.shape[-1] == 1:
                probs = at[:, 0].sigmoid()
            else:
                probs = at.softmax(-1)[:, label]
            out.append(probs.tolist())
        return out

    def batch(completions: list[str], examples: list[Example]) -> list[Any]:
        with held.lock:
            tok, model, read = held.get()
            laid = [layout(tok, read, c, ex) for c, ex in zip(completions, examples, strict=True)]
            fitting = [k for k, row in enumerate(laid) if row is not None]
            results: list[Any] = [None] * len(completions)  # None: counted as a failure by the harness
            with torch.no_grad():
                for s in range(0, len(fitting), batch_size):
                    chunk = fitting[s : s + batch_size]
                    for k, probs in zip(chunk, scores_at(model, read, [laid[k] for k in chunk]), strict=True):
                        results[k] = list(zip(laid[k][2], probs, strict=True))
            return results

    return _attach("process_reward_model", held, batch, timeout, steps="offsets")
