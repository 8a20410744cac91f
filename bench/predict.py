"""``distbp-predict``'s rows/s against the same prediction hand-written in numpy, and its peak memory
on inputs of 10x and 20x a chunk (bench/README.md). Targets: rows/s >= 0.9 of hand; peak at 20x
<= 1.1x the peak at 10x."""

from __future__ import annotations

import os

os.environ.update(dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1"))

import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402  (bench/ is on sys.path)
import distbp  # noqa: E402
from distbp import cli  # noqa: E402
from distbp.train.inference import predict_file  # noqa: E402

TARGET, MEMORY_LIMIT = 0.9, 1.1


def train(tmp: Path) -> Path:
    """A small run on synthetic blobs shaped like the digits (64 features, 10 classes)."""
    sets = ["data.name=synthetic", "data.samples=2000", "data.features=64", "data.classes=10",
            "model.sizes=[64, 256, 10]", "train.max_steps=20", "train.progress=plain", "comm.threads=1"]
    with open(os.devnull, "w") as sink:
        stdout, sys.stdout = sys.stdout, sink
        try:
            assert cli.train_main(["--run-dir", str(tmp / "run"), "--resume", "never", *common.sets(sets)]) == 0
        finally:
            sys.stdout = stdout
    return tmp / "run"


def hand_forward(run: Path, path: Path, out: Path, chunk: int) -> None:
    """The same prediction written by hand: the weights read from the checkpoint, numpy only."""
    p = distbp.load(run)
    params = [prm.data for _, prm in p.model.named_parameters()]  # W1, b1, W2, b2 as (in, out)
    mean, matrix = p.preprocessor.mean, p.preprocessor.matrix
    with np.load(path) as f:
        x = f["x"]
    preds, probs = [], []
    for lo in range(0, len(x), chunk):
        z = x[lo:lo + chunk].astype(np.float64)
        z -= mean                                      # standardize, in float64 as the training statistics
        z *= matrix
        h = z.astype(np.float32) @ params[0]           # in-place from here: no temporary per op
        h += params[1]
        np.maximum(h, 0, out=h)
        s = h @ params[2]
        s += params[3]
        s = s.astype(np.float64)
        s -= s.max(axis=1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=1, keepdims=True)
        probs.append(s.astype(np.float32))
        preds.append(np.asarray(p.classes)[s.argmax(axis=1)])
    np.savez(out, prediction=np.concatenate(preds), proba=np.concatenate(probs))


def peak_bytes(run: Path, path: Path, out: Path, chunk: int) -> int:
    p = distbp.load(run)
    tracemalloc.start()
    predict_file(p, path, out, proba=True, chunk=chunk, progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def measure(report: dict, tmp: Path, rows: int, chunk: int, rounds: int, small: int) -> None:
    run, rng, inp = train(tmp), np.random.default_rng(0), tmp / "in.npz"
    np.savez(inp, x=rng.normal(size=(rows, 64)).astype(np.float32))
    predict_file(distbp.load(run), inp, tmp / "a.npz", True, chunk, progress=False)
    hand_forward(run, inp, tmp / "b.npz", chunk)
    with np.load(tmp / "a.npz") as a, np.load(tmp / "b.npz") as b:
        report["same_math"] = bool((a["prediction"] == b["prediction"]).mean() > 0.9999 and
                                   np.allclose(a["proba"], b["proba"], atol=1e-5))
    print(f"same predictions as the hand-written forward: {'yes' if report['same_math'] else 'NO'}")
    times: dict[str, list[float]] = {"distbp": [], "hand": []}
    for r in range(rounds):
        for name in common.rotation(["distbp", "hand"], r):
            t0 = time.perf_counter()
            if name == "distbp":
                predict_file(distbp.load(run), inp, tmp / "a.npz", True, chunk, progress=False)
            else:
                hand_forward(run, inp, tmp / "b.npz", chunk)
            times[name].append(time.perf_counter() - t0)
    report["rows_per_s"] = {k: rows / statistics.median(v) for k, v in times.items()}
    report["ratio"] = report["rows_per_s"]["distbp"] / report["rows_per_s"]["hand"]
    peaks = report["peak_bytes"] = {}
    for k in (10, 20):
        np.savez(tmp / f"mem{k}.npz", x=rng.normal(size=(small * k, 64)).astype(np.float32))
        peaks[k] = peak_bytes(run, tmp / f"mem{k}.npz", tmp / "m.npz", small)
    report.update(input_bytes={k: small * k * 64 * 4 for k in peaks}, peak_growth=peaks[20] / peaks[10])


def main(argv: list[str] | None = None) -> int:
    args = common.parse(common.parser(__doc__), argv)
    rows, chunk, rounds, small = (20_000, 4096, 2, 1024) if args.quick else (200_000, 65_536, 5, 4096)
    report = {"machine": common.header("bench/predict.py: distbp-predict against a hand-written numpy forward"),
              "command": sys.argv, "rows": rows, "chunk": chunk}
    with tempfile.TemporaryDirectory() as d:
        measure(report, Path(d), rows, chunk, rounds, small)
    if not report["same_math"]:
        return 1
    common.judge(report, "distbp/hand rows/s", report["ratio"] >= TARGET, f"distbp / hand rows/s: {report['ratio']:.3f}"
                 f" ({report['rows_per_s']['distbp']:,.0f} rows/s; target >= {TARGET})", limit=TARGET,
                 value=report["ratio"])
    common.judge(report, "peak 20x/10x", report["peak_growth"] <= MEMORY_LIMIT, f"peak at 20x / at 10x the chunk: "
                 f"{report['peak_growth']:.3f} (limit {MEMORY_LIMIT})", limit=MEMORY_LIMIT, value=report["peak_growth"])
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
