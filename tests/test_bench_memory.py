"""bench/memory.py --quick runs end to end: it exits 0, prints its verdict lines and writes
JSON whose targets and figures are sane (peak at or above the floor it is compared with, a
floor that is the model's real size, growth figures that are numbers). Whether the targets are
met is the benchmark's business, not the test's: the figures depend on the machine's allocator
and on work in progress in distbp."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MAIN_PARAMS = 1_863_690  # MLP 784-1024-1024-10
DEFAULT_PARAMS = 19_210  # MLP 64-256-10, configs/default.yaml


def test_memory_quick(tmp_path):
    out = tmp_path / "memory.json"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "memory.py"), "--quick", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, f"memory.py --quick exited {res.returncode}\n{res.stdout}\n{res.stderr}"
    for batch in (64, 512):
        assert re.search(rf"^(PASS|FAIL)  peak / floor MLP 784-1024-1024-10 at batch {batch}: [0-9.]+ ", res.stdout,
                         re.M), res.stdout
    assert re.search(r"^(PASS|FAIL)  RSS growth over 1000 bare training steps: [-+][0-9.]+%", res.stdout, re.M)
    assert re.search(r"^(PASS|FAIL)  RSS growth over \d+ Trainer steps: [-+][0-9.]+%", res.stdout, re.M)

    report = json.loads(out.read_text())
    targets = report["targets"]
    expected = {"peak/floor MLP 784-1024-1024-10@64", "peak/floor MLP 784-1024-1024-10@512",
                "peak/floor MLP 64-256-10@128", "forward keeps/needed MLP 784-1024-1024-10@64",
                "forward keeps/needed MLP 784-1024-1024-10@512", "forward keeps/needed MLP 64-256-10@128",
                "rss growth loop", "rss growth trainer"}
    assert set(targets) == expected
    for key, t in targets.items():
        assert isinstance(t["ok"], bool) and math.isfinite(t["value"]) and t["limit"] > 0, (key, t)
        assert t["ok"] == (t["value"] < t["limit"] if key.startswith("rss") else t["value"] <= t["limit"]), (key, t)

    params = {"784-1024-1024-10": MAIN_PARAMS, "64-256-10": DEFAULT_PARAMS}
    for row in report["peak"]:
        name = "-".join(map(str, row["sizes"]))
        floor = row["floor"]
        assert floor["n_params"] == params[name]
        assert floor["total"] == 4 * 4 * params[name] + floor["activations"]
        # Everything the floor counts is alive at the peak, which tracemalloc saw whole.
        assert 1.0 <= row["peak_over_floor"] == targets[f"peak/floor MLP {name}@{row['batch']}"]["value"] < 10
        assert row["traced"]["peak"] >= row["traced"]["base"] >= 4 * 4 * params[name]
        # The forward keeps at least the arrays backward will read, or backward could not run.
        assert 0.99 <= row["forward_kept_over_needed"] < 5
    for key in ("loop_growth", "trainer_growth"):
        growth = report[key]
        assert growth["rss_warm_mb"] > 0 and abs(growth["growth_pct"]) < 50, growth
    assert report["traced_growth"]["loop_bytes"] < 1_000_000
