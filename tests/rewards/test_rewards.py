"""Built-in rewards on real strings, the registry, and user functions by import path."""

import logging
import math
import random
import time
import uuid

import pytest

from grpo import rewards
from grpo.config import Config, RewardSpec
from grpo.rewards import answers
from grpo.tasks.base import Example
from tests.support.tiny import make_tokenizer


def ex(answer: str, id: str = "ex-1") -> Example:
    return Example(id=id, prompt=[{"role": "user", "content": "What is it?"}], answer=answer)


def _garbage(num_chars: int = 100_000) -> str:
    """Deterministic junk rich in what the parsers look at: tags, braces, digits, LaTeX."""
    rng = random.Random(0)
    pieces = ["<think>", "</answer>", "<answer", "\\boxed{", "{", "}", "$", "^", "\\frac", "-", ".", ",",
              "9", "123", "1,000", " ", "\n", "abc", "=", "/", "\\sqrt", "(", ")"]
    out, length = [], 0
    while length < num_chars:
        out.append(rng.choice(pieces))
        length += len(out[-1])
    return "".join(out)[:num_chars]


GARBAGE = _garbage()
GOOD = "<think>\n3 + 4 = 7\n</think>\n<answer>7</answer>"

# --------------------------------------------------------------------------- format / tag_count


@pytest.mark.parametrize("completion, expected", [
    (GOOD, 1.0),
    ("<think>x</think><answer>7</answer>", 1.0),
    ("  \n<think> a\nb </think>\n\n  <answer> 7 </answer>\n ", 1.0),  # whitespace around and between
    ("<think></think><answer></answer>", 1.0),  # layout only: emptiness is accuracy's business
    ("", 0.0),
    ("<answer>7</answer>", 0.0),  # no think block
    ("<think>x</think>", 0.0),
    ("Sure! <think>x</think><answer>7</answer>", 0.0),  # text before
    ("<think>x</think><answer>7</answer> Hope that helps", 0.0),  # text after
    ("<think>x</think> so <answer>7</answer>", 0.0),  # text between
    ("<answer>7</answer><think>x</think>", 0.0),  # wrong order
    ("<think>x</think><think>y</think><answer>7</answer>", 0.0),  # repeated tags
    ("<think>x<answer>6</answer></think><answer>7</answer>", 0.0),
    ("<think>x</think><answer>7</answer></answer>", 0.0),
    ("<think>x</think><answer>7", 0.0),  # truncated
])
def test_format(completion, expected):
    assert rewards.get("format")(completion, ex("7")) == expected


def test_format_scores_are_options():
    fn = rewards.get("format", pass_score=2.0, fail_score=-1.0)
    assert fn(GOOD, ex("7")) == 2.0 and fn("nope", ex("7")) == -1.0


@pytest.mark.parametrize("completion, expected", [
    (GOOD, 1.0),
    ("<think> x </think> 7", 0.5),
    ("<think> x </think> <answer> 7", 0.75),
    ("", 0.0),
    ("7", 0.0),
    ("<think>a<think>b</think><answer>1</answer>", 0.75),  # <think> twice: it alone earns nothing
    ("<think>a</think><answer>1</answer><answer>2</answer>", 0.5),
    # both blocks, swapped: every tag has a partner on the wrong side
    ("<answer>1</answer><think>a</think>", 0.0),
    ("</think> x <think>", 0.0),
    ("<think> x </think> <answer>1</answer> trailing text is not tag_count's business", 1.0),
])
def test_tag_count(completion, expected):
    assert rewards.get("tag_count")(completion, ex("1")) == expected


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("completion, gold", [
    ("<answer>0.5</answer>", "1/2"),
    ("<answer>1/2</answer>", "0.5"),
    ("<answer>\\frac{1}{2}</answer>", "0.5"),
    ("<answer>\\dfrac12</answer>", "1/2"),
    ("<answer>$\\frac{1}{2}$</answer>", "\\frac{1}{2}"),
    ("<answer>42 dollars</answer>", "42"),
    ("<answer>$42</answer>", "42"),
    ("<answer>\\$42</answer>", "42"),
    ("<answer>42\\text{ apples}</answer>", "42"),
    ("<answer>-3</answer>", "-3"),
    ("<answer>x = -3</answer>", "-3"),
    ("<answer>-.5</answer>", "-0.5"),
    ("<answer>3.14</answer>", "3.14"),
    ("<answer>3.0</answer>", "3"),
    ("<answer>1,000</answer>", "1000"),
    ("<answer>1000</answer>", "1,000"),
    ("<answer>-1,234,567.5</answer>", "-1234567.5"),
    ("<answer>$((((((1))))))$</answer>", "1"),  # MAX_NESTING deep is still parsed
    ("<answer>2^{10}</answer>", "1024"),
    ("<answer>\\sqrt{2}</answer>", "\\sqrt{2}"),
    ("<answer>The answer is 72.</answer>", "72"),
    (GOOD, "7"),
    ("so the answer is \\boxed{\\frac{3}{4}}.", "0.75"),  # no tags: last \boxed
    ("\\boxed{5} is wrong... \\boxed{6}", "6"),
    ("First 12, then 7 + 5 = 12. So 13", "13"),  # neither: last number
    ("It costs $1,250.", "1250"),
    ("the result is -8", "-8"),
    ("<answer>5</answer> wait, no: <answer>6</answer>", "6"),  # the last answer block
    ("<think>maybe 5</think> <answer> 6 </answer>", "6"),
    ("\\boxed{5} <answer>6</answer>", "6"),  # the answer block beats \boxed
    ("<think>x</think><answer>42", "42"),  # unclosed tag: last number
])
def test_accuracy_matches(completion, gold):
    assert rewards.get("accuracy")(completion, ex(gold)) == 1.0


@pytest.mark.parametrize("completion, gold", [
    ("<answer>41</answer>", "42"),
    ("<answer>3</answer>", "-3"),
    ("<answer>3.15</answer>", "3.14"),
    ("<answer>1/3</answer>", "0.5"),
    ("First 12, then 7 + 5 = 12. So 13", "12"),
    ("\\boxed{5} <answer>6</answer>", "5"),
    ("", "42"),
    ("<answer></answer>", "42"),
    ("<answer>forty-two</answer>", "42"),
    ("no numbers here at all", "42"),
    ("<answer>" + "4" * 300 + "</answer>", "42"),  # a span that long is not an answer
    ("<answer>$9^{9^{9^{9}}}$</answer>", "3"),  # would hang sympy: rejected before comparing
    ("<answer>9**9**9**9</answer>", "3"),
    ("<answer>(10^{5})!</answer>", "3"),
    ("\\boxed{" + "{" * 5000, "3"),  # unbalanced braces
    ("<answer>" + "{" * 30 + "1" + "}" * 30 + "</answer>", "1"),  # too deep: would take for ever
    ("<answer>$" + "(" * 7 + "1" + ")" * 7 + "$</answer>", "1"),
])
def test_accuracy_rejects(completion, gold):
    assert rewards.get("accuracy")(completion, ex(gold)) == 0.0


def test_accuracy_scores_are_options():
    fn = rewards.get("accuracy", correct_score=2.0, wrong_score=-0.5)
    assert fn("<answer>7</answer>", ex("7")) == 2.0 and fn("<answer>8</answer>", ex("7")) == -0.5


def test_extract_answer():
    assert answers.extract_answer("<think>1</think><answer> 7 </answer>") == "7"
    assert answers.extract_answer("\\boxed{\\frac{1}{2}} and then") == "\\frac{1}{2}"
    assert answers.extract_answer("2 then 3.5 then -1,000 apples") == "-1,000"
    assert answers.extract_answer("nothing") is None
    assert answers.extract_answer("<answer>" + "x" * 1000 + "</answer>") is None


def test_gold_that_does_not_parse_is_reported_once_per_example(caplog):
    fn = rewards.get("accuracy")
    a, b = f"gold-{uuid.uuid4()}", f"gold-{uuid.uuid4()}"
    with caplog.at_level(logging.WARNING):
        assert fn("<answer>Paris</answer>", ex("Paris", a)) == 0.0
        assert fn("<answer>Lyon</answer>", ex("Paris", a)) == 0.0
        assert fn("<answer>Paris</answer>", ex("Paris", b)) == 0.0
    reported = [r.getMessage() for r in caplog.records if "does not parse" in r.getMessage()]
    assert len(reported) == 2 and a in reported[0] and b in reported[1]


def test_math_verify_runs_outside_the_main_thread():
    # its default SIGALRM timeouts would raise ValueError here; ours are off
    from concurrent.futures import ThreadPoolExecutor

    fn = rewards.get("accuracy")
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(fn, ["<answer>\\frac{1}{2}</answer>", "<answer>0.4</answer>"], [ex("0.5")] * 2))
    assert got == [1.0, 0.0]


def test_100kb_of_garbage_is_fast_and_harmless():
    fns = [rewards.get(n) for n in ("format", "tag_count", "accuracy")]
    fns += [rewards.get("overlong", max_length=100), rewards.get("cosine", max_length=100)]
    start = time.perf_counter()
    for text in (GARBAGE, GARBAGE + "<answer>7</answer>", "<answer>" + GARBAGE + "</answer>", "7" * 100_000):
        for fn in fns:
            assert math.isfinite(fn(text, ex("7")))
    assert time.perf_counter() - start < 3.0  # ~50 ms here; generous for a loaded machine


# --------------------------------------------------------------------------- length shaping


def words(n: int, answer: str = "7") -> str:
    """A completion of exactly n whitespace-separated words whose answer is `answer`."""
    return " ".join([f"<answer>{answer}</answer>"] + ["w"] * (n - 1))


def test_overlong_is_dapo_soft_punishment():
    fn = rewards.get("overlong", max_length=10, cache_length=4)
    # free up to 10 - 4 = 6 words, then (6 - L) / 4 down to -1 at 10, then -1
    assert [fn(words(n), ex("7")) for n in (1, 6, 7, 8, 10, 11, 50)] == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0]
    chars = rewards.get("overlong", max_length=10, cache_length=5, unit="chars")
    assert [chars("x" * n, ex("7")) for n in (5, 6, 9, 10, 11)] == [0.0, -0.2, -0.8, -1.0, -1.0]
    assert rewards.get("overlong", max_length=100)(words(90), ex("7")) == -0.5  # cache 20: (80 - 90) / 20


def test_overlong_counts_tokens_with_a_tokenizer(tmp_path):
    tok = make_tokenizer()
    tok.save_pretrained(tmp_path)
    text = "What is 12 + 30? <think> 12 + 30 = 42 </think> <answer> 42 </answer>"
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    fn = rewards.get("overlong", max_length=n, cache_length=2, unit="tokens", tokenizer=str(tmp_path))
    assert fn(text, ex("42")) == -1.0 and fn(text[:-1], ex("42")) > -1.0
    with pytest.raises(ValueError, match="`tokenizer`"):
        rewards.get("overlong", max_length=5, unit="tokens")


def test_cosine_scales_correctness_by_length():
    fn = rewards.get("cosine", max_length=100)
    # half way (L = 50): cos(pi / 2) = 0, so the mean of the two ends
    assert fn(words(50), ex("7")) == pytest.approx(0.75)  # (1.0 + 0.5) / 2
    assert fn(words(50), ex("8")) == pytest.approx(-0.75)  # (-1.0 + -0.5) / 2
    # at max_length: the far ends; beyond: `exceed`
    assert fn(words(100), ex("7")) == pytest.approx(0.5)
    assert fn(words(100), ex("8")) == pytest.approx(-0.5)
    assert fn(words(101), ex("7")) == -1.0
    # L = 1: cos(pi / 100) ~ 0.99951 -> 0.5 + 0.5 * (1 + 0.99951) / 2 = 0.99988
    assert fn(words(1), ex("7")) == pytest.approx(0.99988, abs=1e-5)
    # short correct beats long correct; long wrong beats short wrong
    assert fn(words(10), ex("7")) > fn(words(90), ex("7")) and fn(words(90), ex("8")) > fn(words(10), ex("8"))
    # the correctness check is accuracy's: 1/2 == 0.5 here too
    assert fn("<answer>\\frac{1}{2}</answer>", ex("0.5")) > 0.9


def test_cosine_options():
    fn = rewards.get("cosine", max_length=4, correct_at_0=2.0, correct_at_max=1.0, wrong_at_0=-10.0,
                     wrong_at_max=0.0, exceed=-5.0, unit="chars")
    assert fn("7", ex("7")) == pytest.approx(1.0 + (2.0 - 1.0) * (1 + math.cos(math.pi / 4)) / 2)
    assert fn("8", ex("7")) == pytest.approx(-10.0 * (1 + math.cos(math.pi / 4)) / 2)
    assert fn("77777", ex("7")) == -5.0


# --------------------------------------------------------------------------- the registry


def test_registry_names_and_errors():
    assert set(rewards.names()) >= {"format", "tag_count", "accuracy", "overlong", "cosine", "reward_model", "judge"}
    with pytest.raises(ValueError, match="unknown reward 'acurracy'; registered: accuracy, arithmetic_steps, cosine"):
        rewards.get("acurracy")
    with pytest.raises(ValueError, match="reward `format` has no option `pass_scor`; options: pass_score, fail_score"):
        rewards.get("format", pass_scor=1.0)
    with pytest.raises(ValueError, match="reward `overlong` needs option `max_length`"):
        rewards.get("overlong")
    with pytest.raises(ValueError, match="reward `overlong` option `cache_length` = 50 is invalid"):
        rewards.get("overlong", max_length=10, cache_length=50)
    with pytest.raises(ValueError, match="reward `cosine` option `unit` = 'lines' is invalid"):
        rewards.get("cosine", max_length=10, unit="lines")
    with pytest.raises(ValueError, match="reward `cosine` option `max_length` = 0"):
        rewards.get("cosine", max_length=0)


def test_build_from_specs():
    built = rewards.build([RewardSpec("format", 0.5, {"fail_score": -1.0}), RewardSpec("accuracy", 2.0),
                           RewardSpec("accuracy", 1.0, {"correct_score": 3.0})])
    assert [(r.name, r.weight) for r in built] == [("format", 0.5), ("accuracy", 2.0), ("accuracy#2", 1.0)]
    assert built[0].fn("x", ex("7")) == -1.0 and built[2].fn("<answer>7</answer>", ex("7")) == 3.0
    assert [r.name for r in rewards.build(Config().rewards)] == ["format", "accuracy"]
    with pytest.raises(ValueError, match="unknown reward"):
        rewards.build([RewardSpec("nope")])


# --------------------------------------------------------------------------- user functions

USER_MODULE = '''
def score(completion, example):
    return float(len(completion))

def make(scale):
    return lambda completion, example: scale * len(completion)

def extra_ok(completion, example, bonus=0.0, *args, **kwargs):
    return 1.0 + bonus

def one_arg(completion):
    return 1.0

def keyword_only(*, completion, example):
    return 1.0

class Scorer:
    def __call__(self, completion, example):
        return 2.0

scorer = Scorer()
NOT_A_FUNCTION = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"user_rewards_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, tmp_path / f"{name}.py"


def test_user_function_by_module_path_and_file_path(user_module):
    name, path = user_module
    for target in (name, str(path)):
        assert rewards.get(f"{target}:score")("abc", ex("1")) == 3.0
        assert rewards.get(f"{target}:scorer")("abc", ex("1")) == 2.0
        assert rewards.get(f"{target}:extra_ok")("abc", ex("1")) == 1.0
        assert rewards.get(f"{target}:make", scale=2.0)("abc", ex("1")) == 6.0  # options: a factory
    assert rewards.get(f"{path}:score").fn is rewards.get(f"{path}:score").fn  # the file is imported once
    built = rewards.build([RewardSpec(f"{path}:score", 1.0)])
    assert built[0].name == f"{path}:score"


def test_user_function_errors_are_clear(user_module, tmp_path):
    name, path = user_module
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        rewards.get("no_such_module_xyz:score")
    with pytest.raises(ValueError, match="does not exist"):
        rewards.get(f"{tmp_path / 'missing.py'}:score")
    broken = tmp_path / "broken_rewards.py"
    broken.write_text("import no_such_module_xyz\n")
    with pytest.raises(ValueError, match="importing .*broken_rewards.py.* failed: ModuleNotFoundError"):
        rewards.get(f"{broken}:score")
    (tmp_path / "syntax_rewards.py").write_text("def score(:\n")
    with pytest.raises(ValueError, match="failed: SyntaxError"):
        rewards.get(f"{tmp_path / 'syntax_rewards.py'}:score")
    for target in (name, str(path)):
        with pytest.raises(ValueError, match="has no attribute 'nope'"):
            rewards.get(f"{target}:nope")
        with pytest.raises(ValueError, match=r"one_arg\(completion\) cannot be called as fn\(completion, example\)"):
            rewards.get(f"{target}:one_arg")
        with pytest.raises(ValueError, match="cannot be called as fn"):
            rewards.get(f"{target}:keyword_only")
        with pytest.raises(ValueError, match="is a int, not a function"):
            rewards.get(f"{target}:NOT_A_FUNCTION")
        with pytest.raises(ValueError, match="as a factory failed"):
            rewards.get(f"{target}:make", wrong=1)
    with pytest.raises(ValueError, match="expected `module.path:function`"):
        rewards.get(":score")
