"""A short run of distbp-train in this process, for the tests that use what was trained."""

from __future__ import annotations

from pathlib import Path

from distbp import cli


def train_run(tmp: Path, *sets: str, steps: int = 60) -> Path:
    """``distbp-train --run-dir TMP/run`` for ``steps`` steps with the ``--set``s; its run directory."""
    run = tmp / "run"
    args = [a for s in [f"train.max_steps={steps}", "train.progress=plain", "comm.threads=1", *sets]
            for a in ("--set", s)]
    assert cli.train_main(["--run-dir", str(run), "--resume", "never", *args]) == 0
    return run
