"""report.html and plots/*.png from run directories: content, self-containment, escaping, size."""

import json
import re
from pathlib import Path

import pytest

from grpo.cli import main
from grpo.record import report
from tests.support.run_dirs import TRICKY, make_synthetic_run

DATA_BLOCK = re.compile(r'<script type="application/json" id="report-data">(.*?)</script>', re.DOTALL)


def embedded(html: str) -> dict:
    blocks = DATA_BLOCK.findall(html)
    assert len(blocks) == 1
    return json.loads(blocks[0])


def plotted(data: dict) -> dict[str, list[str]]:
    return {p["id"]: [s["name"] for s in p["series"]] for p in data["plots"]}


def test_report_of_a_real_run_holds_its_data_and_pngs(tiny_run_dir):
    run = Path(tiny_run_dir)
    assert (run / "report.html").is_file()  # written by `train` when the run ended
    path = report.write_report(run)
    data = embedded(path.read_text(encoding="utf-8"))
    plots = plotted(data)
    # pass_rate and pools: the run's accuracy reward gives every prompt an estimate (grpo.tasks.sampling)
    assert set(plots) == {"reward", "accuracy", "kl", "clip", "length", "truncation", "pass_rate", "pools", "eval"}
    assert plots["pools"] == ["sampling/easy", "sampling/learnable", "sampling/hard"]
    reward_series = plots["reward"]
    assert reward_series[:3] == ["reward/mean", "reward/format/mean", "reward/accuracy/mean"]
    assert len(reward_series) == 4  # and the length reward, named by its file path
    assert plots["length"] == ["completion_length/mean", "completion_length/min", "completion_length/max"]
    assert plots["eval"] == ["eval strict_accuracy", "eval accuracy", "eval format"]  # pass_k 1: no sampled
    assert [p["series"][0]["x"] for p in data["plots"] if p["id"] == "reward"] == [[1, 2, 3]]
    logged = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(data["samples"]) == len(logged) == 3 * 8
    first = data["samples"][0]
    assert first["completion"] == logged[0]["completion"] and first["step"] == 1
    assert set(first["rewards"]) == set(logged[0]["rewards"]) and len(first["rewards"]) == 3
    assert data["reward_names"] == list(logged[0]["rewards"])
    assert "num_steps: 3" in data["config"]
    pngs = sorted(p.stem for p in (run / "plots").glob("*.png"))
    assert pngs == sorted(plots)
    assert all((run / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)


def test_report_is_self_contained(tiny_run_dir):
    html = (Path(tiny_run_dir) / "report.html").read_text(encoding="utf-8")
    # no fetched resource: no src/href to the web, no stylesheet link, no external script, no CSS import
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert not re.search(r"<script[^>]*\ssrc\s*=", html, re.IGNORECASE)
    assert not re.search(r"<link[^>]*stylesheet", html, re.IGNORECASE)
    assert "@import" not in html and "url(" not in html


def test_markup_in_completions_cannot_escape_the_data_block(tmp_path):
    run = make_synthetic_run(tmp_path / "run", num_steps=30)
    html = report.render_html(report.build_data(run))
    # The template's own two script blocks close; nothing from the data does.
    assert len(re.findall(r"</script", html, re.IGNORECASE)) == 2
    assert "<script>window" not in html
    assert "<img" not in html and "<!--" not in html.split("<body>")[1]
    completions = [s["completion"] for s in embedded(html)["samples"]]
    for tricky in TRICKY:  # the text itself survives the round trip unchanged
        assert any(c.endswith(tricky) for c in completions), tricky


def test_long_runs_are_downsampled_within_bounds(tmp_path):
    run = make_synthetic_run(tmp_path / "run", num_steps=5000)
    data = embedded(report.write_report(run).read_text(encoding="utf-8"))
    for plot in data["plots"]:
        for s in plot["series"]:
            assert len(s["x"]) <= report.MAX_POINTS
            if plot["id"] != "eval":
                assert s["x"][0] == 1 and s["x"][-1] == 5000  # first and last step kept
    assert len(plotted(data)["reward"]) == 3
    steps = [s["step"] for s in data["samples"]]
    assert len(steps) == report.MAX_SAMPLES == 500
    assert steps == sorted(steps)
    # 20,000 records cut into 500 runs of 40 (10 steps each): one drawn from every run
    assert all(10 * i < step <= 10 * (i + 1) for i, step in enumerate(steps))
    again = report.build_data(run)
    assert again["samples"] == data["samples"]  # fixed seed: the same pick every time
    assert any("500 of the 20000" in note for note in data["notes"])
    assert (run / "report.html").stat().st_size < 2_000_000


def test_evenly_spaced_and_sampling_rules():
    assert report.evenly_spaced(5, 10) == [0, 1, 2, 3, 4]
    assert report.evenly_spaced(101, 5) == [0, 25, 50, 75, 100]
    idx = report.evenly_spaced(5000, 2000)
    assert len(idx) == len(set(idx)) == 2000 and idx[0] == 0 and idx[-1] == 4999
    samples = [{"step": s, "i": i} for s in range(1, 11) for i in range(3)]
    assert report.sample_completions(samples, 100) == samples
    picked = report.sample_completions(samples, 5, seed=1)
    assert all(2 * k < p["step"] <= 2 * (k + 1) for k, p in enumerate(picked))  # 5 runs of 2 steps
    assert picked == report.sample_completions(samples, 5, seed=1)


def test_cli_report(tmp_path, capsys):
    run = make_synthetic_run(tmp_path / "run", num_steps=10)
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a run directory"):
        report.write_report(tmp_path / "empty")
