"""A checkpoint write that fails for real (a full 160 KiB tmpfs) ends the run
with one message naming the file, leaves every earlier checkpoint intact and loadable, leaves
no temporary file, and the run resumes from them elsewhere to the bitwise result."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distbp.train import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow

SETS = ["data.name=synthetic", "data.samples=600", "data.features=8", "data.classes=3", "model.sizes=[8,256,3]",
        "train.max_steps=60", "checkpoint.every=5", "checkpoint.keep=100", "train.log_every=20", "comm.threads=1"]


def _train(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "distbp.cli", "--run-dir", str(run_dir), *[a for s in SETS for a in ("--set", s)],
           *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the injected-error "
                    "tests in test_checkpoint.py still run")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_stops_the_run_and_keeps_every_earlier_checkpoint(small_disk, tmp_path):
    run = small_disk / "run"
    res = _train(run)
    assert res.returncode == 1, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "could not write the checkpoint: No space left on device; the checkpoints already in" in errors[0]
    kept = list_checkpoints(run / "checkpoints")
    assert len(kept) >= 1 and f"{kept[-1].name}" not in errors[0]  # the failed one is named, not kept
    steps = [read_checkpoint(p).step for p in kept]  # each verifies
    assert steps == list(range(5, 5 * len(kept) + 1, 5))
    assert not [p for p in (run / "checkpoints").iterdir() if p.suffix == ".tmp"]

    # Moved to a disk with room, the run resumes from the newest and ends as if never stopped.
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    assert _train(moved, "--resume", "auto").returncode == 0
    reference = tmp_path / "reference"
    assert _train(reference).returncode == 0
    final = "checkpoints/step-00000060.npz"
    assert np.array_equal(read_checkpoint(moved / final).arrays["params"],
                          read_checkpoint(reference / final).arrays["params"])
