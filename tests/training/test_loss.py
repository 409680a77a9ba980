"""The loss object built from the config: each surrogate objective reaches policy_loss, and a short
run trains with it and logs its metrics."""

import math

import pytest
import torch

from grpo import algorithm
from grpo.config import load_config
from grpo.training.loss import PolicyLoss
from grpo.training.trainer import train
from tests.support.runs import read_metrics, tiny_config


def test_from_config_passes_the_objective_and_its_options():
    cfg = load_config(None, ["algorithm.policy_objective=cispo", "algorithm.cispo_epsilon_low=0.2",
                             "algorithm.cispo_epsilon_high=0.28"])
    loss = PolicyLoss.from_config(cfg.algorithm, 8)
    # the hand-worked CISPO case of tests/algorithm/test_objectives.py through the loss object (loss_type
    # grpo: one sequence of three tokens, so / 3): r = [0.5, 1.27, 1.29], A = +1 -> w = [0.8, 1.27, 1.28],
    # d l / d logp = -w / 3; 0.5 and 1.29 clipped -> 2 of 3
    lp = torch.log(torch.tensor([[0.5, 1.27, 1.29]])).requires_grad_(True)
    value, metrics = loss(lp, torch.zeros(1, 3), torch.ones(1), torch.ones(1, 3), None, 1.0)
    (grad,) = torch.autograd.grad(value, lp)
    torch.testing.assert_close(grad, -torch.tensor([[0.8, 1.27, 1.28]]) / 3)
    assert metrics["clip/cispo"].item() == pytest.approx(2 / 3)
    sapo = PolicyLoss.from_config(load_config(None, ["algorithm.policy_objective=sapo",
                                                     "algorithm.sapo_temperature_neg=2"]).algorithm, 8)
    assert (sapo.objective, sapo.sapo_temperature_pos, sapo.sapo_temperature_neg) == ("sapo", 1.0, 2.0)
    dual = PolicyLoss.from_config(load_config(None, ["algorithm.dual_clip=3"]).algorithm, 8)
    assert (dual.objective, dual.dual_clip) == ("clip", 3.0)
    assert set(algorithm.POLICY_OBJECTIVES) == {"clip", "cispo", "sapo"}


# Two steps of two updates each, with a learning rate large enough that the second update's ratios
# leave the (here narrow) bounds, so each objective's flag is exercised, not just present.
OBJECTIVE_RUNS = {
    "cispo": (["algorithm.policy_objective=cispo", "algorithm.cispo_epsilon_low=0.01",
               "algorithm.cispo_epsilon_high=0.01"], "clip/cispo"),
    "sapo": (["algorithm.policy_objective=sapo", "algorithm.sapo_temperature_neg=5"], "sapo/gate"),
    "dual clip": (["algorithm.dual_clip=1.03", "algorithm.epsilon=0.01", "algorithm.epsilon_high=0.02"],
                  "clip/dual"),
}


@pytest.mark.parametrize("case", OBJECTIVE_RUNS)
def test_a_short_run_trains_with_each_objective(case, tmp_path, tiny_model_dir, data_file):
    overrides, metric = OBJECTIVE_RUNS[case]
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, *overrides, "algorithm.num_iterations=2",
                      "eval.num_examples=0", "train.learning_rate=0.05", "train.max_grad_norm=0")
    train(cfg)
    steps = read_metrics(cfg.output_dir)
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert math.isfinite(m["loss"]), case
        assert 0.0 <= m[metric] <= 1.0, case
    # a mean over both updates: the first (ratio 1) clips nothing and gates nothing, the second moved
    if metric == "sapo/gate":
        assert min(m[metric] for m in steps) < 1.0
    else:
        assert max(m[metric] for m in steps) > 0.0
