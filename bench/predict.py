"""``distbp-predict``'s throughput and memory: rows/s of ``predict_file`` (npz in, npz out,
with --proba) against a hand-written numpy forward of the same weights (standardize, the
MLP's matmuls, softmax, argmax) over the same file, measured in the same run; and its peak
memory (tracemalloc) on inputs of 10x and 20x the chunk, which must not grow with the input.

    .venv/bin/python bench/predict.py            # MLP 64-256-10, 200,000 rows, chunk 65,536
    .venv/bin/python bench/predict.py --quick    # CI smoke
    .venv/bin/python bench/predict.py --json out.json [--strict]

Targets: distbp / hand rows/s >= 0.9 at the large chunk; peak memory at 20x the chunk within
1.1x of the peak at 10x (bounded by the chunk, not the input).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import common  # noqa: E402  (bench/ is on sys.path)
import distbp  # noqa: E402
from distbp import cli  # noqa: E402
from distbp.train.inference import predict_file  # noqa: E402

SIZES = (64, 256, 10)
TARGET, MEMORY_LIMIT = 0.9, 1.1


def train(tmp: Path) -> Path:
    """A small run on synthetic blobs shaped like the digits (64 features, 10 classes)."""
    run = tmp / "run"
    sets = ["data.name=synthetic", "data.samples=2000", "data.features=64", "data.classes=10",
            "model.sizes=[64, 256, 10]", "train.max_steps=20", "train.progress=plain", "comm.threads=1"]
    with open(os.devnull, "w") as sink:
        stdout, sys.stdout = sys.stdout, sink
        try:
            assert cli.train_main(["--run-dir", str(run), "--resume", "never", *[a for s in sets for a in ("--set", s)]]) == 0
        finally:
            sys.stdout = stdout
    return run


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--strict", action="store_true")
    args = ap.parse_args(argv)
    rows, chunk, rounds = (20_000, 4096, 2) if args.quick else (200_000, 65_536, 5)
    report, _ = common.print_header("distbp-predict against a hand-written numpy forward", no_torch=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        run = train(tmp)
        rng = np.random.default_rng(0)
        inp = tmp / "in.npz"
        np.savez(inp, x=rng.normal(size=(rows, SIZES[0])).astype(np.float32))
        p = distbp.load(run)
        predict_file(p, inp, tmp / "a.npz", True, chunk, progress=False)
        hand_forward(run, inp, tmp / "b.npz", chunk)
        with np.load(tmp / "a.npz") as a, np.load(tmp / "b.npz") as b:
            same = bool((a["prediction"] == b["prediction"]).mean() > 0.9999 and
                        np.allclose(a["proba"], b["proba"], atol=1e-5))
        print(f"same predictions as the hand-written forward: {'yes' if same else 'NO'}")
        times: dict[str, list[float]] = {"distbp": [], "hand": []}
        for r in range(rounds):
            for name in common.rotation(["distbp", "hand"], r):
                t0 = time.perf_counter()
                if name == "distbp":
                    predict_file(distbp.load(run), inp, tmp / "a.npz", True, chunk, progress=False)
                else:
                    hand_forward(run, inp, tmp / "b.npz", chunk)
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med["hand"] / med["distbp"]
        for k, v in med.items():
            print(f"  {k:7s} {rows / v:12,.0f} rows/s  ({v:.3f} s for {rows:,} rows, chunk {chunk:,})")
        print(f"distbp / hand rows/s: {ratio:.3f} (target >= {TARGET}) {'met' if ratio >= TARGET else 'NOT met'}")
        small = 4096 if not args.quick else 1024
        peaks = {}
        for times_chunk in (10, 20):
            path = tmp / f"mem{times_chunk}.npz"
            np.savez(path, x=rng.normal(size=(small * times_chunk, SIZES[0])).astype(np.float32))
            peaks[times_chunk] = peak_bytes(run, path, tmp / "m.npz", small)
        input_bytes = {k: small * k * SIZES[0] * 4 for k in peaks}
        growth = peaks[20] / peaks[10]
        for k in peaks:
            print(f"  input {k}x the chunk of {small:,} rows ({input_bytes[k] / 2**20:.1f} MiB): "
                  f"peak {peaks[k] / 2**20:.2f} MiB")
        print(f"peak at 20x / at 10x the chunk: {growth:.3f} (limit {MEMORY_LIMIT}) "
              f"{'met' if growth <= MEMORY_LIMIT else 'NOT met'}")
    report.update(rows=rows, chunk=chunk, rows_per_s={k: rows / v for k, v in med.items()}, ratio=ratio,
                  same_predictions=same, peak_bytes=peaks, input_bytes=input_bytes, peak_growth=growth,
                  targets={"ratio": TARGET, "peak_growth": MEMORY_LIMIT})
    return common.finish(report, args.json, args.strict, [ratio >= TARGET, growth <= MEMORY_LIMIT]) if same else 1


if __name__ == "__main__":
    sys.exit(main())
