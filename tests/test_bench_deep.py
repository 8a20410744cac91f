"""bench/deep.py --quick runs end to end: distbp and the hand-written step agree, the table is
printed and the JSON holds the target with a finite ratio. The ratio's value is not asserted:
the machine is shared and noisy, and timings are the benchmark's business, not the tests'."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_deep_quick(tmp_path):
    out = tmp_path / "deep.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "deep.py"), "--quick", "--no-torch", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("-> OK") == 3, res.stdout  # the same math at batches 16, 64 and 256
    for batch in (16, 64, 256):
        assert re.search(rf"^ +{batch} +[0-9.]+ +[0-9.]+ +- +[0-9.]+ +- +\d+ +-?[0-9.]+ ", res.stdout, re.M), res.stdout
    assert re.search(r"^(PASS|FAIL)  distbp/hand at batch 64: [0-9.]+ \(target <= 1.50\)", res.stdout, re.M), res.stdout

    report = json.loads(out.read_text())
    target = report["targets"]["deep_distbp/hand@64"]
    assert target["limit"] == 1.5
    assert math.isfinite(target["value"]) and target["value"] > 0
    assert target["ok"] == (target["value"] <= 1.5)
    row = report["batches"]["64"]
    assert row["graph_ops"] > 0 and math.isfinite(row["overhead_per_op_us"])
    assert report["sizes"] == [64] + [64] * 19 + [10]
