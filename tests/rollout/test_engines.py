"""The engine table (grpo.rollout.ENGINES): names, facts, and engine modules imported only when used."""

import subprocess
import sys

import pytest

from grpo import rollout


def test_the_engine_table_and_the_names_read_from_it():
    assert tuple(rollout.ENGINES) == ("shared_prefix", "transformers", "vllm", "server")
    assert rollout.ENGINE_NAMES == ("auto", "shared_prefix", "transformers", "vllm", "server")
    assert rollout.IN_PROCESS_ENGINES == ("shared_prefix", "transformers", "vllm")  # serve-rollout's choices
    assert [n for n in rollout.ENGINES if rollout.ENGINES.get(n).own_numerics] == ["vllm", "server"]
    assert rollout.engine_class("shared_prefix").__name__ == "SharedPrefixEngine"
    from grpo.rollout import TransformersEngine  # by class name, through the table

    assert TransformersEngine is rollout.engine_class("transformers")
    with pytest.raises(ValueError, match=r"`rollout.engine` = 'tgi' is invalid; allowed: shared_prefix, "
                                         r"transformers, vllm, server \(the registered rollout engines\)"):
        rollout.engine_class("tgi")


def test_reading_the_table_imports_no_engine_module():
    code = ("import sys, grpo.rollout as r; names = r.ENGINE_NAMES, r.IN_PROCESS_ENGINES; "
            "print(sorted(m for m in sys.modules if m.endswith('_engine') or m in ('vllm', 'grpo.rollout.shared_prefix')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
