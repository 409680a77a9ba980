"""What a completion answered, and whether it equals the gold answer (math-verify).

    extract_answer("<think>...</think><answer> 1/2 </answer>")   # "1/2"
    is_correct(completion, example)                              # True / False

Used by the `accuracy` and `cosine` rewards (so training and evaluation grade alike) and by
the `judge` reward (which answer to show the judge).

Where we depart from math-verify's defaults and from peers (TRL, open-r1):
- The answer is the last `<answer>...</answer>`, else the last `\\boxed{}`, else the last
  number; a span longer than MAX_ANSWER_CHARS is no answer. Only that span is handed to
  math-verify (never the whole completion), as LaTeX when it looks like LaTeX (backslash,
  ^, {, _) and as a plain expression otherwise: math-verify's plain parser reads `2^{10}` as
  2 and `\\sqrt{2}` as nothing, while its LaTeX parser reads `42 dollars` as a product of
  symbols. Gold answers are parsed the same way; `\\$` (currency) is dropped first.
- math-verify's own timeouts use SIGALRM, which only works in the main thread, so they are
  off; the reward harness's per-call timeout stands in. Since a timed-out call keeps running,
  inputs that would never finish are refused before they reach math-verify: a predicted span
  whose brackets nest deeper than MAX_NESTING (parse time grows exponentially with nesting:
  bench/RESULTS.md, "Figures that stood in code comments"), and values holding a number power or factorial whose
  exponent or argument exceeds MAX_EXPONENT (sympy would compute 9^(9^(9^9)) for ever).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from typing import Any

import sympy
from math_verify import parse, verify

from grpo.tasks.base import Example

log = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 256  # longer answer spans are not answers; bounds the work math-verify does
MAX_NESTING = 6  # deeper ( [ { nesting is not an answer: math-verify's time grows exponentially
MAX_EXPONENT = 10_000  # larger exponents / factorial arguments of numbers are not evaluated

# 1,000 / -3 / 2.5 / .5 / 3/4; thousands separators only in groups of three.
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_LATEXISH = re.compile(r"[\\^{_]")


class _DropTimeoutNotice(logging.Filter):
    """math-verify warns once that its timeouts are off; ours (the harness) are on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutNotice())


def extract_answer(completion: str, fallback: bool = True) -> str | None:
    """The answer span: the last `<answer>...</answer>`, else (fallback) the last
    `\\boxed{...}`, else the last number; None when there is none or it is longer than
    MAX_ANSWER_CHARS. fallback=False: the tags or nothing (strict scoring)."""
    end = completion.rfind("</answer>")
    start = completion.rfind("<answer>", 0, end) if end >= 0 else -1
    if start >= 0:
        span = completion[start + len("<answer>") : end].strip()
    elif not fallback:
        span = None
    else:
        span = _last_boxed(completion)
        if span is None:
            last = None
            for last in _NUMBER.finditer(completion):  # noqa: B007 - we want the last match
                pass
            span = last.group(0) if last else None
    return span if span is not None and len(span) <= MAX_ANSWER_CHARS else None


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = start + len("\\boxed")
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, min(len(text), i + 4 * MAX_ANSWER_CHARS)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j].strip()
    return None


@functools.lru_cache(maxsize=16384)
def parse_answer(span: str) -> tuple[Any, ...]:
    """math-verify's parse of one answer span (see the module docstring for the rules); () if
    nothing parses or the value is too big to compare safely. Cached: gold answers repeat."""
    span = span.replace("\\$", "").strip()  # `\$42` is currency; math-verify parses it as nothing
    if "$" in span:
        tries = [span]
    elif _LATEXISH.search(span):
        tries = [f"${span}$", span]
    else:  # `$...$` around words makes a product of symbols, so only for letterless text (-.5)
        tries = [span] + ([f"${span}$"] if not re.search(r"[A-Za-z]", span) else [])
    for text in tries:
        try:
            parsed = parse(text, parsing_timeout=None)
        except Exception:  # math-verify catches its own errors; this is belt and braces
            parsed = []
        if parsed:
            return tuple(parsed) if all(_tame(p) for p in parsed) else ()
    return ()


def _tame(value: Any) -> bool:
    """False for expressions like 9^(9^(9^9)) or (10^5)! whose evaluation would not end."""
    if not isinstance(value, sympy.Basic):
        return True
    try:
        for node in sympy.postorder_traversal(value):  # inner nodes first: each check is safe
            if isinstance(node, sympy.Pow) and not node.exp.free_symbols and node.base not in (0, 1, -1):
                if abs(complex(sympy.N(node.exp, 15))) > MAX_EXPONENT:
                    return False
            elif isinstance(node, sympy.factorial) and not node.args[0].free_symbols:
                if abs(complex(sympy.N(node.args[0], 15))) > MAX_EXPONENT:
                    return False
    except Exception:  # OverflowError and friends: too big by definition
        return False
    return True


def _nesting(text: str) -> int:
    """How deep ( [ { nest in text (unbalanced closers ignored)."""
    depth = deepest = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}" and depth:
            depth -= 1
    return deepest


_reported_gold: set[str] = set()
_reported_lock = threading.Lock()


def is_correct(completion: str, example: Example, fallback: bool = True) -> bool:
    """Does the completion's answer equal `example.answer` according to math-verify?
    fallback: as in extract_answer (False: only an answer inside <answer> tags counts).

    A gold answer that does not parse makes every completion wrong; it is reported once per
    example id with logging.warning (never silently).
    """
    gold = parse_answer(example.answer)
    if not gold:
        with _reported_lock:
            first = example.id not in _reported_gold
            _reported_gold.add(example.id)
        if first:
            log.warning("example %s: gold answer %r does not parse as math; accuracy scores 0 for it",
                        example.id, example.answer[:200])
        return False
    span = extract_answer(completion, fallback)
    pred = parse_answer(span) if span and _nesting(span) <= MAX_NESTING else ()
    if not pred:
        return False
    try:
        return bool(verify(list(gold), list(pred), timeout_seconds=None))
    except Exception:
        return False
