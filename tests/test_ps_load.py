"""bench/ps_load.py --quick: a ZeroMQ server and 4 workers for 200 steps lose no message, and
the memory figures are measured (the bound itself is checked by the full bench, not here:
200 steps on a loaded CI machine are too few for a robust growth threshold)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_ps_load_quick(tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "ps_load.py"), "--quick", "--json", str(out),
                           "--timeout", "100"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(out.read_text())
    assert not r["timed_out"], proc.stdout
    assert all(code == 0 for code in r["exit_codes"].values()), proc.stdout
    assert r["steps"] == 200 and r["workers"] == 4
    assert r["steps_done"] == 200, proc.stdout
    # No message lost: exactly one gradient per worker per step, nothing dropped.
    assert r["expected_grads"] == 800
    assert r["accepted_grads"] == 800, proc.stdout
    assert r["dropped_total"] == 0 and r["dropped"] == {}, proc.stdout
    assert r["accepted"]["hello"] == 4, proc.stdout
    assert r["pass_no_loss"], proc.stdout
    # The growth figures are there for the server and every worker.
    assert set(r["memory"]) == {"server", "worker0", "worker1", "worker2", "worker3"}
    for name, m in r["memory"].items():
        for key in ("warm_mb", "end_mb", "growth_mb", "growth_pct"):
            assert isinstance(m[key], (int, float)), (name, m, proc.stdout)
        assert m["warm_mb"] > 0 and m["end_mb"] > 0
    assert "PASS no message lost" in proc.stdout
    assert "memory flat:" in proc.stdout
