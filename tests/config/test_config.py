"""Config: YAML + dotted overrides, validation messages, round trip."""

import dataclasses
import typing

import pytest

from grpo.config import (
    Config,
    Facts,
    RewardSpec,
    apply_overrides,
    describe,
    from_dict,
    load_config,
    save_config,
)


def test_defaults_are_valid_and_documented():
    cfg = load_config()
    assert isinstance(cfg, Config)
    rows = describe()
    assert all(help_text for _, _, help_text in rows), [n for n, _, h in rows if not h]
    names = [n for n, _, _ in rows]
    assert "algorithm.beta" in names and "model.lora.r" in names
    assert "algorithm.aux_losses[].teacher_path" in names and "rewards[].weight" in names  # entries' fields too


def test_yaml_plus_dotted_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "algorithm:\n  beta: 0.01\n  loss_type: dapo\nrollout:\n  group_size: 4\n"
        "rewards:\n  - {name: format, weight: 0.5}\n  - {name: accuracy}\n"
    )
    cfg = load_config(path, ["algorithm.beta=0.04", "train.learning_rate=5e-6", "resume=true"])
    assert cfg.algorithm.beta == 0.04
    assert cfg.algorithm.loss_type == "dapo"
    assert cfg.rollout.group_size == 4
    assert cfg.train.learning_rate == 5e-6
    assert cfg.resume is True
    assert cfg.rewards == [RewardSpec("format", 0.5, {}), RewardSpec("accuracy", 1.0, {})]


def test_round_trip(tmp_path):
    cfg = load_config(None, ["algorithm.epsilon_high=0.28", "task.params={min_terms: 2}",
                             "model.lora.enabled=true", "rollout.top_k=50"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    save_config(again, tmp_path / "config2.yaml")
    assert (tmp_path / "config.yaml").read_text() == (tmp_path / "config2.yaml").read_text()


def test_int_is_accepted_for_float_field():
    assert load_config(None, ["algorithm.beta=0"]).algorithm.beta == 0.0


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("algorithm.bta=0.1", "unknown config field `algorithm.bta`"),
        ("algorithm.loss_type=ppo", "allowed: grpo, bnpo, dr_grpo, dapo"),
        ("algorithm.scale_rewards=max", "allowed: group, batch, none"),
        ("rollout.group_size=1", "`rollout.group_size` = 1"),
        ("rollout.group_size=four", "expected int"),
        ("rollout.max_new_tokens=0", "`rollout.max_new_tokens`"),
        ("train.micro_batch_size=5", "a divisor of prompts_per_step * group_size = 16"),
        ("train.learning_rate=-1", "`train.learning_rate`"),
        ("rollout.temperature=0", "`rollout.temperature`"),
        ("train.num_steps=true", "expected int"),
        ("train.learning_rate=fast", "expected float"),
        ("task.source=hf", "allowed: reasoning_gym, file, hub"),
        ("task.source=file", "`task.path`"),
        ("rewards=[]", "`rewards`"),
        ("task.few_shot=-1", "`task.few_shot`"),
        ("task.num_train=0", "`task.num_train`"),
        ("rewards=[{nam: format}]", "unknown config field `rewards[0].nam`"),
        ("model=3", "section `model` must be a mapping"),
        ("algorithm.beta", "must look like `section.field=value`"),
        ("algorithm.beta.x=1", "`algorithm.beta`"),
        ("algorithm.off_policy_mask_threshold=-0.1", "`algorithm.off_policy_mask_threshold` = -0.1 is invalid: "
         "expected null or a number >= 0"),
    ],
)
def test_bad_values_name_the_field(override, fragment):
    with pytest.raises(ValueError) as e:
        load_config(None, [override])
    assert fragment in str(e.value)


def test_bad_yaml_file_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  num_steps: 3\n  lr: [1, 2\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*line \d+"):
        load_config(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("seed: 1 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        load_config(latin)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(listy)


def test_every_leaf_field_has_a_default_that_round_trips():
    # the dataclass tree is fully defaulted: Config() needs no arguments
    cfg = Config()
    assert dataclasses.asdict(cfg)["rollout"]["group_size"] == 8


def literal_fields(cls=Config, prefix=""):
    """{dotted name: allowed values} of every Literal field of the tree (list[Literal] included)."""
    found = {}
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
        if dataclasses.is_dataclass(inner):
            found |= literal_fields(inner, f"{prefix}{f.name}{'[].' if inner is not tp else '.'}")
        elif typing.get_origin(inner) is typing.Literal:
            found[prefix + f.name] = typing.get_args(inner)
    return found


def dispatch_tables():
    """Each Literal field -> the keys of the table the code dispatches on (tuple(table): a dict
    or a registry that iterates over its names)."""
    from grpo import algorithm, rollout, tasks
    from grpo.compute import distributed, dtypes
    from grpo.record import trackers
    from grpo.tasks import prompts, sampling
    from grpo.training import collect

    return {
        "model.dtype": ("auto", *tuple(dtypes.DTYPES)),
        "model.precision": ("auto", *tuple(dtypes.DTYPES)),
        "task.source": tuple(tasks.SOURCES),
        "task.sampler": tuple(sampling.SAMPLERS),
        "rollout.engine": ("auto", *tuple(rollout.ENGINES)),
        "rollout.vllm_lora_sync": tuple(rollout.LORA_SYNCS),
        "rollout.group_policy.name": tuple(algorithm.GROUP_POLICIES),
        "rollout.group_policy.unit": tuple(collect.BUDGET_UNITS),
        "rollout.precision": ("auto", *tuple(dtypes.DTYPES)),
        "rollout.tool_format": tuple(prompts.TOOL_FORMATS),
        "algorithm.kl_estimator": tuple(algorithm.KL_ESTIMATORS),
        "algorithm.loss_type": tuple(algorithm.AGGREGATIONS),
        "algorithm.scale_rewards": tuple(algorithm.ADVANTAGE_SCALES),
        "algorithm.advantages": tuple(algorithm.ADVANTAGE_SOURCES),
        "algorithm.reward_aggregation": tuple(algorithm.REWARD_AGGREGATIONS),
        "algorithm.importance_sampling_level": tuple(algorithm.IMPORTANCE_SAMPLING_LEVELS),
        "algorithm.policy_objective": tuple(algorithm.POLICY_OBJECTIVES),
        "algorithm.sampler_correction": ("auto", *tuple(algorithm.SAMPLER_CORRECTIONS)),
        "algorithm.sampler_correction_level": tuple(algorithm.SAMPLER_CORRECTION_LEVELS),
        "algorithm.aux_losses[].name": tuple(algorithm.AUX_LOSSES),
        "algorithm.aux_losses[].schedule": tuple(algorithm.AUX_SCHEDULES),
        "train.lr_schedule": tuple(LR_SCHEDULE_AT_END),  # make_scheduler branches: see the test below
        "train.parallel": tuple(distributed.PARALLEL_MODES),
        "log.report_to": tuple(trackers.TRACKERS),
    }


# train.lr_schedule -> the learning-rate factor at the last update (make_scheduler has no table)
LR_SCHEDULE_AT_END = {"constant": 1.0, "cosine": 0.0}


def test_every_literal_field_equals_the_table_the_code_dispatches_on():
    fields, tables = literal_fields(), dispatch_tables()
    assert set(fields) == set(tables), "a Literal field without its table (or a table without its field)"
    for name, allowed in fields.items():
        assert allowed == tables[name], name


def test_other_allowed_names_equal_their_tables():
    from grpo.config import values
    from grpo.episodes.tools import BUILTIN_TOOLS
    from grpo.record import trackers
    from grpo.rewards import steps
    from grpo.tasks import prompts

    assert values.TOOL_NAMES == tuple(sorted(BUILTIN_TOOLS))
    assert values.STEP_SPLITS == tuple(steps.STEP_SPLITS)
    assert values.TEMPLATE_PRESETS == tuple(prompts.TEMPLATES)
    assert tuple(values.TRACKER_PACKAGES) == tuple(trackers.TRACKERS)


@pytest.mark.parametrize("schedule", LR_SCHEDULE_AT_END)
def test_each_lr_schedule_is_one_make_scheduler_knows(schedule):
    import torch

    from grpo.training.trainer import make_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer, load_config(None, [f"train.lr_schedule={schedule}"]), 4)
    assert scheduler.lr_lambdas[0](4) == pytest.approx(LR_SCHEDULE_AT_END[schedule])


def test_runtime_facts_are_arguments():
    def unchecked(*overrides):  # the tree as load_config builds it, before validate
        return from_dict(Config, apply_overrides({}, list(overrides)))

    cfg = unchecked("train.prompts_per_step=3", "train.micro_batch_size=4", "log.report_to=[wandb]")
    cfg.validate(Facts(world_size=3, installed=lambda package: True))
    with pytest.raises(ValueError, match=r"divisible by the number of processes \(2\)"):
        cfg.validate(Facts(world_size=2, installed=lambda package: True))
    with pytest.raises(ValueError, match="`log.report_to` lists 'wandb', but wandb is not installed"):
        cfg.validate(Facts(world_size=1, installed=lambda package: package != "wandb"))
    auto = unchecked("rollout.engine=auto", "rollout.vllm={enforce_eager: true}", "log.report_to=[]")
    auto.validate(Facts(1, lambda package: package == "vllm"))  # auto chooses vllm
    with pytest.raises(ValueError, match="auto chose shared_prefix: vllm is not installed"):
        auto.validate(Facts(1, lambda package: False))


def test_a_disabled_section_checks_only_its_switch():
    assert load_config(None, ["iterative.replay=5"]).iterative.replay == 5  # retrain_every = 0: unread
    with pytest.raises(ValueError, match=r"`iterative.replay` = 5.0 is invalid: expected a number in \[0, 1\)"):
        load_config(None, ["iterative.replay=5", "iterative.retrain_every=2",
                           "rewards=[{name: reward_model}, {name: accuracy}]"])


MODEL_FREE_RULES = {
    "fsdp with LoRA": (["train.parallel=fsdp", "model.lora.enabled=true"], 1, "use train.parallel=ddp"),
    "vllm options for another engine": (["rollout.engine=shared_prefix", "rollout.vllm={enforce_eager: true}"], 1,
                                        "`rollout.vllm`"),
    "vllm_lora_sync for another engine": (["rollout.engine=shared_prefix", "rollout.vllm_lora_sync=adapter"], 1,
                                          "`rollout.vllm_lora_sync`"),
    "prompts not divisible by the processes": (["train.prompts_per_step=3", "train.micro_batch_size=4"], 2,
                                               "divisible by the number of processes (2)"),
    "an importance-weighted KL without a KL term": (["algorithm.kl_importance_weighted=true"], 1,
                                                    "`algorithm.kl_importance_weighted` = true needs algorithm.beta > 0"),
    "a difficulty sampler without its success reward": (
        ["task.sampler=difficulty_pool", "rewards=[{name: format}]"], 1,
        "`task.difficulty.success_reward` = 'accuracy' is invalid: expected an entry of `rewards` (one of format)"),
    "a difficulty sampler with prompts requested ahead": (
        ["task.sampler=difficulty_pool", "rollout.engine=server", "rollout.url=http://h:1", "rollout.max_staleness=1"],
        1, "`task.sampler` = 'difficulty_pool' needs rollout.max_staleness = 0"),
    "a curriculum of a data file": (["task.sampler=curriculum", "task.source=file", "task.path=x.jsonl"], 1,
                                    "`task.sampler` = 'curriculum' needs task.source=reasoning_gym"),
    "difficulty bands crossed": (["task.difficulty.hard_below=0.9"], 1,
                                 "`task.difficulty.easy_above` = 0.8 is invalid: expected a number >= "
                                 "task.difficulty.hard_below = 0.9"),
    "a sampler name": (["task.sampler=hardest"], 1, "allowed: uniform, difficulty_pool, curriculum"),
    "adaptive groups without the success reward": (
        ["rollout.group_policy.name=adaptive", "rewards=[{name: format}]"], 1,
        "`task.difficulty.success_reward` = 'accuracy' is invalid: expected an entry of `rewards` (one of format) "
        "with rollout.group_policy.name=adaptive"),
    "a budget outside the group bounds": (
        ["rollout.group_policy.name=adaptive", "rollout.group_policy.budget=100"], 1,
        "`rollout.group_policy.budget` = 100 is invalid: expected an integer from prompts_per_step * "
        "min_group_size = 4 to prompts_per_step * max_group_size = 32"),
    "group bounds crossed": (
        ["rollout.group_policy.name=adaptive", "rollout.group_policy.min_group_size=5",
         "rollout.group_policy.max_group_size=4"], 1,
        "`rollout.group_policy.max_group_size` = 4 is invalid: expected an integer >= min_group_size = 5"),
    "a budget under the fixed policy": (["rollout.group_policy.budget=10"], 1,
                                        "`rollout.group_policy.budget` = 10 applies to rollout.group_policy.name="
                                        "adaptive only"),
    "a token budget left null": (["rollout.group_policy.name=adaptive", "rollout.group_policy.unit=tokens"], 1,
                                 "`rollout.group_policy.budget` = None is invalid"),
    "a token unit under the fixed policy": (["rollout.group_policy.unit=tokens"], 1,
                                            "`rollout.group_policy.unit` = tokens applies to rollout.group_policy.name="
                                            "adaptive only"),
    "a group policy name": (["rollout.group_policy.name=random"], 1, "allowed: fixed, adaptive"),
    "dpo with one completion per micro-batch": (["algorithm.aux_losses=[{name: dpo}]", "train.micro_batch_size=1"], 1,
                                                "`train.micro_batch_size` = 1 is invalid with algorithm.aux_losses[0]"),
    "min_reward on a dpo term": (["algorithm.aux_losses=[{name: dpo, min_reward: 1}]"], 1,
                                 "`algorithm.aux_losses[0].min_reward` = 1.0 applies to name = sft or self_distill only"),
    "a distill term without a teacher": (["algorithm.aux_losses=[{name: distill}]"], 1,
                                         "`algorithm.aux_losses[0].teacher_path` = None and `teacher_url` = None: "
                                         "name = 'distill' needs exactly one of them"),
    "a distill term with two teachers": (["algorithm.aux_losses=[{name: distill, teacher_path: t, "
                                          "teacher_url: 'http://h:1'}]"], 1, "needs exactly one of them"),
    "a teacher on another term": (["algorithm.aux_losses=[{name: sft, teacher_path: t}]"], 1,
                                  "`algorithm.aux_losses[0].teacher_path` applies to name = distill only"),
    "self_distill with tools": (["algorithm.aux_losses=[{name: self_distill}]", "rollout.tools=[calculator]"], 1,
                                "'self_distill' needs single-turn rollouts"),
    "gold_sft with tools": (["algorithm.aux_losses=[{name: gold_sft}]", "rollout.tools=[calculator]"], 1,
                            "'gold_sft' needs single-turn rollouts"),
    "a term listed twice": (["algorithm.aux_losses=[{name: sft}, {name: sft, weight: 0.5}]"], 1,
                            "each name at most once"),
    "an unknown term": (["algorithm.aux_losses=[{name: kto}]"], 1,
                        "`algorithm.aux_losses[0].name` = 'kto' is invalid; allowed: sft, gold_sft, dpo, distill, self_distill"),
}


@pytest.mark.parametrize("case", MODEL_FREE_RULES)
def test_cross_field_rules_fail_before_anything_loads(case, monkeypatch):
    import sys
    import time

    overrides, world_size, message = MODEL_FREE_RULES[case]
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setitem(sys.modules, "grpo.compute.models", None)  # importing the model loader would fail
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        load_config(None, [*overrides, "model.path=/nonexistent/model"])
    elapsed = time.perf_counter() - start
    assert message in str(error.value), f"{case}: {error.value} (after {elapsed * 1000:.1f} ms)"
    print(f"{case}: refused after {elapsed * 1000:.1f} ms: {error.value}")
