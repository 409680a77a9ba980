"""The scoring harness: weighted totals, and containment of functions that fail or hang."""

import logging
import math
import threading
import time
import uuid

import pytest
import torch

from grpo import algorithm, rewards
from grpo.rewards import Reward, WeightedReward, score
from grpo.tasks.base import Example


def examples(n: int) -> list[Example]:
    """Fresh ids per test: warnings are once per (function, example id) for the process."""
    tag = uuid.uuid4().hex[:6]
    return [Example(id=f"{tag}-{i}", prompt=[{"role": "user", "content": "?"}], answer=str(i)) for i in range(n)]


def length(completion, example):
    return float(len(completion))


def answer_is_index(completion, example):
    return 1.0 if completion == example.answer else 0.0


@pytest.fixture
def release():
    """An event the hanging functions wait on; set at teardown so their threads end."""
    event = threading.Event()
    yield event
    event.set()


def test_weighted_total_and_per_function():
    exs = examples(3)
    fns = [WeightedReward("length", 0.5, length), WeightedReward("match", 2.0, answer_is_index)]
    scores = score(fns, ["0", "xx", "abc"], exs)
    # length [1, 2, 3] * 0.5 + match [1, 0, 0] * 2 = [2.5, 1.0, 1.5]
    assert scores.total.tolist() == [2.5, 1.0, 1.5]
    assert scores.total.dtype == torch.float32 and scores.total.shape == (3,)
    assert scores.per_function["length"].tolist() == [1.0, 2.0, 3.0]
    assert scores.per_function["match"].tolist() == [1.0, 0.0, 0.0]
    assert scores.errors == {"length": 0, "match": 0}
    # plain tuples work too
    assert score([("length", 1.0, length)], ["ab"], exs[:1]).total.tolist() == [2.0]


def test_built_ins_through_the_harness():
    exs = examples(2)
    fns = rewards.build([rewards_spec("format"), rewards_spec("accuracy")])
    good = "<think>1 + 0 = 1</think><answer>1</answer>"
    scores = score(fns, ["<answer>0</answer>", good], exs)
    assert scores.per_function["accuracy"].tolist() == [1.0, 1.0]
    assert scores.per_function["format"].tolist() == [0.0, 1.0]
    assert scores.total.tolist() == [1.0, 2.0]


def rewards_spec(name, weight=1.0, **options):
    from grpo.config import RewardSpec

    return RewardSpec(name, weight, options)


def test_failures_are_contained_counted_and_logged_once(caplog):
    exs = examples(4)

    def flaky(completion, example):
        # raises on completion 1; NaN, None, a string on 2 and 3; 0 is fine
        if completion == "b":
            raise ZeroDivisionError("division by zero")
        return {"a": 1.0, "c": math.nan, "d": None, "e": "high"}[completion]

    def infinite(completion, example):
        return math.inf

    fns = [WeightedReward("flaky", 1.0, flaky), WeightedReward("length", 1.0, length),
           WeightedReward("inf", 1.0, infinite)]
    completions = ["a", "b", "c", "d"]
    with caplog.at_level(logging.WARNING):
        scores = score(fns, completions, exs)
        again = score(fns, completions, exs)
        other = score(fns, ["e"], exs[:1])
    flaky_row = scores.per_function["flaky"]
    assert flaky_row[0].item() == 1.0 and torch.isnan(flaky_row[1:]).all()
    assert scores.per_function["length"].tolist() == [1.0] * 4  # the other function still scores
    assert torch.isnan(scores.per_function["inf"]).all()
    # a failed call adds 0: 1 + 1 for completion 0, 0 + 1 for the others
    assert scores.total.tolist() == [2.0, 1.0, 1.0, 1.0]
    assert scores.errors == {"flaky": 3, "length": 0, "inf": 4}
    assert again.errors == scores.errors and other.errors == {"flaky": 1, "length": 0, "inf": 1}
    messages = [r.getMessage() for r in caplog.records]
    # once per (function, example id): 3 + 4 warnings from the first batch, none from the
    # identical second one; example 0 fails `flaky` for the first time in the third
    assert len(messages) == 3 + 4 + 1
    assert any("`flaky`" in m and exs[1].id in m and "ZeroDivisionError" in m for m in messages)
    assert any("`flaky`" in m and exs[2].id in m and "nan" in m for m in messages)
    assert any("`flaky`" in m and exs[3].id in m and "NoneType" in m for m in messages)
    assert any("`flaky`" in m and exs[0].id in m and "str 'high'" in m for m in messages)


def test_a_hanging_call_times_out_and_the_rest_still_scores(release):
    exs = examples(4)

    def hangs_on_b(completion, example):
        if completion == "b":
            release.wait()  # hangs until the test ends
        return 1.0

    fns = [WeightedReward("hangs", 1.0, hangs_on_b), WeightedReward("length", 1.0, length)]
    start = time.perf_counter()
    scores = score(fns, ["a", "b", "c", "dd"], exs, timeout=0.2)
    elapsed = time.perf_counter() - start
    assert 0.2 <= elapsed < 1.5
    hangs = scores.per_function["hangs"]
    assert hangs[0].item() == 1.0 and math.isnan(hangs[1].item()) and hangs[2:].tolist() == [1.0, 1.0]
    assert scores.per_function["length"].tolist() == [1.0, 1.0, 1.0, 2.0]
    assert scores.errors == {"hangs": 1, "length": 0}
    # the abandoned thread is still blocked, but the next batch does not wait for it
    start = time.perf_counter()
    assert score(fns[1:], ["abc"], exs[:1], timeout=0.2).total.tolist() == [3.0]
    assert time.perf_counter() - start < 0.5


def test_every_call_hanging_costs_one_timeout_each(release):
    exs = examples(3)

    def hangs(completion, example):
        release.wait()

    start = time.perf_counter()
    scores = score([WeightedReward("hangs", 1.0, hangs)], ["a", "b", "c"], exs, timeout=0.2)
    assert 0.6 <= time.perf_counter() - start < 2.0
    assert scores.errors == {"hangs": 3} and scores.total.tolist() == [0.0, 0.0, 0.0]


def test_the_timeout_is_per_call_not_per_batch():
    exs = examples(5)

    def slow(completion, example):
        time.sleep(0.08)
        return 1.0

    # 5 calls x 0.08 s = 0.4 s in all, each well under the 0.3 s limit
    scores = score([WeightedReward("slow", 1.0, slow)], ["a"] * 5, exs, timeout=0.3)
    assert scores.errors == {"slow": 0} and scores.total.tolist() == [1.0] * 5
    assert score([WeightedReward("slow", 1.0, slow)], ["a"], exs[:1], timeout=None).total.tolist() == [1.0]


def test_functions_run_side_by_side():
    exs = examples(2)

    def slow(completion, example):
        time.sleep(0.2)
        return 1.0

    fns = [WeightedReward(f"slow{i}", 1.0, slow) for i in range(3)]
    start = time.perf_counter()
    assert score(fns, ["a", "b"], exs).total.tolist() == [3.0, 3.0]
    assert time.perf_counter() - start < 1.0  # 3 functions x 2 calls x 0.2 s = 1.2 s if serial


def test_batched_functions_are_called_once_per_batch(release):
    exs = examples(3)
    calls = []

    def fn(completion, example):
        raise AssertionError("the harness should use .batch")

    def batch(completions, examples):
        calls.append(len(completions))
        return [float(len(c)) for c in completions[:-1]] + [math.nan]

    scores = score([WeightedReward("batched", 1.0, Reward(fn, batch=batch))], ["a", "bb", "ccc"], exs)
    assert calls == [3]
    assert scores.per_function["batched"][:2].tolist() == [1.0, 2.0] and scores.errors == {"batched": 1}

    def broken(completions, examples):
        raise RuntimeError("model exploded")

    def short(completions, examples):
        return [1.0]

    def hangs(completions, examples):
        release.wait()

    for impl in (broken, short, hangs):
        failed = score([WeightedReward("batched", 1.0, Reward(fn, batch=impl)), WeightedReward("length", 1.0, length)],
                       ["a", "bb", "ccc"], exs, timeout=0.2)
        assert failed.errors == {"batched": 3, "length": 0} and failed.total.tolist() == [1.0, 2.0, 3.0]


def test_a_rewards_own_timeout_is_a_field_and_planted_attributes_are_not_read():
    exs = examples(2)

    def slow(completion, example):
        time.sleep(0.3)
        return 1.0

    slow.reward_timeout = None  # the old way to plant a limit: no longer read
    slow.batch = lambda completions, examples: [5.0] * len(completions)
    assert score([WeightedReward("slow", 1.0, slow)], ["a", "b"], exs, timeout=0.1).errors == {"slow": 2}
    unlimited = score([WeightedReward("slow", 1.0, Reward(slow, timeout=None))], ["a", "b"], exs, timeout=0.1)
    assert unlimited.errors == {"slow": 0} and unlimited.total.tolist() == [1.0, 1.0]
    own = score([WeightedReward("slow", 1.0, Reward(slow, timeout=0.05))], ["a", "b"], exs, timeout=None)
    assert own.errors == {"slow": 2}
    assert Reward(length)("abc", exs[0]) == 3.0 and Reward.of(length) == Reward(length)  # called like fn
    assert Reward.of(own_reward := Reward(length, steps="newline")) is own_reward


def test_bad_arguments():
    exs = examples(2)
    with pytest.raises(ValueError, match="2 completions but 1 examples"):
        score([WeightedReward("length", 1.0, length)], ["a", "b"], exs[:1])
    with pytest.raises(ValueError, match="reward timeout = 0"):
        score([WeightedReward("length", 1.0, length)], ["a"], exs[:1], timeout=0)
    empty = score([WeightedReward("length", 1.0, length)], [], [])
    assert empty.total.shape == (0,) and empty.per_function["length"].shape == (0,)


def test_outcome_rows_are_what_the_total_sums_and_leave_step_rewards_out():
    exs = examples(3)
    steps = Reward(lambda completion, example: [float(len(line)) for line in completion.split("\n")], steps="newline")
    fns = [WeightedReward("length", 0.5, length), WeightedReward("steps", 3.0, steps),
           WeightedReward("match", 2.0, answer_is_index), WeightedReward("broken", 1.0, lambda c, e: None)]
    scores = score(fns, ["0", "x\nx", "abc"], exs)
    rows, weights = scores.outcome(fns)
    # length [1, 3, 3], match [1, 0, 0], broken NaN everywhere (counts 0); the step reward is not in it
    assert weights.tolist() == [0.5, 2.0, 1.0] and weights.dtype == torch.float64
    assert rows[:2].tolist() == [[1.0, 3.0, 3.0], [1.0, 0.0, 0.0]] and rows[2].isnan().all()
    assert scores.total.tolist() == [2.5, 1.5, 1.5] == algorithm.weighted_sum(rows, weights).tolist()
    assert scores.per_function["steps"].tolist() == [1.0, 1.0, 3.0]  # its steps' mean, in no total
    assert scores.select([2, 0]).outcome(fns)[0][:2].tolist() == [[3.0, 1.0], [0.0, 1.0]]
