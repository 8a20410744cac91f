"""Overlapped (bucketed, nonblocking) gradient all-reduce vs one blocking Allreduce per step.

Runs real distbp training steps of the MLP 784-1024-1024-10 (ReLU, cross-entropy, Adam,
float32, one BLAS thread per rank) under mpiexec with 2 ranks (and 4 with --ranks), in
interleaved rounds so drift on a shared machine hits both variants alike, and prints the
median step time of each and the ratio overlapped / blocking (< 1 means overlap pays).

    python bench/overlap.py [--quick] [--ranks 2 4] [--json PATH]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SIZES = [784, 1024, 1024, 10]


def worker(batch: int, rounds: int, steps: int, buckets_mb: list[float]) -> None:
    from mpi4py import MPI

    import distbp as db
    import distbp.functional as F
    from distbp import nn, optim
    from distbp.comm import MPICommunicator
    from distbp.comm.buckets import BucketedAllreduce

    comm = MPICommunicator()
    db.manual_seed(0)
    model = nn.MLP(SIZES)
    opt = optim.Adam(model.parameters(), lr=1e-4)
    flat = opt.flat
    rng = np.random.default_rng(comm.rank)
    x = db.tensor(rng.standard_normal((batch, SIZES[0])))
    y = rng.integers(0, SIZES[-1], batch)
    scale = 1.0 / (batch * comm.size)
    variants = {"blocking": None}
    for mb in buckets_mb:
        variants[f"overlap {mb:g} MB buckets"] = BucketedAllreduce(comm, flat.grad, flat.offsets, int(mb * 2**20))

    def step(reducer) -> None:
        opt.zero_grad()
        flat.on_grad_ready = None if reducer is None else reducer.ready
        (F.cross_entropy(model(x), y, reduction="sum") * scale).backward()
        g = flat.flat_grad()
        reducer.finish() if reducer is not None else comm.allreduce_sum_(g)
        opt.step()

    for reducer in variants.values():
        for _ in range(2):
            step(reducer)
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            reducer = variants[name]
            for _ in range(steps):
                comm.barrier()
                t0 = time.perf_counter()
                step(reducer)
                dt = np.array([time.perf_counter() - t0])
                MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, dt, op=MPI.MAX)  # the slowest rank sets the pace
                times[name].append(float(dt[0]))
    if comm.rank == 0:
        print(json.dumps({k: float(np.median(v)) for k, v in times.items()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ranks", type=int, nargs="+", default=[2])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 512], help="per-rank batch sizes")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        batch, rounds, steps, buckets = args.worker
        worker(int(batch), int(rounds), int(steps), [float(b) for b in buckets.split(",")])
        return
    rounds, steps = (2, 3) if args.quick else (6, 8)
    mpiexec = Path(sys.executable).parent / "mpiexec"
    print(f"overlap benchmark: MLP {'-'.join(map(str, SIZES))}, Adam, 1 BLAS thread per rank, "
          f"{os.cpu_count()} cores; median of {rounds * steps} steps per variant, interleaved")
    results = []
    for n in args.ranks:
        for batch in args.batches:
            cmd = [str(mpiexec), "-n", str(n), sys.executable, __file__, "--worker", str(batch), str(rounds),
                   str(steps), "1,4"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True).stdout
            medians = json.loads(out.strip().splitlines()[-1])
            base = medians["blocking"]
            for name, t in medians.items():
                ratio = t / base
                print(f"ranks {n}  batch/rank {batch:4d}  {name:26s} {t * 1e3:8.2f} ms/step  "
                      f"{ratio:5.3f} x blocking")
                results.append({"ranks": n, "batch_per_rank": batch, "variant": name, "step_s": t,
                                "vs_blocking": ratio})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
