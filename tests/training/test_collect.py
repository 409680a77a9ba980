"""Steps 1-3 (grpo.training.collect); DAPO's dynamic sampling: groups without signal are dropped and more
prompts drawn."""

import json
from pathlib import Path

import pytest
import torch

from grpo import algorithm
from grpo.compute.distributed import World
from grpo.rewards.harness import RewardScores, WeightedReward
from grpo.rollout import SamplingParams
from grpo.tasks.base import Example
from grpo.tasks.sampling import UniformSampler
from grpo.training.checkpoint import TrainerState
from grpo.training.collect import Rounds
from grpo.training.trainer import Trainer, train
from grpo.trajectory import Trajectory
from tests.support import REWARDS_FILE
from tests.support.runs import read_metrics, tiny_config
from tests.support.trajectories import sampled_trajectory

ODD = f"{REWARDS_FILE}:odd_answers_only"
CONSTANT = f"{REWARDS_FILE}:constant_reward"


def test_groups_with_signal_by_hand():
    # [1, 1, 0, 1]: std 0.5 > 0 -> kept; [0.5] * 4: equal -> dropped; [0, 0.01, 0, 0.01]: std 0.0058
    rewards = torch.tensor([1, 1, 0, 1, 0.5, 0.5, 0.5, 0.5, 0, 0.01, 0, 0.01])
    assert algorithm.groups_with_signal(rewards, 4).tolist() == [True, False, True]
    assert algorithm.groups_with_signal(rewards, 4, tolerance=0.01).tolist() == [True, False, False]


def test_trajectories_and_scores_concatenate_with_padding():
    a = sampled_trajectory(torch.tensor([[5, 6]]), torch.tensor([[1, 1]]), torch.tensor([[7]]), torch.tensor([[1]]),
                           ["a"], ["eos"], version=1)
    b = sampled_trajectory(torch.tensor([[8]]), torch.tensor([[1]]), torch.tensor([[9, 2]]), torch.tensor([[1, 1]]),
                           ["b"], ["length"], version=2)
    t = Trajectory.cat([a, b], pad_id=0)
    assert t.prompt_ids.tolist() == [[5, 6], [0, 8]] and t.prompt_mask.tolist() == [[1, 1], [0, 1]]
    assert t.completion_ids.tolist() == [[7, 0], [9, 2]] and t.loss_mask.tolist() == [[1, 0], [1, 1]]
    assert t.policy_version.tolist() == [1, 2]
    assert t.completions == ["a", "b"] and t.finish_reasons == ["eos", "length"]
    s = RewardScores.cat([RewardScores(torch.tensor([1.0, 2.0]), {"f": torch.tensor([1.0, 2.0])}, {"f": 1}),
                          RewardScores(torch.tensor([3.0]), {"f": torch.tensor([3.0])}, {"f": 2})])
    assert s.total.tolist() == [1.0, 2.0, 3.0] and s.errors == {"f": 3}
    stepped = RewardScores.cat([RewardScores(torch.zeros(1), {}, {}, [[(3, 1.0)]]),
                                RewardScores(torch.zeros(2), {}, {}, [[], [(1, 0.5)]])])
    assert stepped.steps == [[(3, 1.0)], [], [(1, 0.5)]]
    assert s.select([2, 0]).per_function["f"].tolist() == [3.0, 1.0]


class TwoAnswers:
    """Two completions per prompt: "x" and "y" for an odd answer, "x" twice for an even one."""

    def sample(self, examples, params):
        completions = [c for ex in examples for c in (("x", "y") if int(ex.answer) % 2 else ("x", "x"))]
        n = len(completions)
        ones = torch.ones(n, 1, dtype=torch.long)
        return sampled_trajectory(ones, ones, ones, ones, completions)


def rounds(dynamic: bool, max_rounds: int = 8) -> Rounds:
    is_y = WeightedReward("y", 1.0, lambda completion, example: float(completion == "y"))
    return Rounds(TwoAnswers(), [is_y], World(), prompts_per_step=2, group_size=2, reward_timeout=10.0,
                  dynamic_sampling=dynamic, max_rounds=max_rounds)


def stream(answers):
    examples = [Example(str(i), [{"role": "user", "content": "?"}], a) for i, a in enumerate(answers)]
    return UniformSampler(examples, 0, 0, None, (0.2, 0.8))


def test_rounds_keep_groups_with_signal_until_the_share_is_full():
    laps = []
    data = stream(["1", "2", "4", "6", "3", "8"])  # two odd answers among six: kept only those
    examples, groups, trajectory, scores, metrics = rounds(True).collect(data, SamplingParams(2, 1.0, 1.0, 0, 4),
                                                                         TrainerState(), laps.append)
    assert groups.sizes == (2, 2)
    assert sorted(ex.answer for ex in examples) == ["1", "3"] and len(trajectory) == 4
    assert scores.total.tolist() == [0.0, 1.0, 0.0, 1.0]  # each kept group's "x", "y"
    drawn = metrics["dynamic/prompts_drawn"]
    assert drawn == 2 * metrics["dynamic/rounds"] == data.position and metrics["dynamic/groups_with_signal"] == 2
    assert metrics["dynamic/groups_dropped"] * drawn == pytest.approx(drawn - 2)  # every other group was dropped
    assert laps == ["generation", "rewards"] * metrics["dynamic/rounds"]


def test_without_dynamic_sampling_a_step_is_one_round_as_it_came():
    data = stream(["2", "4", "6"])
    examples, groups, trajectory, _, metrics = rounds(False).collect(data, SamplingParams(2, 1.0, 1.0, 0, 4),
                                                                     TrainerState(), lambda name: None)
    assert groups.sizes == (2, 2)
    assert len(examples) == 2 and len(trajectory) == 4 and metrics == {} and data.position == 2


def test_a_step_trains_only_on_groups_with_signal(tmp_path, tiny_model_dir, data_file):
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, f"rewards=[{{name: '{ODD}'}}]", "train.num_steps=1",
                      "algorithm.dynamic_sampling=true", "algorithm.max_generation_rounds=8", "eval.num_examples=0")
    trainer = Trainer.build(cfg)
    metrics, samples = trainer.train_step()
    assert metrics["dynamic/groups_with_signal"] == 2 and metrics["frac_reward_zero_std"] == 0
    assert metrics["dynamic/prompts_drawn"] == 2 * metrics["dynamic/rounds"] == trainer.data.position
    assert all(int(s["answer"]) % 2 == 1 for s in samples)  # only odd answers have signal
    dropped = metrics["dynamic/groups_dropped"] * metrics["dynamic/prompts_drawn"]
    assert dropped == pytest.approx(round(dropped)) and dropped >= 0


def test_without_any_signal_the_last_round_is_trained_on_and_said(tmp_path, tiny_model_dir, data_file):
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, f"rewards=[{{name: '{CONSTANT}'}}]", "train.num_steps=1",
                      "algorithm.dynamic_sampling=true", "algorithm.max_generation_rounds=3", "eval.num_examples=0")
    metrics, _ = Trainer.build(cfg).train_step()
    assert metrics["dynamic/rounds"] == 3 and metrics["dynamic/groups_with_signal"] == 0
    assert metrics["dynamic/groups_dropped"] == 1.0 and metrics["frac_reward_zero_std"] == 1.0


def test_dynamic_sampling_resumes_exactly(tmp_path, tiny_model_dir, data_file):
    extra = (f"rewards=[{{name: '{ODD}'}}]", "algorithm.dynamic_sampling=true", "eval.num_examples=0")
    full = tiny_config(tmp_path / "full", tiny_model_dir, data_file, "train.num_steps=4", *extra)
    train(full)
    half = tiny_config(tmp_path / "half", tiny_model_dir, data_file, "train.num_steps=2", *extra)
    train(half)
    train(tiny_config(tmp_path / "half", tiny_model_dir, data_file, "train.num_steps=4", "resume=true", *extra))
    whole, resumed = read_metrics(full.output_dir), read_metrics(half.output_dir)
    assert resumed == whole and sum(m["dynamic/rounds"] for m in whole) > 4  # some steps drew again
    state = json.loads((Path(full.output_dir) / "checkpoint-000004" / "trainer_state.json").read_text())
    assert state["examples_seen"] == sum(m["dynamic/prompts_drawn"] for m in whole)


class Counted:
    """Each prompt's own number of completions (params.sizes): one "y" then "x"s for an odd answer, all "x"
    for an even one."""

    def sample(self, examples, params):
        completions = [c for ex, n in zip(examples, params.sizes(len(examples)), strict=True)
                       for c in ((["y"] if int(ex.answer) % 2 else ["x"]) + ["x"] * (n - 1))]
        ones = torch.ones(len(completions), 1, dtype=torch.long)
        return sampled_trajectory(ones, ones, ones, ones, completions)


def adaptive_stream():
    from grpo.tasks.sampling import PassRates

    examples = [Example(str(i), [{"role": "user", "content": "?"}], a) for i, a in enumerate(["1", "3"])]
    rates = PassRates("y", 0.5, (1.0, 1.0), 0.5)
    rates.counts = {"0": (0.0, 48.0)}  # estimate 1 / 50 = 0.02; prompt "1" is unseen: 0.5
    return UniformSampler(examples, 0, 0, rates, (0.2, 0.8))


def test_adaptive_rounds_split_the_budget_by_pass_rate_and_observe_each_group():
    # budget 8 over p (0.02, 0.5), G in [2, 6]: the gains of p 0.5 at G = 2..5 (0.25, 0.125, 0.0625,
    # 0.03125) all beat p 0.02's 0.0196 at G = 2, so sizes are 2 and 6
    from grpo.training.collect import GroupSizes

    is_y = WeightedReward("y", 1.0, lambda completion, example: float(completion == "y"))
    for dynamic in (False, True):
        data = adaptive_stream()
        rounds = Rounds(Counted(), [is_y], World(), prompts_per_step=2, group_size=4, reward_timeout=10.0,
                        dynamic_sampling=dynamic, group_sizes=GroupSizes("adaptive", 4, 8, 2, 6))
        examples, groups, trajectory, scores, metrics = rounds.collect(data, SamplingParams(4, 1.0, 1.0, 0, 4),
                                                                       TrainerState(), lambda name: None)
        assert dict(zip([ex.id for ex in examples], groups.sizes, strict=True)) == {"0": 2, "1": 6}
        assert len(trajectory) == 8 == len(scores.total)
        # each group's own rows: one "y" in each (both answers odd), so both have signal
        assert {ex.id: scores.total[groups.rows([g])].tolist() for g, ex in enumerate(examples)} == {
            "0": [1.0, 0.0], "1": [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]}
        assert data.rates.pending["1"][:2] == [1, 6] and data.rates.pending["0"][:2] == [1, 2]
        assert metrics["group/size_mean"] == 4 and metrics["group/size_min"] == 2 and metrics["group/size_max"] == 6
        assert metrics["group/budget_used"] == 1.0
        assert ("dynamic/groups_with_signal" in metrics) == dynamic


def test_ahead_splits_resumed_batches_by_their_saved_sizes():
    # a checkpoint's batches in flight come back with the sizes they were requested with, whatever the
    # estimates say now (adaptive_stream's would give 2 and 6); later batches are split afresh
    from grpo.training.collect import Ahead, GroupSizes

    is_y = WeightedReward("y", 1.0, lambda completion, example: float(completion == "y"))
    rounds = Rounds(Counted(), [is_y], World(), prompts_per_step=2, group_size=4, reward_timeout=10.0,
                    group_sizes=GroupSizes("adaptive", 4, 8, 2, 6))
    ahead = Ahead(rounds, 2, 1, 10, lambda: None, resumed_sizes=[[5, 3]])
    assert ahead.group_sizes_in_flight() == [[5, 3]]  # saved again if the run stops before it starts
    data = adaptive_stream()
    first, second = ahead._take(data), ahead._take(data)
    assert first[1] == [5, 3] and sorted(second[1]) == [2, 6] and ahead.sizes == [[5, 3], second[1]]
