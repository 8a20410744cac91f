"""Hostile config input, as a fault trial for ``python -m tests.faults.report``: a few hundred
bytes of YAML whose nested aliases ("billion laughs") expand to millions of values. distbp
must refuse it at once, as a config error (exit 2) naming the file, in a short message and
without the memory that expanding it would take."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BOMB_LIMIT_S = 10.0  # the whole process, interpreter start and imports included
REPO = Path(__file__).resolve().parents[2]


def bomb_text(seed: int) -> str:
    """A YAML bomb: ``levels`` anchors, each a list of ``fan`` aliases of the one before, the
    last one under a key the schema knows (so a walk of it, not an unknown-key error, is what
    a naive reader would do); fan ** levels values, from about 300 bytes."""
    fan, levels = 8 + seed % 3, 7 + seed % 3
    key = ("model.sizes", "seed", "data.options")[seed % 3].split(".")
    lines = [f'l0: &l0 [{", ".join(["lol"] * fan)}]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]")
    lines.append(f"{key[0]}: *l{levels - 1}" if len(key) == 1 else f"{key[0]}:\n  {key[1]}: *l{levels - 1}")
    return "\n".join(lines) + "\n"


def yaml_bomb(tmp_dir: str | Path, seed: int) -> dict:
    """``distbp-train --config BOMB`` in a fresh process: its exit code, how long it took, whether
    the one-line message names the file, how long the message is and the process's peak memory."""
    d = Path(tmp_dir) / f"config-bomb-seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    bomb = d / "bomb.yaml"
    bomb.write_text(bomb_text(seed))
    err_path = d / "stderr.txt"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("DISTBP_DEBUG", None)
    t0 = time.monotonic()
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "distbp.cli", "--config", str(bomb), "--run-dir", str(d / "run")],
                                stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
        code, rusage, leftovers = None, None, 0
        while True:  # wait4, not wait: the rusage of this child alone gives its peak memory
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                code = os.waitstatus_to_exitcode(status)
                proc.returncode = code
                break
            if time.monotonic() - t0 > BOMB_LIMIT_S:
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, rusage = os.wait4(proc.pid, 0)
                proc.returncode, leftovers = os.waitstatus_to_exitcode(status), 1
                break
            time.sleep(0.01)
    took = time.monotonic() - t0
    stderr = err_path.read_text(errors="replace")
    return {"fault": "YAML bomb as --config", "seed": seed, "bomb_bytes": bomb.stat().st_size,
            "exit_code": code, "seconds_to_exit": took, "exited_nonzero": code not in (None, 0),
            "limit_s": BOMB_LIMIT_S, "names_rank": str(bomb) in stderr, "message_bytes": len(stderr.encode()),
            "traceback": "Traceback" in stderr, "peak_rss_mb": round(rusage.ru_maxrss / 1024, 1) if rusage else None,
            "says": stderr.strip().splitlines()[:1], "checkpoint_loads": 0, "bitwise_resume": 0,
            "run_dir_written": (d / "run").exists(), "leftover_processes": leftovers}
