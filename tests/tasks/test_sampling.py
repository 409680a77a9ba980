"""grpo.tasks.sampling: the estimates a step's groups leave, the pool's draws, the curriculum's level,
and the state a checkpoint keeps."""

import json

import pytest
import torch

from grpo.compute.distributed import World
from grpo.tasks.base import Example
from grpo.tasks.sampling import (
    STATE_FILE,
    CurriculumSampler,
    PassRates,
    PoolSampler,
    UniformSampler,
)

BANDS = (0.2, 0.8)


def examples(n, prefix="q"):
    return [Example(f"{prefix}{i}", [{"role": "user", "content": f"{prefix}{i}?"}], str(i)) for i in range(n)]


def rates(decay=0.5):
    return PassRates("acc", 0.5, (1.0, 1.0), decay)


def scores(*groups):
    """acc scores of consecutive groups of G completions."""
    return {"acc": torch.tensor([float(v) for group in groups for v in group])}


class TwoRanks:
    """What World.gather_objects returns when another rank observed `other` (the world itself is
    tested under torchrun in tests/tasks/test_sampling_torchrun.py)."""

    def __init__(self, other):
        self.other = other

    def gather_objects(self, obj):
        return [obj, self.other]


def test_a_steps_groups_update_the_estimates_by_hand():
    r = rates()
    prompts = examples(2)
    # q0: [1, 1, 1, 1] -> 4 of 4; q1: [1, 0, NaN, 0.4] -> 1 of 4 (NaN: a failed call; 0.4 < 0.5)
    r.observe(prompts, scores([1, 1, 1, 1], [1, 0, float("nan"), 0.4]))
    metrics = r.settle(World())
    assert r.counts == {"q0": (4, 4), "q1": (1, 4)}
    assert r.estimate("q0") == pytest.approx(5 / 6) and r.estimate("q1") == pytest.approx(2 / 6)
    # both were unseen (estimate 1/2) when drawn; 5 of 8 solved
    assert metrics == {"sampling/estimated_pass_rate": 0.5, "sampling/observed_pass_rate": 5 / 8}
    # the next step: q0 again, 2 of 4, while another rank saw q0 too, 0 of 4: one visit of 2 of 8
    # -> (0.5 * 4 + 2, 0.5 * 4 + 8) = (4, 10), estimate 5/12; q1 untouched
    r.observe(prompts[:1], scores([1, 0, 1, 0]))
    other = {"q0": [0, 4, 4 * 5 / 6]}
    metrics = r.settle(TwoRanks(other))
    assert r.counts == {"q0": (4, 10), "q1": (1, 4)} and r.estimate("q0") == pytest.approx(5 / 12)
    assert metrics["sampling/estimated_pass_rate"] == pytest.approx(5 / 6)
    assert metrics["sampling/observed_pass_rate"] == pytest.approx(2 / 8)
    assert r.settle(World()) == {} and r.counts["q0"] == (4, 10)  # a step without groups changes nothing


def test_the_pool_draws_its_shares_reproducibly():
    r = rates(decay=0.0)
    prompts = examples(12)
    # q0-q2 easy (4 of 4: 5/6), q3-q4 hard (0 of 4: 1/6), the other 7 unseen (1/2): learnable
    r.observe(prompts[:5], scores(*[[1] * 4] * 3, *[[0] * 4] * 2))
    sampler = PoolSampler(prompts, 7, 0, r, BANDS, weights=(0.25, 0.5, 0.25))
    sampler.settle(World())
    assert sampler.pool_sizes() == {"easy": 3, "learnable": 7, "hard": 2}
    drawn = sampler.take(8)
    # 8 * (0.25, 0.5, 0.25) = (2, 4, 2), each pool's prompts distinct
    ids = [ex.id for ex in drawn]
    assert sum(int(i[1:]) < 3 for i in ids) == 2
    assert sum(i in ("q3", "q4") for i in ids) == 2 and len(set(ids)) == 8 and sampler.position == 8
    # the draw is a function of (seed, position, estimates): a copy at position 0 draws the same
    again = PoolSampler(prompts, 7, 0, r, BANDS, weights=(0.25, 0.5, 0.25))
    assert [ex.id for ex in again.take(8)] == ids
    assert [ex.id for ex in again.take(8)] != ids  # position 8: another draw
    # 8 draws, pools of weight 0 left out: easy and hard only hold 5 prompts -> each is drawn, then 3 again
    edges = PoolSampler(prompts, 7, 0, r, BANDS, weights=(1.0, 0.0, 1.0))
    ids = [ex.id for ex in edges.take(8)]
    assert set(ids) == {"q0", "q1", "q2", "q3", "q4"} and len(ids) == 8


def test_the_curriculum_moves_up_at_the_threshold_and_its_state_round_trips(tmp_path):
    built = []

    def level_examples(level):
        built.append(level)
        return examples(4, prefix=f"L{level}-")

    def curriculum(position=0):
        return CurriculumSampler(level_examples, 2, 0, position, rates(), BANDS, window=2, threshold=0.75)

    c = curriculum()
    # window 2, threshold 0.75: step 1 alone is no full window; [2/4, 1/4] 3/8; [1/4, 4/4] 5/8;
    # [4/4, 3/4] 7/8 >= 0.75 -> level 1 from step 5 on, its window empty again: [4/4] not full
    steps = [([1, 1, 0, 0], 0), ([1, 0, 0, 0], 0), ([1, 1, 1, 1], 0), ([1, 1, 1, 0], 0), ([1, 1, 1, 1], 1)]
    for solved, level in steps:
        batch = c.take(1)
        assert batch[0].id.startswith(f"L{level}-")
        c.observe(batch, scores(solved))
        assert c.settle(World())["curriculum/level"] == level  # the level this step trained at
    assert built == [0, 1] and (c.level, c.level_start, c.window) == (1, 4, [(4, 4)])
    c.save(tmp_path)
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    resumed = curriculum(position=5)
    resumed.load(saved)
    assert (resumed.level, resumed.level_start, resumed.window) == (1, 4, [(4, 4)])
    assert resumed.rates.counts == c.rates.counts
    assert [ex.id for ex in resumed.take(3)] == [ex.id for ex in c.take(3)]


def test_uniform_keeps_estimates_and_todays_order(tmp_path):
    prompts = examples(5)
    u = UniformSampler(prompts, 3, 0, rates(), BANDS)
    first = u.take(7)
    u.observe(first[:1], scores([1, 1, 1, 1]))
    metrics = u.settle(World())
    assert metrics["sampling/easy"] == 1 and metrics["sampling/learnable"] == 4
    assert metrics["sampling/prompts_observed"] == 1
    u.save(tmp_path)
    resumed = UniformSampler(prompts, 3, 7, rates(), BANDS)
    resumed.load(json.loads((tmp_path / STATE_FILE).read_text()))
    assert resumed.rates.counts == u.rates.counts and resumed.take(4) == u.take(4)


def test_expected_lengths_by_hand_and_in_the_state(tmp_path):
    r = PassRates("acc", 0.5, (1.0, 1.0), 0.5, default_length=96)
    prompts = examples(3)
    assert r.expected_length("q0") == 96  # nothing observed: max_new_tokens
    # q0: lengths 10, 20, 30, 40 -> 100 tokens in 4; q1: 4 x 50 = 200 in 4
    r.observe(prompts[:2], scores([1, 1, 0, 0], [0, 0, 0, 0]), [4, 4], torch.tensor([10, 20, 30, 40, 50, 50, 50, 50]))
    r.settle(World())
    assert r.expected_length("q0") == 25 and r.expected_length("q1") == 50
    assert r.expected_length("q2") == 300 / 8  # unseen: the run's mean so far
    # q0 again, 4 x 5 = 20 tokens, decay 0.5: (0.5 * 100 + 20) / (0.5 * 4 + 4) = 70 / 6
    r.observe(prompts[:1], scores([1, 1, 1, 1]), [4], torch.tensor([5, 5, 5, 5]))
    r.settle(World())
    assert r.expected_length("q0") == pytest.approx(70 / 6) and r.expected_length("q2") == 320 / 12
    sampler = UniformSampler(prompts, 0, 0, r, BANDS)
    sampler.save(tmp_path)
    again = UniformSampler(prompts, 0, 0, PassRates("acc", 0.5, (1.0, 1.0), 0.5, 96), BANDS)
    again.load(json.loads((tmp_path / STATE_FILE).read_text()))
    assert again.expected_lengths(prompts) == sampler.expected_lengths(prompts)
    old = UniformSampler(prompts, 0, 0, PassRates("acc", 0.5, (1.0, 1.0), 0.5, 96), BANDS)
    old.load({"sampler": "uniform", "counts": {"q0": [4, 4]}})  # a checkpoint from before lengths were kept
    assert old.expected_lengths(prompts) == [96, 96, 96] and old.estimates(prompts)[0] == pytest.approx(5 / 6)
