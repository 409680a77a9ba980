"""`grpo check [config.yaml] [overrides...]`: can the configured rewards tell right from wrong?

The common silent failure of a GRPO run is accuracy stuck at 0 for hundreds of steps because
the answer format the rewards expect is not the one written (or the gold answers do not
parse). Before a long run, this scores the configured reward functions (cfg.rewards, built
as the trainer builds them) on a handful of training examples with completions written by
hand, and, unless `--no-model`, with a few real samples from the policy:

    expected format    <think> ... </think> <answer> GOLD </answer>   (the layout of the
                       default system prompt and of the few-shot turns: tasks.base.worked_answer)
    equivalent forms   the gold answer written otherwise: 1/2, 0.5, \\frac{1}{2}, 1,234, 42.0,
                       `42 dollars`, \\boxed{42}; and outside the tags, as \\boxed{} or as the
                       last number of plain text
    wrong answers      gold + 1, another number, an empty answer, a wrong plain-text answer
    broken formats     the gold answer with a tag missing, repeated, or outside the tags
    model samples      G=2 samples per example from the policy, short max_new_tokens

It prints one table per group (mean total and per-function scores) and FAILS (exit status
1) when, on half of the examples or more,
  - the expected-format gold answer does not score strictly more than every wrong answer, or
  - something (any other candidate, model samples included) scores more than it.
Smaller problems (an equivalent form scored lower, format breakage unpunished, gold answers
that do not parse, failing reward calls) are printed as warnings.

It also prints each function's spread (min, max, std, distinct values; grpo.guards.probe.spreads)
over the written completions, the model samples and the first-run probe's, and warns, in the
probe's words, about a function that scores every written completion alike while the total
varies (the probe's own warnings cover its samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from grpo import rewards
from grpo.config import Config
from grpo.episodes.turns import build_sampler
from grpo.guards import probe
from grpo.rewards.answers import parse_answer
from grpo.tasks import build_task
from grpo.tasks.base import Example, worked_answer

EXPECTED, EQUIVALENT, WRONG, BROKEN, MODEL = (
    "expected format", "equivalent forms", "wrong answers", "broken formats", "model samples")
GROUPS = (EXPECTED, EQUIVALENT, WRONG, BROKEN, MODEL)
WRITTEN = "written completions"  # every group but the model samples
THINK = "Let me work through the problem step by step."  # no digits: the last number is the answer's


@dataclass
class Candidate:
    group: str  # one of GROUPS
    form: str  # what this completion tries, e.g. "gold + 1"
    example: int  # index into CheckResult.examples
    completion: str


@dataclass
class CheckResult:
    examples: list[Example]
    reward_names: list[str]
    candidates: list[Candidate]
    total: list[float]  # per candidate, the weighted sum the trainer would use
    per_function: dict[str, list[float]]  # name -> per candidate; NaN where the call failed
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    prompt: str = ""  # the first example's prompt as the model sees it (with the model)
    first_run: list[str] = field(default_factory=list)  # grpo.guards.probe's problems (with the model)
    # (which completions, each function's spread over them): written, then model samples and probe
    spreads: list[tuple[str, list[probe.RewardSpread]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def indices(self, group: str, example: int | None = None) -> list[int]:
        return [i for i, c in enumerate(self.candidates)
                if c.group == group and (example is None or c.example == example)]


# --------------------------------------------------------------------------- candidates


def as_fraction(answer: str) -> Fraction | None:
    """The gold answer as an exact number (`1,234`, `-3`, `0.5`, `1/2`, `$5`), else None."""
    text = answer.strip().replace(",", "").replace("\\$", "").lstrip("$").strip()
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def equivalent_forms(gold: str) -> list[tuple[str, str]]:
    """(label, answer text) for the gold answer written another way, the same value."""
    value = as_fraction(gold)
    forms: list[tuple[str, str]] = []
    if value is not None:
        p, q = value.numerator, value.denominator
        if q == 1:
            forms += [("integer", str(p)), ("decimal", f"{p}.0")]
            if abs(p) >= 1000:
                forms.append(("thousands separator", f"{p:,}"))
        else:
            forms += [("fraction", f"{p}/{q}"), ("latex fraction", f"\\frac{{{p}}}{{{q}}}")]
            if _terminates(q):
                forms.append(("decimal", format(Decimal(p) / Decimal(q), "f")))
        forms.append(("with a unit", f"{str(p) if q == 1 else gold.strip()} dollars"))
    forms.append(("boxed", f"\\boxed{{{gold.strip()}}}"))
    return [(label, text) for label, text in forms if text != gold.strip()]


def _terminates(q: int) -> bool:
    for prime in (2, 5):
        while q % prime == 0:
            q //= prime
    return q == 1


def other_number(gold: str) -> str:
    value = as_fraction(gold)
    return "7" if value != 7 else "11"


def written_candidates(i: int, gold: str) -> list[Candidate]:
    """The hand-written completions for example i (every group but model samples)."""
    gold = gold.strip()
    out = [Candidate(EXPECTED, "gold in the expected layout", i, worked_answer(THINK, gold))]
    for label, text in equivalent_forms(gold):
        out.append(Candidate(EQUIVALENT, f"in tags: {label}", i, worked_answer(THINK, text)))
    out.append(Candidate(EQUIVALENT, "no tags: boxed", i, f"{THINK} The answer is \\boxed{{{gold}}}."))
    if as_fraction(gold) is not None:
        out.append(Candidate(EQUIVALENT, "no tags: last number", i, f"{THINK} So the answer is {gold}."))
    wrong = []
    value = as_fraction(gold)
    if value is not None:
        plus_one = value + 1
        wrong.append(("gold + 1", str(plus_one.numerator) if plus_one.denominator == 1 else str(plus_one)))
    wrong += [("another number", other_number(gold)), ("empty answer", "")]
    for label, text in wrong:
        out.append(Candidate(WRONG, label, i, worked_answer(THINK, text)))
    out.append(Candidate(WRONG, "another number, no tags", i, f"{THINK} So the answer is {other_number(gold)}."))
    broken = [
        ("missing </answer>", f"<think> {THINK} </think> <answer> {gold}"),
        ("no <think> block", f"<answer> {gold} </answer>"),
        ("repeated tags", worked_answer(THINK, gold) + f" <answer> {gold} </answer>"),
        ("answer outside tags", f"<think> {THINK} </think> {gold}"),
    ]
    out += [Candidate(BROKEN, label, i, text) for label, text in broken]
    return out


def model_candidates(cfg: Config, examples: list[Example], group_size: int,
                     max_new_tokens: int) -> tuple[list[Candidate], probe.ProbeReport]:
    """group_size samples per example from the policy, as the trainer samples them, and the
    first-run probe (training's G and token budget on the first examples)."""
    from grpo.compute import models
    from grpo.rollout import SamplingParams, build_engine

    model, tokenizer = models.load_policy(cfg.model)
    engine = build_engine(cfg.rollout, model, tokenizer)
    r = cfg.rollout
    params = SamplingParams(group_size=group_size, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                            max_new_tokens=min(max_new_tokens, r.max_new_tokens), seed=cfg.seed, stop=tuple(r.stop))
    sampler = build_sampler(cfg, engine, tokenizer)
    batch = sampler.sample(examples, params)
    report = probe.probe(sampler, rewards.build(cfg.rewards), examples[: probe.NUM_EXAMPLES], probe.probe_params(cfg),
                         cfg.reward_timeout)
    return [Candidate(MODEL, f"sample {k % group_size + 1} ({batch.finish_reasons[k]})", k // group_size, text)
            for k, text in enumerate(batch.completions)], report


# --------------------------------------------------------------------------- scoring


def run_check(cfg: Config, *, use_model: bool = True, num_examples: int = 8, group_size: int = 2,
              max_new_tokens: int = 64) -> CheckResult:
    """Score the candidates of the first `num_examples` training examples; judge the result."""
    examples = build_task(cfg.task).train[:num_examples]
    fns = rewards.build(cfg.rewards)
    candidates = [c for i, ex in enumerate(examples) for c in written_candidates(i, ex.answer)]
    report = None
    if use_model:
        sampled, report = model_candidates(cfg, examples, group_size, max_new_tokens)
        candidates += sampled
    scores = rewards.score(fns, [c.completion for c in candidates], [examples[c.example] for c in candidates],
                           cfg.reward_timeout)
    result = CheckResult(examples, [f.name for f in fns], candidates, scores.total.tolist(),
                         {name: values.tolist() for name, values in scores.per_function.items()})
    if report is not None:
        result.prompt, result.first_run = report.prompt, probe.problems(report, cfg)
    sets = [(WRITTEN, [i for i, c in enumerate(candidates) if c.group != MODEL]),
            ("model samples", result.indices(MODEL))]
    result.spreads = [(what, probe.spreads(fns, scores, rows)) for what, rows in sets if rows]
    if report is not None:
        result.spreads.append(("probe completions", report.rewards))
    judge(result)
    return result


def judge(result: CheckResult) -> None:
    """Fill result.failures and result.warnings (see the module docstring for the rules)."""
    n = len(result.examples)
    total = result.total
    gold = [total[result.indices(EXPECTED, e)[0]] for e in range(n)]
    not_above_wrong = [e for e in range(n) if gold[e] <= max(total[i] for i in result.indices(WRONG, e))]
    beaten = {e: max((i for i, c in enumerate(result.candidates) if c.example == e), key=lambda i: total[i])
              for e in range(n)}
    beaten = {e: i for e, i in beaten.items() if total[i] > gold[e] + 1e-9}
    if 2 * len(not_above_wrong) >= n:
        wrong_mean = _mean([total[i] for i in result.indices(WRONG)])
        result.failures.append(
            f"the rewards cannot tell right from wrong: the gold answer in the expected format scores no more "
            f"than a wrong answer on {len(not_above_wrong)} of {n} examples (mean total: gold "
            f"{_mean(gold):.3g}, wrong answers {wrong_mean:.3g}). " + _hint(result))
    elif not_above_wrong:
        result.warnings.append(f"on {len(not_above_wrong)} of {n} examples the gold answer scores no more than a "
                               f"wrong one: ids {_ids(result, not_above_wrong)}")
    if beaten:
        e, i = next(iter(beaten.items()))
        c = result.candidates[i]
        what = (f"{len(beaten)} of {n} examples: e.g. {c.group} / {c.form} gets {total[i]:.3g} against the gold "
                f"answer's {gold[e]:.3g} on example {result.examples[e].id}")
        if 2 * len(beaten) >= n:
            result.failures.append(f"the gold answer in the expected format does not get the top score on {what}")
        else:
            result.warnings.append(f"something scores more than the gold answer on {what}")
    _warn(result, gold)


def _warn(result: CheckResult, gold: list[float]) -> None:
    total, n = result.total, len(result.examples)
    lower = sorted({c.form for i, c in enumerate(result.candidates)
                    if c.group == EQUIVALENT and c.form.startswith("in tags") and total[i] < gold[c.example] - 1e-9})
    if lower:
        result.warnings.append(f"equivalent answers in the tags score less than the gold answer: {', '.join(lower)}")
    broken = result.indices(BROKEN)
    if broken and all(total[i] >= gold[result.candidates[i].example] - 1e-9 for i in broken):
        result.warnings.append("no reward lowers the score of broken formats (missing, repeated or misplaced tags)")
    unparsed = [e for e, ex in enumerate(result.examples) if not parse_answer(ex.answer)]
    if unparsed:
        result.warnings.append(f"{len(unparsed)} of {n} gold answers do not parse as math "
                               f"(e.g. {result.examples[unparsed[0]].answer[:60]!r}): accuracy is 0 for them")
    for name in result.per_function:  # from the spreads: a step reward's NaN row may be a completion without steps
        drawn = [s for what, spreads in result.spreads if what != "probe completions" for s in spreads if s.name == name]
        failed = sum(s.num_failed for s in drawn)
        if failed:
            result.warnings.append(f"reward `{name}` failed on {failed} of {sum(s.num_completions for s in drawn)} "
                                   "calls (see the log above)")
    written = [i for i, c in enumerate(result.candidates) if c.group != MODEL]
    spread = [s for what, spreads in result.spreads if what == WRITTEN for s in spreads
              if s.num_failed < s.num_completions]  # a failing one has its own warning above
    result.warnings += probe.reward_problems(spread, WRITTEN, len({total[i] for i in written}) > 1)
    samples = result.indices(MODEL)
    if len(samples) > 1 and len({total[i] for i in samples}) == 1:
        result.warnings.append(f"every model sample scores {total[samples[0]]:.3g}: groups whose completions all "
                               "score the same get zero advantages, so no learning signal at first (few_shot "
                               "examples or a longer max_new_tokens may help)")


def _hint(result: CheckResult) -> str:
    """Which functions never separate the gold answer from the wrong ones, and why if we know."""
    flat = []
    for name, values in result.per_function.items():
        if all(values[result.indices(EXPECTED, e)[0]] <= max(values[i] for i in result.indices(WRONG, e))
               for e in range(len(result.examples))):
            flat.append(name)
    hint = f"These never score the gold answer above all the wrong ones: {', '.join(flat)}. " if flat else ""
    unparsed = [ex.answer for ex in result.examples if not parse_answer(ex.answer)]
    if unparsed:
        hint += (f"{len(unparsed)} gold answers do not parse as math (e.g. {unparsed[0][:60]!r}), so `accuracy` "
                 "cannot match them: give numeric gold answers, or use a reward that compares text. ")
    return hint + "Fix the rewards or the data before training."


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _ids(result: CheckResult, examples: list[int]) -> str:
    shown = ", ".join(result.examples[e].id for e in examples[:5])
    return shown + (f" and {len(examples) - 5} more" if len(examples) > 5 else "")


# --------------------------------------------------------------------------- output


def print_result(result: CheckResult, console: Any = None) -> None:
    """One table per group (mean over examples; model samples one row each), then the verdict."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    if result.prompt:
        console.print(Text("the first prompt, as the model sees it:", style="bold"))
        console.print(Text(result.prompt), soft_wrap=True)
    console.print(f"checked {len(result.examples)} training examples with rewards: {', '.join(result.reward_names)}")
    for group in GROUPS:
        rows = result.indices(group)
        if not rows:
            continue
        table = Table(title=group, title_justify="left")
        table.add_column("form")
        for name in ("total", *result.reward_names):
            table.add_column(name, justify="right")
        table.add_column("completion" if group == MODEL else "first example")
        for form, members in _by_form(result, rows, per_sample=group == MODEL):
            cells = [_fmt(_mean([result.total[i] for i in members]))]
            cells += [_fmt(_mean([result.per_function[name][i] for i in members])) for name in result.reward_names]
            table.add_row(Text(form), *cells, Text(_preview(result.candidates[members[0]].completion)))
        console.print(table)
    if result.spreads:
        console.print(_spread_table(result))
    for warning in result.warnings:
        console.print(Text(f"warning: {warning}", style="yellow"))
    for message in result.first_run:
        console.print(Text(f"warning (first-run check): {message}", style="yellow"))
    if result.ok:
        console.print(Text("check passed: the gold answer in the expected format gets the top score and beats "
                           "the wrong answers", style="green"))
    for failure in result.failures:
        console.print(Text(f"check FAILED: {failure}", style="bold red"))


def _spread_table(result: CheckResult) -> Any:
    """Each function's spread over each set of completions: a constant one cannot tell them apart."""
    from rich.table import Table

    table = Table(title="reward spread", title_justify="left")
    for column in ("completions", "reward", "scored", "failed", "min", "max", "std", "distinct"):
        table.add_column(column, justify="left" if column in ("completions", "reward") else "right")
    for what, spreads in result.spreads:
        for s in spreads:
            scored = f"{s.num_scored}/{s.num_completions}" + (" (step)" if s.step else "")
            low, high, std = ("-", "-", "-") if s.num_scored == 0 else (_fmt(s.min), _fmt(s.max), _fmt(s.std))
            table.add_row(what, s.name, scored, str(s.num_failed), low, high, std,
                          str(s.num_distinct) + (" (constant)" if s.constant else ""))
    return table


def _by_form(result: CheckResult, rows: list[int], per_sample: bool) -> list[tuple[str, list[int]]]:
    if per_sample:  # model samples differ per example: one row each, at most 16
        return [(f"{result.examples[result.candidates[i].example].id} {result.candidates[i].form}", [i])
                for i in rows[:16]]
    groups: dict[str, list[int]] = {}
    for i in rows:
        groups.setdefault(result.candidates[i].form, []).append(i)
    return list(groups.items())


def _preview(completion: str, limit: int = 60) -> str:
    text = completion.replace(THINK, "...").replace("\n", " ")  # the stock reasoning says nothing
    return text if len(text) <= limit else text[:limit] + "..."


def _fmt(value: float) -> str:
    return "error" if math.isnan(value) else f"{value:.3g}"
