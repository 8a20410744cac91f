"""bench/run.py: collects every benchmark's targets into one JSON, renders them into
RESULTS.md between its markers (keeping the hand-written text) and draws the PNG plots."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _results(**benchmarks) -> dict:
    return {"date": "2026-11-30", "quick": False, "json": "bench/results/x.json",
            "machine": {"cpu": "test cpu", "cores": 2, "usable_cores": 2, "code": "git abc"},
            "benchmarks": benchmarks}


SCALING = {"command": "python bench/scaling.py", "status": "ok", "seconds": 1.0, "report": {
    "ranks": {"1": {"summary": {"weak": {"speedup": 1.0, "phase_max_s": {"forward": 0.02, "backward": 0.03,
                                                                        "allreduce": 0.0, "optimizer": 0.005}}}},
              "2": {"summary": {"weak": {"speedup": 1.9, "phase_max_s": {"forward": 0.02, "backward": 0.03,
                                                                        "allreduce": 0.004, "optimizer": 0.005}}}}},
    "projection": {"ranks": {"8": {"efficiency": 0.93}, "16": {"efficiency": 0.9}}},
    "targets": {"weak_speedup@2": {"limit": 1.85, "value": 1.9, "ok": True}}}}
STEP = {"command": "python bench/step.py", "status": "ok", "seconds": 2.0, "report": {
    "noisy": True, "targets": {"distbp/hand@64": {"limit": 1.1, "value": 1.234, "ok": False},
                               "gather": {"limit_pct": 95.0, "value_pct": 99.5, "ok": True}}}}


def test_targets_of_every_benchmark_in_one_table(run):
    rows = run.targets(_results(step=STEP, scaling=SCALING, deep={"command": "python bench/deep.py",
                                                                   "status": "exit 1"}))
    by = {(r["benchmark"], r["target"]): r for r in rows}
    assert by[("step", "distbp/hand@64")]["value"] == 1.234 and not by[("step", "distbp/hand@64")]["ok"]
    assert by[("step", "distbp/hand@64")]["noisy"]
    assert by[("step", "gather")]["unit"] == "%" and by[("step", "gather")]["limit"] == 95.0
    assert by[("scaling", "weak_speedup@2")]["ok"]
    # A benchmark that failed without figures still shows up, as not met.
    assert by[("deep", "(ran)")]["value"] == "exit 1" and not by[("deep", "(ran)")]["ok"]


def test_render_keeps_the_hand_written_text_and_replaces_only_the_block(run, tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nHand-written intro.\n\n## Analysis\n\nWhy a target is missed.\n")
    run.write_results_md(md, run.render(_results(step=STEP), {}))
    first = md.read_text()
    assert first.startswith("# Results\n\n" + run.BEGIN) and "Why a target is missed." in first
    assert "| step | distbp/hand@64 | 1.1 | 1.23 | **not met** (noisy run) | `python bench/step.py` |" in first
    run.write_results_md(md, run.render(_results(scaling=SCALING), {"weak scaling": "results/x-scaling.png"}))
    second = md.read_text()
    assert second.count(run.BEGIN) == 1 and second.count(run.END) == 1
    assert "distbp/hand@64" not in second and "| scaling | weak_speedup@2 | 1.85 | 1.9 | met |" in second
    assert "![weak scaling](results/x-scaling.png)" in second
    assert "Hand-written intro." in second and "Why a target is missed." in second


def test_plots_are_png_files(run, tmp_path):
    made = run.plot(_results(scaling=SCALING), tmp_path / "x")
    assert set(made) == {"weak scaling", "step-time breakdown"}
    for name in made.values():
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert run.plot(_results(step=STEP), tmp_path / "y") == {}  # nothing to draw without scaling figures


@pytest.mark.slow
def test_one_command_end_to_end(tmp_path):
    md = tmp_path / "RESULTS.md"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "ps_load",
                          "--out", str(tmp_path), "--results-md", str(md)],
                         capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    (out,) = tmp_path.glob("*-quick.json")
    results = json.loads(out.read_text())
    assert list(results["benchmarks"]) == ["ps_load"] and results["machine"]["cores"] >= 1
    assert results["benchmarks"]["ps_load"]["report"]["targets"]["ps_no_message_lost@4"]["ok"]
    assert "| ps_load | ps_no_message_lost@4 | 800 | 800 | met |" in md.read_text()
    assert "targets met" in res.stdout
    # Redrawn from the JSON alone, the table is the same.
    md.write_text("# Results\n\nHand-written.\n")
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--render", str(out), "--results-md", str(md)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "| ps_load | ps_no_message_lost@4 | 800 | 800 | met |" in md.read_text() and "Hand-written." in md.read_text()


def test_unknown_benchmark_is_a_usage_error():
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--only", "stepp"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown benchmark(s) stepp" in res.stderr
