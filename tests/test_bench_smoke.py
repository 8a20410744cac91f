"""The benchmarks run end to end (bench/step.py, allreduce.py, scaling.py and ps.py with --quick):
they exit 0, print their ratio lines and write their JSON. No timing is asserted: the machine
is shared and noisy, and the figures are the benchmarks' business, not the tests'."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def run_bench(script: str, json_path: Path) -> subprocess.CompletedProcess:
    if not MPIEXEC.is_file():
        pytest.skip("mpiexec is not installed next to the interpreter (the mpich wheel)")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    res = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick", "--json", str(json_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, f"{script} --quick exited {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


def test_allreduce_quick(tmp_path):
    out = tmp_path / "allreduce.json"
    res = run_bench("allreduce.py", out)
    for n in (2, 4):
        # One row per buffer with the ratio, and the verdict line with the ratio again.
        assert re.search(rf"^ {n} MLP 784-1024-1024-10 +7,454,760 .*%", res.stdout, re.M), res.stdout
        assert re.search(rf"^(PASS|FAIL)  N={n}.*: distbp sync at [0-9.]+% of raw Allreduce speed", res.stdout,
                         re.M), res.stdout
    assert re.search(r"^ 2 .* [0-9.]+ +[0-9.]+$", res.stdout, re.M), "the fitted alpha and beta at N=2"
    report = json.loads(out.read_text())
    assert set(report["ranks"]) == {"2", "4"}
    for res_n in report["ranks"].values():
        assert res_n["sum_ok"], "distbp's allreduce_sum_ returned the sum over ranks"
        row = res_n["sync"]["MLP 784-1024-1024-10"]
        assert row["bytes"] == 7_454_760 and row["distbp_pct_of_raw"] > 0
    assert report["fit"]["2"]["beta_Bps"] > 0
    assert "ring_projection" in report


def test_scaling_quick(tmp_path):
    out = tmp_path / "scaling.json"
    res = run_bench("scaling.py", out)
    for kind in ("weak", "strong"):
        assert f"{kind} scaling:" in res.stdout
    for n in (1, 2, 4):
        assert re.search(rf"^ {n} +\d+ +\d+ +[0-9.]+ +\d+ +[0-9.]+x +[0-9.]+%", res.stdout, re.M), res.stdout
    assert re.search(r"^(PASS|FAIL)  weak scaling at 2 ranks: [0-9.]+x", res.stdout, re.M), res.stdout
    assert "PROJECTION" in res.stdout and "NOT measured" in res.stdout
    assert re.search(r"^PROJ  (meets|misses) weak-scaling efficiency at 8 ranks", res.stdout, re.M), res.stdout
    report = json.loads(out.read_text())
    assert set(report["ranks"]) == {"1", "2", "4"}
    assert report["ranks"]["4"]["oversubscribed"] == (report["machine"]["usable_cores"] < 4)
    for n, r in report["ranks"].items():
        assert r["summary"]["weak"]["steps"] >= 1
        assert r["blas_threads"] in ([1], []), "each rank runs one BLAS thread"
    assert {"8", "16"} <= set(report["projection"]["ranks"])


def test_ps_quick(tmp_path):
    out = tmp_path / "ps.json"
    res = run_bench("ps.py", out)
    for n in (2, 4):
        for kind in ("mpi", "zmq"):
            assert re.search(rf"^ {n}  {kind} +[0-9,]+ +[0-9.]+ ", res.stdout, re.M), res.stdout
        assert re.search(rf"^(PASS|FAIL)  N={n} .*: ZeroMQ at [0-9.]+% of MPI's samples/s", res.stdout, re.M), \
            res.stdout
    assert "N=4 oversubscribes them" in res.stdout
    report = json.loads(out.read_text())
    assert set(report["workers"]) == {"2", "4"}
    for row in report["workers"].values():
        assert row["ratio"] > 0 and row["zmq"]["steps"] >= 1 and row["mpi"]["steps"] >= 1


def test_step_quick(tmp_path):
    """bench/step.py: the same-math check passes and the ratio lines are printed."""
    out = tmp_path / "step.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "step.py"), "--quick", "--no-torch", "--mem-steps", "20",
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("-> OK") == 2, res.stdout  # distbp and hand-written agree at both batch sizes
    for batch in (64, 512):
        assert re.search(rf"^ +{batch} +[0-9.]+ +[0-9.]+ +- +[0-9.]+ ", res.stdout, re.M), res.stdout
    assert json.loads(out.read_text())["targets"]


def test_zero_quick(tmp_path):
    if not MPIEXEC.is_file():
        pytest.skip("mpiexec is not installed next to the interpreter (the mpich wheel)")
    out = tmp_path / "zero.json"
    res = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, str(ROOT / "bench" / "zero.py"), "--quick",
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"ZeRO-1 .* ratio [0-9.]+, [+-][0-9.]+ ms per step saved by sharding", res.stdout), res.stdout
    report = json.loads(out.read_text())
    assert report["ranks"] == 2 and report["numel"] == 1_863_690
    assert set(report["median_s"]) == {"allreduce", "adam_full", "reduce_scatter_allgather", "adam_shard"}
    assert all(v > 0 for v in report["median_s"].values())


def test_trainer_quick(tmp_path):
    out = tmp_path / "trainer.json"
    res = run_bench("trainer.py", out)
    assert "same math after 11 steps: yes" in res.stdout, res.stdout
    assert re.search(r"^Trainer / bare loop samples/s: [0-9.]+ \(runs: ", res.stdout, re.M), res.stdout
    report = json.loads(out.read_text())
    assert report["same_math"] and report["ratio"] > 0 and set(report["ms_per_step"]) == {"trainer", "bare"}


def test_predict_quick(tmp_path):
    out = tmp_path / "predict.json"
    res = run_bench("predict.py", out)
    assert "same predictions as the hand-written forward: yes" in res.stdout, res.stdout
    assert re.search(r"^distbp / hand rows/s: [0-9.]+ ", res.stdout, re.M), res.stdout
    assert re.search(r"^peak at 20x / at 10x the chunk: [0-9.]+ ", res.stdout, re.M), res.stdout
    report = json.loads(out.read_text())
    assert report["same_predictions"] and set(report["peak_bytes"]) == {"10", "20"}
