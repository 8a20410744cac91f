"""What every benchmark prints first: the machine and the code it measured."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np


def machine_info() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    blas = "unknown"
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:  # older numpy has no mode="dicts"; the BLAS name is only informative
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    info = {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "host": platform.node(),
            "python": platform.python_version(), "numpy": np.__version__, "blas": blas,
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"), "loadavg_at_start": load}
    try:
        import importlib.metadata
        info["mpi4py"] = importlib.metadata.version("mpi4py")
    except Exception:
        info["mpi4py"] = "unknown"
    info["code"] = code_version()
    return info


def code_version() -> str:
    """The commit the measured distbp comes from, and whether distbp/ had uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "distbp"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    if not head:
        return "unknown (not a git checkout)"
    return f"git {head}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def finish(report: dict, json_path: str | None, strict: bool, verdicts: list[bool]) -> int:
    """Write the figures to ``--json PATH`` if asked; the exit status (1 under ``--strict``
    when a target failed, else 0: a benchmark reports, it does not judge by default)."""
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {json_path}")
    return 1 if strict and not all(verdicts) else 0
