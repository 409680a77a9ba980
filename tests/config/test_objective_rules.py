"""The config of the surrogate objectives (algorithm.policy_objective and its options): what it
accepts, and the errors that name the fields."""

import pytest

from grpo.config import load_config


@pytest.mark.parametrize("overrides", [
    ["algorithm.policy_objective=cispo", "algorithm.cispo_epsilon_low=0.2", "algorithm.cispo_epsilon_high=0.28"],
    ["algorithm.policy_objective=cispo", "algorithm.importance_sampling_level=sequence"],
    ["algorithm.policy_objective=sapo", "algorithm.sapo_temperature_pos=0.5", "algorithm.sapo_temperature_neg=2"],
    ["algorithm.dual_clip=3"],
    ["algorithm.dual_clip=1.01", "algorithm.importance_sampling_level=sequence"],  # GSPO's bound is 1 + 4e-4
])
def test_objective_settings_that_are_accepted(overrides):
    load_config(None, overrides)


@pytest.mark.parametrize("overrides, fragment", [
    (["algorithm.policy_objective=ppo"], "allowed: clip, cispo, sapo"),
    (["algorithm.dual_clip=1"], "`algorithm.dual_clip` = 1.0 is invalid: expected null or a number > 1"),
    (["algorithm.dual_clip=1.2"], "`algorithm.dual_clip` = 1.2 is invalid: expected null or a number > "
                                  "1 + algorithm.epsilon_high = 1.2"),
    (["algorithm.dual_clip=1.25", "algorithm.epsilon_high=0.28"], "1 + algorithm.epsilon_high = 1.28"),
    (["algorithm.dual_clip=3", "algorithm.policy_objective=cispo"],
     "`algorithm.dual_clip` = 3.0 applies to algorithm.policy_objective=clip only"),
    (["algorithm.policy_objective=sapo", "algorithm.importance_sampling_level=sequence"],
     "`algorithm.policy_objective` = 'sapo' needs algorithm.importance_sampling_level = token"),
    (["algorithm.cispo_epsilon_low=1.5"], "`algorithm.cispo_epsilon_low` = 1.5 is invalid: expected null or a number"),
    (["algorithm.cispo_epsilon_high=-1"], "`algorithm.cispo_epsilon_high` = -1.0 is invalid"),
    (["algorithm.sapo_temperature_neg=0"], "`algorithm.sapo_temperature_neg` = 0.0 is invalid: expected a number > 0"),
])
def test_objective_errors_name_the_fields(overrides, fragment):
    with pytest.raises(ValueError) as error:
        load_config(None, overrides)
    assert fragment in str(error.value)
