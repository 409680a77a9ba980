"""algorithm.reward_aggregation in the loop: step 4's advantages and dynamic sampling's signal test."""

import json
import math
from pathlib import Path

import torch

from grpo import algorithm
from grpo.compute.distributed import World
from grpo.rewards.harness import WeightedReward
from grpo.rollout import SamplingParams
from grpo.training.checkpoint import TrainerState
from grpo.training.collect import Rounds
from grpo.training.trainer import train
from tests.support.runs import read_metrics, tiny_config
from tests.training.test_collect import TwoAnswers, stream


def rounds(aggregation: str) -> Rounds:
    # "x" scores (0, 2), "y" scores (1, 0): weights (2, 1) give both a total of 2, yet each reward varies
    is_y = WeightedReward("y", 2.0, lambda completion, example: float(completion == "y"))
    twice_x = WeightedReward("x", 1.0, lambda completion, example: 2.0 * (completion == "x"))
    return Rounds(TwoAnswers(), [is_y, twice_x], World(), prompts_per_step=2, group_size=2, reward_timeout=10.0,
                  dynamic_sampling=True, max_rounds=3, reward_aggregation=aggregation)


def test_a_constant_total_of_varying_rewards_has_signal_only_under_normalize_then_sum():
    params = SamplingParams(2, 1.0, 1.0, 0, 4)
    answers = ["1", "2", "4", "3", "6", "8"]  # odd answers sample "x" and "y", even ones "x" twice
    examples, _, _, scores, metrics = rounds("normalize_then_sum").collect(stream(answers), params, TrainerState(),
                                                                        lambda name: None)
    assert sorted(ex.answer for ex in examples) == ["1", "3"] and metrics["dynamic/groups_with_signal"] == 2
    assert scores.total.tolist() == [2.0, 2.0, 2.0, 2.0]
    _, _, _, _, metrics = rounds("sum_then_normalize").collect(stream(answers), params, TrainerState(),
                                                            lambda name: None)
    assert metrics["dynamic/groups_with_signal"] == 0 and metrics["dynamic/rounds"] == 3


def test_a_short_run_trains_on_the_decoupled_advantages(tmp_path, tiny_model_dir, data_file):
    # tiny_config's two rewards (length, format); every completion of a step in samples.jsonl
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, "algorithm.reward_aggregation=normalize_then_sum",
                      "log.num_samples=8", "eval.num_examples=0")
    train(cfg)
    metrics = read_metrics(cfg.output_dir)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) and 0 <= m["advantage/frac_zero_groups"] <= 1 for m in metrics)
    samples = [json.loads(line) for line in (Path(cfg.output_dir) / "samples.jsonl").read_text().splitlines()]
    names = [spec.name for spec in cfg.rewards]
    for step in (1, 2):
        rows = [s for s in samples if s["step"] == step]
        scores = torch.tensor([[math.nan if s["rewards"][n] is None else s["rewards"][n] for s in rows]
                               for n in names])  # [F, N]
        expected = algorithm.decoupled_advantages(scores, torch.ones(len(names), dtype=torch.float64), 4)
        assert expected.abs().sum() > 0  # the length reward varies, so there is something to compare
        torch.testing.assert_close(torch.tensor([s["advantage"] for s in rows]), expected)
        zero_groups = (expected.view(-1, 4) == 0).all(1).float().mean().item()
        assert metrics[step - 1]["advantage/frac_zero_groups"] == zero_groups
