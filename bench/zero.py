"""Would a sharded optimizer (ZeRO stage 1) speed up the step? Measured, not assumed.

    .venv/bin/mpiexec -n 2 .venv/bin/python bench/zero.py [--rounds 30] [--json PATH]

Each rank of the MLP 784-1024-1024-10 (7.45 MB of float32 gradients) either all-reduces the
whole gradient and runs Adam on the whole buffer (what distbp does), or reduce-scatters the
gradient, runs Adam on its 1/N shard, and all-gathers the parameters (ZeRO-1: the same bytes on
the wire in theory, 1/N of the optimizer work). Printed: the time of each part, and the
sharded step's sync + optimizer time over distbp's (< 1: sharding would pay). Both variants
are timed in interleaved rounds, medians, one BLAS thread, with a barrier before each call.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distbp import nn, optim  # noqa: E402

SIZES = [784, 1024, 1024, 10]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="5 rounds (a smoke run)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    rounds = 5 if args.quick else args.rounds
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    full = optim.Adam(nn.MLP(SIZES).parameters(), lr=1e-3)
    n = full.flat.numel
    counts = [n // size + (i < n % size) for i in range(size)]
    displs = [sum(counts[:i]) for i in range(size)]
    lo, hi = displs[rank], displs[rank] + counts[rank]
    # Adam over a buffer of this rank's shard size: the optimizer work a sharded rank does.
    shard_opt = optim.Adam([nn.Parameter(np.zeros(counts[rank], dtype=np.float32))], lr=1e-3)
    for opt in (full, shard_opt):
        for p in opt.flat.params:
            p.grad = np.ones(p.shape, dtype=np.float32)
    grad = np.random.default_rng(rank).standard_normal(n).astype(np.float32)
    params, shard = full.flat.data, np.empty(counts[rank], dtype=np.float32)

    def sharded_sync() -> None:
        comm.Reduce_scatter(grad, shard, counts, op=MPI.SUM)
        np.copyto(grad[lo:hi], shard)  # the optimizer reads its shard in place
        comm.Allgatherv(MPI.IN_PLACE, [params, counts, displs, MPI.FLOAT])

    parts = {"allreduce": lambda: comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM),
             "adam_full": full.step,
             "reduce_scatter_allgather": sharded_sync,
             "adam_shard": shard_opt.step}
    times: dict[str, list[float]] = {k: [] for k in parts}
    for r in range(rounds + 2):
        for name, fn in parts.items():
            comm.Barrier()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if r >= 2:  # two warm-up rounds
                times[name].append(dt)
    # The slowest rank's time is the step's: the max over ranks of each median.
    med = {k: comm.allreduce(float(np.median(v)), op=MPI.MAX) for k, v in times.items()}
    ddp = med["allreduce"] + med["adam_full"]
    zero = med["reduce_scatter_allgather"] + med["adam_shard"]
    if rank == 0:
        print(f"{size} ranks, {n:,} parameters ({4 * n / 1e6:.2f} MB of gradients), {rounds} rounds, medians (ms):")
        for k, v in med.items():
            print(f"  {k:<26} {1e3 * v:7.2f}")
        print(f"distbp (all-reduce + Adam on all): {1e3 * ddp:.2f} ms; ZeRO-1 (reduce-scatter + Adam on 1/{size} "
              f"+ all-gather): {1e3 * zero:.2f} ms; ratio {zero / ddp:.3f}, {1e3 * (ddp - zero):+.2f} ms per step "
              f"saved by sharding")
        if args.json:
            Path(args.json).write_text(json.dumps({"ranks": size, "numel": n, "median_s": med, "ratio": zero / ddp},
                                                  indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
