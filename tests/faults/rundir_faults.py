"""Run-directory fault trials (invariant 5, "Nothing lost"): every checkpoint damaged, and two
jobs started in one run directory. Each trial returns a dict of figures with the keys that
tests/faults/report.py tabulates; tests/test_nothing_destroyed.py asserts on them.

Every job is a real ``python -m distbp.cli`` process in its own session, output in files; a
trial kills (by pid) any process it started that is still running before it returns."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from distbp.train import CheckpointError, list_checkpoints, read_checkpoint

REPO = Path(__file__).resolve().parents[2]
EXIT_WITHIN_S = 30.0  # a refused job stops within this (start-up, data, then the refusal)
# 540 training samples in global batches of 27: 20 steps an epoch; every step logged.
BASE = ["data.name=synthetic", "data.samples=600", "data.features=8", "data.classes=3", "model.sizes=[8,32,3]",
        "train.global_batch=27", "train.epochs=100000", "train.log_every=1", "train.eval_every=50",
        "checkpoint.keep=100", "comm.threads=1", "train.progress=plain", "seed=5"]


def _cmd(run_dir: Path, max_steps: int, *extra: str) -> list[str]:
    # A checkpoint every 5 steps for a short job; a long one (two_jobs) writes 6.
    every = 5 if max_steps <= 100 else max_steps // 6
    sets = [a for o in [*BASE, f"train.max_steps={max_steps}", f"checkpoint.every={every}"] for a in ("--set", o)]
    return [sys.executable, "-m", "distbp.cli", "--run-dir", str(run_dir), *sets, *extra]


class _Proc:
    def __init__(self, name: str, cmd: list[str], out_dir: Path) -> None:
        self.out, self.err = out_dir / f"{name}.out", out_dir / f"{name}.err"
        with open(self.out, "w") as o, open(self.err, "w") as e:
            self.popen = subprocess.Popen(cmd, stdout=o, stderr=e, cwd=REPO, start_new_session=True,
                                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.started = time.monotonic()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> int:
        """SIGKILL its session if it still runs; 1 if it did (a leftover), else 0."""
        if self.popen.poll() is not None:
            return 0
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait()
        return 1

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


def _run(name: str, cmd: list[str], out_dir: Path, timeout: float = 120) -> tuple[int | None, float, str, int]:
    """(exit code or None if it hung, seconds, stderr, leftovers)."""
    p = _Proc(name, cmd, out_dir)
    code = p.wait(timeout)
    took = time.monotonic() - p.started
    return code, took, p.stderr, p.kill()


def _final(run_dir: Path, step: int) -> np.ndarray:
    return read_checkpoint(run_dir / "checkpoints" / f"step-{step:08d}.npz").arrays["params"]


_REFERENCES: dict[tuple[str, int], np.ndarray] = {}


def _reference(tmp_dir: Path, steps: int) -> np.ndarray:
    """Final parameters of one clean job of ``steps`` steps, computed once per tmp root."""
    key = (str(tmp_dir), steps)
    if key not in _REFERENCES:
        run = tmp_dir / f"rundir-reference-{steps}"
        code, _, err, _ = _run(f"rundir-reference-{steps}", _cmd(run, steps, "--resume", "never"), tmp_dir)
        if code != 0:
            raise RuntimeError(f"the reference job exited {code}\n{err[-3000:]}")
        _REFERENCES[key] = _final(run, steps)
    return _REFERENCES[key]


def _damage(path: Path, how: str, rng: random.Random) -> None:
    blob = path.read_bytes()
    if how == "truncate":
        path.write_bytes(blob[:rng.randrange(1, len(blob))])
    elif how == "flip":
        b = bytearray(blob)
        b[rng.randrange(len(b) // 4, len(b))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(b))
    elif how == "one byte":
        path.write_bytes(blob[:1])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # "text"
        path.write_text("not a checkpoint\n")


def all_damaged(tmp_dir: str | Path, seed: int, steps: int = 20) -> dict:
    """Every checkpoint of a finished job damaged (each its own way, chosen by ``seed``), then
    ``--resume auto``: it must stop with exit 1, name each file, and keep each byte for byte
    under checkpoints/damaged/; ``--resume never`` then starts over and ends as a clean job."""
    tmp_dir = Path(tmp_dir)
    root = tmp_dir / f"rundir-all-damaged-seed{seed}"
    root.mkdir(parents=True)
    run = root / "run"
    code, _, err, left = _run("first", _cmd(run, steps), root)
    if code != 0:
        raise RuntimeError(f"the first job exited {code}\n{err[-3000:]}")
    rng = random.Random(seed)
    damaged = {}
    for p in list_checkpoints(run / "checkpoints"):
        _damage(p, rng.choice(["truncate", "flip", "one byte", "empty", "text"]), rng)
        damaged[p.name] = p.read_bytes()
    code, took, err, left2 = _run("resume", _cmd(run, steps, "--resume", "auto"), root)
    folder = run / "checkpoints" / "damaged"
    kept = all((folder / n).is_file() and (folder / n).read_bytes() == b for n, b in damaged.items())
    named = all(str(folder / n) in err for n in damaged)
    # Start over as the message says; the damaged files stay, the new run is a clean one.
    again, _, err2, left3 = _run("start-over", _cmd(run, steps, "--resume", "never"), root)
    kept = kept and all((folder / n).read_bytes() == b for n, b in damaged.items())
    bitwise = again == 0 and bool(np.array_equal(_final(run, steps), _reference(tmp_dir, steps)))
    return {"fault": "every checkpoint damaged", "seed": seed, "damaged": len(damaged), "exit_code": code,
            "seconds_to_exit": took, "limit_s": EXIT_WITHIN_S, "names_lost": named, "checkpoint_loads": kept,
            "start_over_works": again == 0, "bitwise_resume": bitwise,
            "points_to_resume_never": "--resume never" in err, "leftover_processes": left + left2 + left3,
            "says": err.strip().splitlines()[:1], "start_over_says": err2.strip().splitlines()[-1:]}


def _wait_running(p: _Proc, run: Path, timeout: float = 60) -> bool:
    """Until the job holds the lock and has logged a step (polling its files), or has ended."""
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline and p.popen.poll() is None:
        if (run / ".lock").exists() and metrics.exists() and metrics.read_text().count("\n") >= 1:
            return True
        time.sleep(0.01)
    return False


def two_jobs(tmp_dir: str | Path, seed: int, steps: int = 6000) -> dict:
    """A second job started in the run directory of a running one (``--resume auto``, the
    default, or ``never`` by ``seed``): it must be refused at once, naming the first job's host
    and pid, and leave nothing behind; the first completes with its metrics its own (every
    step once, in order) and its result that of a job run alone."""
    tmp_dir = Path(tmp_dir)
    root = tmp_dir / f"rundir-two-jobs-seed{seed}"
    root.mkdir(parents=True)
    run = root / "run"
    resume = ["auto", "never"][seed % 2]
    first = _Proc("first", _cmd(run, steps), root)
    left = 0
    try:
        running = _wait_running(first, run)
        pid = first.popen.pid
        code, took, err, left = _run("second", _cmd(run, steps, "--resume", resume), root, timeout=EXIT_WITHIN_S * 2)
        overlapped = running and first.popen.poll() is None  # the first still ran when the second ended
        first_code = first.wait(300)
    finally:
        left += first.kill()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "loss" in r]
    log = (run / "train.log").read_text()
    not_interleaved = (train_steps == list(range(1, steps + 1)) and log.count(" parameters, ") == 1
                       and log.count(" done {") == 1)
    try:
        loads, why = read_checkpoint(run / "checkpoints" / f"step-{steps:08d}.npz") is not None, None
    except CheckpointError as e:
        loads, why = False, str(e)
    bitwise = loads and first_code == 0 and bool(np.array_equal(_final(run, steps), _reference(tmp_dir, steps)))
    return {"fault": "two jobs in one run directory", "seed": seed, "second_resume": resume, "exit_code": code,
            "seconds_to_exit": took, "limit_s": EXIT_WITHIN_S, "first_exit_code": first_code,
            "overlapped": overlapped, "names_lost": f"pid {pid} on host " in err,
            "metrics_not_interleaved": not_interleaved, "checkpoint_loads": loads, "checkpoint_error": why,
            "bitwise_resume": bitwise, "leftover_processes": left, "says": err.strip().splitlines()[:1]}
