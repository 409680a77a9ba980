"""docs/configuration.md is what grpo.config.docs writes from the fields' help: it cannot drift."""

from pathlib import Path

from grpo.config import describe
from grpo.config.docs import markdown

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_committed_docs_equal_the_generated_ones():
    assert DOCS.read_text(encoding="utf-8") == markdown(), (
        "docs/configuration.md is stale: run `python -m grpo.config.docs > docs/configuration.md`")


def test_every_field_has_a_row():
    text = markdown()
    for name, _, _ in describe():
        if name not in ("rewards", "algorithm.aux_losses"):  # lists of entries: a table of their own
            assert f"| `{name}` |" in text, name
    assert "| `rewards[].steps` |" in text
    assert "| `algorithm.aux_losses[].schedule` |" in text


def test_help_quotes_no_measured_figures():
    # measured numbers belong in bench/RESULTS.md; the help links the section instead
    for name, _, help_text in describe():
        assert " ms " not in help_text and "x faster" not in help_text and "x slower" not in help_text, name
