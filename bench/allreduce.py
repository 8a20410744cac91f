"""Gradient sync: distbp's ``MPICommunicator.allreduce_sum_`` against raw mpi4py ``Allreduce`` on
the same buffer at 2 and 4 ranks, with an A/A control, and a raw size sweep fitted to alpha + bytes /
beta (bench/README.md). Target: distbp at >= 95% of raw's speed."""

from __future__ import annotations

import os

# One BLAS thread per rank, set before numpy loads: the ranks must not start BLAS pools that
# fight for the cores (the sum inside Allreduce is MPICH's own loop).
os.environ.update(dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1"))

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402  (bench/ is on sys.path)

MLP_BYTES = 4 * sum(i * o + o for i, o in zip(common.MLP[:-1], common.MLP[1:]))  # 7,454,760 = 7.11 MiB
SYNC_SIZES = {"MLP 784-1024-1024-10": MLP_BYTES, "7.1e6 bytes": 7_100_000}  # the "7.1 MB", both readings
SWEEP_BYTES = [4 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, MLP_BYTES]
TARGET = 0.95  # distbp must reach this fraction of raw Allreduce's speed


def fit_alpha_beta(nbytes: list[int], seconds: list[float]) -> dict:
    """Least squares t = alpha + bytes / beta on relative residuals (each point weighted by
    1/t, so the 4 KB latency counts as much as the 7 MB transfer); seconds, bytes per second."""
    b, t = np.asarray(nbytes, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    A = np.stack([np.ones_like(b), b], axis=1) / t[:, None]
    (alpha, inv_beta), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    model = alpha + b * inv_beta
    return {"alpha_s": float(alpha), "beta_Bps": float(1.0 / inv_beta) if inv_beta > 0 else float("inf"),
            "residual_pct": [float(100.0 * (m - x) / x) for m, x in zip(model, t)],
            "bytes": [int(v) for v in nbytes], "seconds": [float(v) for v in seconds]}


def ring_time(n: int, nbytes: float, alpha_link: float, beta: float) -> float:
    """Ring all-reduce over n ranks: 2(n-1) steps each moving nbytes/n and paying the link latency."""
    return 2.0 * (n - 1) / n * nbytes / beta + 2.0 * (n - 1) * alpha_link


def link_params(fit: dict) -> tuple[float, float]:
    """(alpha_link, beta) of the ring model from a fit at 2 ranks, where the ring model is
    bytes/beta + 2 alpha_link: beta as fitted, alpha_link half the fitted alpha."""
    return fit["alpha_s"] / 2.0, fit["beta_Bps"]


def interleaved_calls(comm, MPI, turns: dict, rounds: int, order) -> np.ndarray:
    """[round, turn]: the mean call time of each turn ({name: (fn, buf, template, calls)}) in
    each round (turns in ``order(names, round)``), max over ranks. A turn refills its buffer
    from its template (untimed, so sums never overflow nor go denormal), passes a barrier, makes
    one untimed call (every rank leaves the barrier at its own moment), refills, times its calls."""
    names, clock = list(turns), time.perf_counter
    per_round = np.zeros((rounds, len(names)))
    for r in range(rounds):
        for name in order(names, r):
            fn, buf, template, calls = turns[name]
            buf[...] = template
            comm.Barrier()
            fn(buf)
            buf[...] = template
            total = 0.0
            for _ in range(calls):
                t0 = clock()
                fn(buf)
                total += clock() - t0
            per_round[r, names.index(name)] = total / calls
    comm.Allreduce(MPI.IN_PLACE, per_round, op=MPI.MAX)
    return per_round


def sweep(comm, MPI, sizes: list[int], rounds: int, quick: bool) -> dict[str, float]:
    """Raw in-place Allreduce SUM at each size (more calls for small sizes), the order reversed
    every other round: the median over rounds, by size (seconds)."""
    rng = np.random.default_rng(1 + comm.Get_rank())
    bufs = {s: (rng.standard_normal(s // 4, dtype=np.float32) * 1e-3) for s in sizes}
    calls = [(64 << 10, 20, 100), (1 << 20, 5, 20), (float("inf"), 3, 10)]  # up to bytes: --quick, else
    turns = {s: (lambda buf: comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM), np.empty_like(t), t,
                 next(q if quick else f for top, q, f in calls if s <= top)) for s, t in bufs.items()}
    per_round = interleaved_calls(comm, MPI, turns, rounds, lambda names, r: names if r % 2 == 0 else names[::-1])
    return {str(s): float(np.median(per_round[:, j])) for j, s in enumerate(sizes)}


def time_sync(comm, MPI, variants: dict, template: np.ndarray, args) -> dict:
    """``args.warmup`` calls of each variant, then ``args.rounds`` interleaved rounds
    (``common.rotation``) of ``args.calls`` timed calls of each on one buffer: the median over
    rounds, quartiles and spread."""
    buf = np.empty_like(template)
    for _ in range(args.warmup):
        for fn in variants.values():
            buf[...] = template
            fn(buf)
    names = list(variants)
    per_round = interleaved_calls(comm, MPI, {n: (fn, buf, template, args.calls) for n, fn in variants.items()},
                                  args.rounds, common.rotation)
    med = {n: float(np.median(per_round[:, j])) for j, n in enumerate(names)}
    quart = {n: [float(q) for q in np.percentile(per_round[:, j], [25, 75])] for j, n in enumerate(names)}
    return {"bytes": template.nbytes, "median_s": med, "quartiles_s": quart,
            "spread": max((q[1] - q[0]) / med[n] for n, q in quart.items()),
            "rounds_s": {n: per_round[:, j].tolist() for j, n in enumerate(names)}}


def worker(args) -> int:
    from mpi4py import MPI

    from distbp.comm import MPICommunicator

    comm, dist = MPI.COMM_WORLD, MPICommunicator()
    rank, size = comm.Get_rank(), comm.Get_size()

    def raw(buf):
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

    variants = {"raw": raw, "distbp": dist.allreduce_sum_, "raw-again": raw}
    rng = np.random.default_rng(7 + rank)
    result: dict = {"ranks": size, "sync": {label: time_sync(comm, MPI, variants, rng.standard_normal(
        nbytes // 4, dtype=np.float32) * 1e-3, args) for label, nbytes in SYNC_SIZES.items()}}
    check = np.full(1000, float(rank + 1), dtype=np.float32)  # what was timed really sums over the ranks
    dist.allreduce_sum_(check)
    result["sum_ok"] = bool(np.all(check == size * (size + 1) / 2))
    result["sweep_s"] = sweep(comm, MPI, SWEEP_BYTES, args.sweep_rounds, args.quick)
    result["mpi_library"] = " ".join(MPI.Get_library_version().strip().splitlines()[0].split())
    if rank == 0:
        Path(args.out).write_text(json.dumps(result))
    return 0


def analyse(report: dict) -> None:
    """Per N: each buffer's ratios and bus bandwidth (2(N-1)/N bytes / time, nccl-tests') and the
    size sweep's fit, printed."""
    print(f"{'N':>2} {'buffer':<22} {'raw ms':>8} {'distbp ms':>10} {'raw-again ms':>13} {'distbp % of raw':>16} "
          f"{'A/A % of raw':>13} {'busbw GB/s':>11} {'spread':>7}  (% of raw speed = raw time / distbp time)")
    report["fit"] = {}
    for n, res in report["ranks"].items():
        for label, row in res["sync"].items():
            med = row["median_s"]
            row["distbp_pct_of_raw"] = 100.0 * med["raw"] / med["distbp"]
            row["aa_pct_of_raw"] = 100.0 * med["raw"] / med["raw-again"]
            row["busbw_GBps"] = {k: 2.0 * (int(n) - 1) / int(n) * row["bytes"] / v / 1e9 for k, v in med.items()}
            print(f"{n:>2} {label:<22} {1e3 * med['raw']:8.3f} {1e3 * med['distbp']:10.3f} "
                  f"{1e3 * med['raw-again']:13.3f} {row['distbp_pct_of_raw']:15.1f}% {row['aa_pct_of_raw']:12.1f}% "
                  f"{row['busbw_GBps']['raw']:11.2f} "
                  f"{100 * row['spread']:6.1f}%" + ("  oversubscribed" if res["oversubscribed"] else ""))
        fit = report["fit"][n] = fit_alpha_beta(SWEEP_BYTES, [res["sweep_s"][str(s)] for s in SWEEP_BYTES])
        print(f"   N={n} raw sweep: " + ", ".join(f"{s:,} B {1e6 * res['sweep_s'][str(s)]:.1f} us" for s in SWEEP_BYTES)
              + f"; fit alpha {1e6 * fit['alpha_s']:.2f} us, beta {fit['beta_Bps'] / 1e9:.2f} GB/s")


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__, worker=True)
    ap.add_argument("--ranks", type=lambda s: [int(v) for v in s.split(",")], default=[2, 4], help="rank counts")
    args = common.parse(ap, argv, rounds=("interleaved rounds per size", 50, 4), calls=("timed calls per variant "
                        "and round", 10, 3), warmup=("untimed calls per variant first", 5, 2), sweep_rounds=(
                        "rounds of the size sweep", 15, 3), retries=("reruns of a job while others were busy", 2, 0))
    if args.worker:
        return worker(args)
    info = common.header("bench/allreduce.py: gradient sync of one flat float32 buffer, distbp "
                         "MPICommunicator.allreduce_sum_ vs raw mpi4py comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)")
    report: dict = {"machine": info, "command": sys.argv, "args": vars(args), "ranks": {}}
    for n in args.ranks:  # the ranks parse the same command line
        res = common.launch(Path(__file__).resolve(), n, sys.argv[1:] if argv is None else argv,
                            120 if args.quick else 900, args.retries, args.hostfile)
        report["ranks"][str(n)] = {**res, "oversubscribed": n > info["usable_cores"] and not args.hostfile}
    info["mpi_library"] = next(iter(report["ranks"].values()))["mpi_library"]
    analyse(report)
    report["same_math"] = all(r["sum_ok"] for r in report["ranks"].values())
    common.flag_noise(report, {f"N={n} {k}": r["spread"] for n, res in report["ranks"].items()
                               for k, r in res["sync"].items()},
                      {f"the {n}-rank job": r["other_cores"] for n, r in report["ranks"].items()})
    for n, res in report["ranks"].items():
        row = res["sync"]["MLP 784-1024-1024-10"]
        pct = row["distbp_pct_of_raw"]
        common.judge(report, f"distbp/raw@{n}", pct >= 100 * TARGET and res["sum_ok"],
                     f"N={n}: distbp sync at {pct:.1f}% of raw Allreduce speed (target >= {100 * TARGET:.0f}%; A/A "
                     f"control {row['aa_pct_of_raw']:.1f}%; sum over ranks {'right' if res['sum_ok'] else 'WRONG'})",
                     limit_pct=100 * TARGET, value_pct=pct)
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
