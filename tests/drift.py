"""How far N ranks end from one process, step by step: the figures behind the README's
tolerance statement (bitwise for the same N; float32 drift that grows with steps otherwise).

    python -m tests.drift --steps 2500 --ranks 2 3 4

runs the default config (digits MLP, Adam) under mpiexec -n N for each N, once more for the
first N to show that the same N is bitwise, and prints max|param - single-process param| at
the checkpointed steps. tests/test_drift.py runs it short."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from distbp.train import Trainer, read_checkpoint, resolve

MPIEXEC = Path(sys.executable).parent / "mpiexec"


def _every(steps: int) -> int:
    """A checkpoint every tenth of the run (every step's end when ten do not divide it)."""
    every = max(1, steps // 10)
    return every if steps % every == 0 else steps


def _points(steps: int) -> list[int]:
    return list(range(_every(steps), steps + 1, _every(steps)))


def _overrides(steps: int) -> list[str]:
    return [f"train.max_steps={steps}", "train.epochs=100000", f"checkpoint.every={_every(steps)}", "checkpoint.keep=100",
            f"train.eval_every={steps}", f"train.log_every={steps}", "train.progress=plain"]


def _params(run_dir: Path, steps: int) -> dict[int, np.ndarray]:
    return {s: read_checkpoint(run_dir / "checkpoints" / f"step-{s:08d}.npz").arrays["params"]
            for s in _points(steps)}


def _single(run_dir: Path, steps: int) -> dict[int, np.ndarray]:
    Trainer(resolve(None, _overrides(steps)), run_dir=run_dir, resume="never", stream=io.StringIO()).run()
    return _params(run_dir, steps)


def _ranks(n: int, run_dir: Path, steps: int) -> dict[int, np.ndarray]:
    sets = [a for o in _overrides(steps) for a in ("--set", o)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    res = subprocess.run([str(MPIEXEC), "-n", str(n), sys.executable, "-m", "distbp.cli", "--run-dir", str(run_dir),
                          "--resume", "never", *sets], capture_output=True, text=True, timeout=1800, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"mpiexec -n {n} exited {res.returncode}: {res.stderr[-2000:]}")
    return _params(run_dir, steps)


def measure(steps: int, ranks: list[int], root: Path) -> dict:
    """{"steps": [...], "max_abs_diff": {N: [max|Δ| vs one process at each step]},
    "same_n_bitwise": bool (the first N run twice)}."""
    one = _single(root / "single", steps)
    points = _points(steps)
    out: dict = {"steps": points, "max_abs_diff": {}, "ranks": ranks}
    first = None
    for n in ranks:
        got = _ranks(n, root / f"n{n}", steps)
        first = got if first is None else first
        out["max_abs_diff"][n] = [float(np.max(np.abs(got[s] - one[s]))) for s in points]
    again = _ranks(ranks[0], root / f"n{ranks[0]}-again", steps)
    out["same_n_bitwise"] = all(np.array_equal(again[s], first[s]) for s in points)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="distbp-drift-") as tmp:
        res = measure(args.steps, args.ranks, Path(tmp))
    print(f"max|param(N ranks) - param(1 process)|, default config, {args.steps} steps")
    print(f"{'step':>6} " + " ".join(f"{f'N={n}':>9}" for n in args.ranks))
    for i, s in enumerate(res["steps"]):
        print(f"{s:>6} " + " ".join(f"{res['max_abs_diff'][n][i]:9.2e}" for n in args.ranks))
    print(f"N={args.ranks[0]} twice: {'bitwise equal' if res['same_n_bitwise'] else 'DIFFERENT'}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0 if res["same_n_bitwise"] else 1


if __name__ == "__main__":
    sys.exit(main())
