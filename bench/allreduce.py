"""Gradient sync: distbp's ``MPICommunicator.allreduce_sum_`` on the flat float32 gradient
buffer against raw mpi4py ``comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)`` of the same
buffer, at 2 and 4 ranks, measured in the same run; plus a size sweep of the raw Allreduce
fitted to t(bytes) = alpha + bytes / beta, the figures bench/scaling.py's projection uses.

    .venv/bin/python bench/allreduce.py                  # N = 2 and 4, about 30 s
    .venv/bin/python bench/allreduce.py --quick          # CI smoke, a few seconds
    .venv/bin/python bench/allreduce.py --json out.json  # also write the figures as JSON

The script launches itself: ``python bench/allreduce.py`` runs ``mpiexec -n N python
bench/allreduce.py --worker ...`` for each N (the mpiexec next to the interpreter, as the
mpich wheel installs it), and the ranks do the timing: a barrier, then interleaved rounds of
K calls of each variant (the order rotates every round), every call timed with
perf_counter; the mean call time of a round is taken as the maximum over the ranks (a small
Allreduce MAX) and the median over rounds is reported. The buffer is refilled with the same
small random values before each turn (untimed), so sums never overflow nor go denormal.

Variants: ``raw`` (mpi4py, as a user of MPI writes it), ``distbp`` (the communicator the
Trainer calls) and ``raw-again`` (raw once more: the A/A control that shows how far two
identical measurements drift apart on this machine, the noise floor of the ratio).
The exit status is 0 whatever the timings unless --strict is given.
"""

from __future__ import annotations

import os

# One BLAS thread per rank, set before numpy loads (the sum inside Allreduce is MPICH's own
# loop, but the ranks must not start BLAS pools that fight for the cores).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from common import BUSY_CORES, CpuWatch, finish, machine_info, mpiexec_path, rotation  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

MLP_SIZES = [784, 1024, 1024, 10]
MLP_FLOATS = sum(i * o + o for i, o in zip(MLP_SIZES[:-1], MLP_SIZES[1:]))  # 1,863,690
MLP_BYTES = 4 * MLP_FLOATS                                                  # 7,454,760 = 7.11 MiB
LITERAL_BYTES = 7_100_000                                                   # "7.1 MB" read as 7.1e6 bytes
SYNC_SIZES = {"MLP 784-1024-1024-10": MLP_BYTES, "7.1e6 bytes": LITERAL_BYTES}
SWEEP_BYTES = [4 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, MLP_BYTES]
RANKS = (2, 4)
TARGET = 0.95  # distbp must reach this fraction of raw Allreduce's speed
NOISY_SPREAD = 0.10


# -- shared with bench/scaling.py -----------------------------------------------------------
def print_machine(info: dict) -> None:
    load = info.get("loadavg_at_start")
    load_s = "unknown" if load is None else ", ".join(f"{v:.2f}" for v in load)
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
          f"python {info['python']}, numpy {info['numpy']}, BLAS {info['blas']} "
          f"({info['blas_threads']} thread per rank)")
    print(f"mpi: mpi4py {info['mpi4py']}, launcher {mpiexec_path()}; load average at start {load_s}")
    print(f"distbp: {info['code']}")


def launch(script: Path, n: int, worker_args: list[str], timeout: float, mpiexec_args: list[str] = ()) -> dict:
    """Run ``script --worker ...`` under ``mpiexec -n n``; rank 0 writes its figures as JSON
    to a temporary file, which this returns. A failed job ends the benchmark (exit 1)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "worker.json"
        cmd = [str(mpiexec_path()), *mpiexec_args, "-n", str(n), sys.executable, str(script), "--worker",
               "--out", str(out), *worker_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   MKL_NUM_THREADS="1")
        try:
            with CpuWatch() as watch:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{' '.join(cmd)}: no result after {timeout:.0f} s") from None
        if res.returncode != 0 or not out.is_file():
            sys.stderr.write(res.stdout + res.stderr)
            raise SystemExit(f"{' '.join(cmd)}: exit status {res.returncode}")
        result = json.loads(out.read_text())
        result["wall_s"] = watch.result["wall_s"]
        result["other_load"] = watch.result
        return result


def launch_retrying(script: Path, n: int, worker_args: list[str], timeout: float, mpiexec_args: list[str],
                    retries: int) -> dict:
    """``launch``, run again (up to ``retries`` times) while other processes kept more than
    BUSY_CORES cores busy during the job; the least disturbed attempt is kept."""
    attempts = []
    for attempt in range(retries + 1):
        res = launch(script, n, worker_args, timeout, mpiexec_args)
        attempts.append(res)
        if res["other_load"]["other_cores"] <= BUSY_CORES:
            break
        if attempt < retries:
            print(load_line(n, res) + ": discarded, running it again", flush=True)
    best = min(attempts, key=lambda r: r["other_load"]["other_cores"])
    best["attempts"] = len(attempts)
    best["discarded_other_cores"] = [r["other_load"]["other_cores"] for r in attempts if r is not best]
    return best


def load_line(n: int | str, res: dict) -> str:
    o = res["other_load"]
    return (f"  ran {n} rank(s) in {o['wall_s']:.1f} s; other processes kept {o['other_cores']:.2f} cores busy "
            f"meanwhile, hypervisor steal {o['steal_pct']:.1f}%")


def busy_warning(ranks: dict) -> str | None:
    busy = [f"{o['other_cores']:.2f} cores during the {n}-rank job" for n, res in ranks.items()
            for o in [res["other_load"]] if o["other_cores"] > BUSY_CORES]
    if not busy:
        return None
    return ("BUSY   other processes ran on this machine meanwhile (" + "; ".join(busy)
            + "): the ranks shared the cores with them; rerun on a quiet machine before trusting the verdicts")


def fit_alpha_beta(nbytes: list[int], seconds: list[float]) -> dict:
    """Least squares t = alpha + bytes / beta on relative residuals (each point weighted by
    1/t, so the 4 KB latency counts as much as the 7 MB transfer). alpha in seconds, beta in
    bytes per second."""
    b = np.asarray(nbytes, dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    A = np.stack([np.ones_like(b), b], axis=1) / t[:, None]
    (alpha, inv_beta), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    model = alpha + b * inv_beta
    return {"alpha_s": float(alpha), "beta_Bps": float(1.0 / inv_beta) if inv_beta > 0 else float("inf"),
            "residual_pct": [float(100.0 * (m - x) / x) for m, x in zip(model, t)],
            "bytes": [int(v) for v in nbytes], "seconds": [float(v) for v in seconds]}


def ring_time(n: int, nbytes: float, alpha_link: float, beta: float) -> float:
    """Ring all-reduce of ``nbytes`` over n ranks: 2(n-1) steps, each moving nbytes/n and
    paying the link latency: 2(n-1)/n * bytes / beta + 2(n-1) * alpha."""
    return 2.0 * (n - 1) / n * nbytes / beta + 2.0 * (n - 1) * alpha_link


def link_params(fit: dict) -> tuple[float, float]:
    """(alpha_link, beta) of the ring model from a fit at 2 ranks: there the ring model is
    bytes/beta + 2 alpha_link, so beta is the fitted beta and alpha_link half the fitted alpha."""
    return fit["alpha_s"] / 2.0, fit["beta_Bps"]


def sweep(comm, MPI, sizes: list[int], rounds: int, calls_for) -> dict[int, float]:
    """Raw in-place Allreduce SUM at each size: per round the mean call time of
    ``calls_for(bytes)`` calls, max over ranks, median over rounds (seconds)."""
    rng = np.random.default_rng(1 + comm.Get_rank())
    bufs = {s: (rng.standard_normal(s // 4, dtype=np.float32) * 1e-3) for s in sizes}
    work = {s: np.empty_like(v) for s, v in bufs.items()}
    per_round = np.zeros((rounds, len(sizes)))
    clock = time.perf_counter
    for r in range(rounds):
        order = list(range(len(sizes)))
        order = order if r % 2 == 0 else order[::-1]
        for j in order:
            s = sizes[j]
            buf = work[s]
            buf[...] = bufs[s]
            comm.Barrier()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)  # untimed: back in step after the barrier
            buf[...] = bufs[s]
            k = calls_for(s)
            total = 0.0
            for _ in range(k):
                t0 = clock()
                comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
                total += clock() - t0
            per_round[r, j] = total / k
    comm.Allreduce(MPI.IN_PLACE, per_round, op=MPI.MAX)
    return {s: float(np.median(per_round[:, j])) for j, s in enumerate(sizes)}


def sweep_calls(quick: bool):
    def calls_for(nbytes: int) -> int:
        if nbytes <= 64 << 10:
            return 20 if quick else 100
        if nbytes <= 1 << 20:
            return 5 if quick else 20
        return 3 if quick else 10
    return calls_for


# -- the worker (one rank under mpiexec) ----------------------------------------------------
def worker(args) -> int:
    from mpi4py import MPI

    from distbp.comm import MPICommunicator

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    dist = MPICommunicator()

    def raw(buf):
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

    def distbp(buf):
        dist.allreduce_sum_(buf)

    variants = {"raw": raw, "distbp": distbp, "raw-again": raw}
    names = list(variants)
    rng = np.random.default_rng(7 + rank)
    result: dict = {"ranks": size, "sync": {}}
    clock = time.perf_counter
    for label, nbytes in SYNC_SIZES.items():
        template = rng.standard_normal(nbytes // 4, dtype=np.float32) * 1e-3
        buf = np.empty_like(template)
        for _ in range(args.warmup):
            for name in names:
                buf[...] = template
                variants[name](buf)
        per_round = np.zeros((args.rounds, len(names)))
        calls_all = {n: [] for n in names}
        for r in range(args.rounds):
            for name in rotation(names, r):
                fn, j = variants[name], names.index(name)
                buf[...] = template
                comm.Barrier()
                fn(buf)  # untimed: every rank leaves the barrier at its own moment
                buf[...] = template
                times = []
                for _ in range(args.calls):
                    t0 = clock()
                    fn(buf)
                    times.append(clock() - t0)
                per_round[r, j] = sum(times) / len(times)
                calls_all[name].extend(times)
        comm.Allreduce(MPI.IN_PLACE, per_round, op=MPI.MAX)
        med = {n: float(np.median(per_round[:, j])) for j, n in enumerate(names)}
        quart = {n: [float(q) for q in np.percentile(per_round[:, j], [25, 75])] for j, n in enumerate(names)}
        result["sync"][label] = {
            "bytes": nbytes, "median_s": med, "quartiles_s": quart,
            "spread": max((q[1] - q[0]) / med[n] for n, q in quart.items()),
            "rounds_s": {n: per_round[:, j].tolist() for j, n in enumerate(names)},
            "rank0_call_median_s": {n: float(np.median(v)) for n, v in calls_all.items()}}
    # Correctness of what was timed: distbp's call really sums over the ranks.
    check = np.full(1000, float(rank + 1), dtype=np.float32)
    dist.allreduce_sum_(check)
    result["sum_ok"] = bool(np.all(check == size * (size + 1) / 2))
    result["sweep_s"] = {str(k): v for k, v in
                         sweep(comm, MPI, SWEEP_BYTES, args.sweep_rounds, sweep_calls(args.quick)).items()}
    result["mpi_library"] = " ".join(MPI.Get_library_version().strip().splitlines()[0].split())
    if rank == 0:
        Path(args.out).write_text(json.dumps(result))
    return 0


# -- the driver -----------------------------------------------------------------------------
def fmt_bytes(n: int) -> str:
    for unit, div in (("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            return f"{n / div:.4g} {unit}"
    return f"{n} B"


def busbw(n: int, nbytes: int, seconds: float) -> float:
    """nccl-tests' bus bandwidth, GB/s: 2(n-1)/n * bytes / time."""
    return 2.0 * (n - 1) / n * nbytes / seconds / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=lambda s: [int(v) for v in s.split(",")], default=list(RANKS),
                    help="comma-separated rank counts (default 2,4)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds per size (default 50; --quick 4)")
    ap.add_argument("--calls", type=int, help="timed calls per variant per round (default 10; --quick 3)")
    ap.add_argument("--warmup", type=int, help="untimed calls per variant first (default 5; --quick 2)")
    ap.add_argument("--sweep-rounds", type=int, help="rounds of the size sweep (default 15; --quick 3)")
    ap.add_argument("--retries", type=int, help="rerun a job up to this many times when other processes kept "
                    f"more than {BUSY_CORES} cores busy during it (default 2; --quick 0)")
    ap.add_argument("--quick", action="store_true", help="CI smoke: few rounds (explicit flags still win)")
    ap.add_argument("--bind", action="store_true", help="pass '-bind-to core' to mpiexec")
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the target fails")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    defaults = dict(rounds=4, calls=3, warmup=2, sweep_rounds=3, retries=0) if args.quick else \
        dict(rounds=50, calls=10, warmup=5, sweep_rounds=15, retries=2)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.rounds < 1 or args.calls < 1 or args.warmup < 0 or args.sweep_rounds < 1 or args.retries < 0:
        ap.error("--rounds, --calls and --sweep-rounds must be >= 1, --warmup and --retries >= 0")
    if args.worker:
        return worker(args)

    info = machine_info()
    print("bench/allreduce.py: gradient sync of one flat float32 buffer, distbp "
          "MPICommunicator.allreduce_sum_ vs raw mpi4py comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)")
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print_machine(info)
    print(f"buffers: the MLP 784-1024-1024-10's gradient, {MLP_FLOATS:,} float32 = {MLP_BYTES:,} bytes "
          f"({MLP_BYTES / 2 ** 20:.2f} MiB, the issue's \"7.1 MB\"), and {LITERAL_BYTES:,} bytes "
          f"({LITERAL_BYTES // 4:,} float32, \"7.1 MB\" read as 7.1e6 bytes)")
    print(f"timing: {args.warmup} warm-up calls per variant, then {args.rounds} interleaved rounds of "
          f"{args.calls} calls per variant (order rotating), each turn after a barrier and one untimed "
          f"call; per round the mean call time, max over ranks; median over rounds")
    cores = info["usable_cores"] or 1
    script = Path(__file__).resolve()
    worker_args = ["--rounds", str(args.rounds), "--calls", str(args.calls), "--warmup", str(args.warmup),
                   "--sweep-rounds", str(args.sweep_rounds)] + (["--quick"] if args.quick else [])
    mpiexec_args = ["-bind-to", "core"] if args.bind else []
    report: dict = {"machine": info, "command": sys.argv, "args": {k: v for k, v in vars(args).items()
                                                                    if k not in ("worker", "out")},
                    "ranks": {}, "targets": {}}
    for n in args.ranks:
        res = launch_retrying(script, n, worker_args, 120 if args.quick else 900, mpiexec_args, args.retries)
        res["oversubscribed"] = n > cores
        report["ranks"][str(n)] = res
        print(load_line(n, res), flush=True)
    report["machine"]["mpi_library"] = next(iter(report["ranks"].values()))["mpi_library"]
    print(f"MPI library: {report['machine']['mpi_library']}")
    print()

    header = (f"{'N':>2} {'buffer':<22} {'bytes':>10} {'raw ms':>8} {'distbp ms':>10} {'raw-again ms':>13} "
              f"{'distbp % of raw':>16} {'A/A % of raw':>13} {'busbw GB/s':>11} {'spread':>7}")
    print(header)
    print("-" * len(header))
    verdicts = []
    for n, res in report["ranks"].items():
        for label, row in res["sync"].items():
            med = row["median_s"]
            row["distbp_pct_of_raw"] = 100.0 * med["raw"] / med["distbp"]
            row["aa_pct_of_raw"] = 100.0 * med["raw"] / med["raw-again"]
            row["busbw_GBps"] = {k: busbw(int(n), row["bytes"], v) for k, v in med.items()}
            print(f"{n:>2} {label:<22} {row['bytes']:>10,} {1e3 * med['raw']:8.3f} {1e3 * med['distbp']:10.3f} "
                  f"{1e3 * med['raw-again']:13.3f} {row['distbp_pct_of_raw']:15.1f}% {row['aa_pct_of_raw']:12.1f}% "
                  f"{row['busbw_GBps']['raw']:11.2f} {100 * row['spread']:6.1f}%")
        if res["oversubscribed"]:
            print(f"   N={n}: {n} ranks on {cores} cores, oversubscribed: MPICH polls while it waits, so the "
                  "ranks take turns on the cores")
    print("(% of raw speed = raw time / distbp time; A/A = raw / raw-again, the same call measured twice: "
          "its distance from 100% is the noise floor of the ratio)")

    print()
    print("raw Allreduce size sweep (median over rounds of the per-round mean call, max over ranks) and "
          "the least-squares fit t = alpha + bytes / beta (relative residuals)")
    sizes = SWEEP_BYTES
    header = f"{'N':>2} " + " ".join(f"{fmt_bytes(s):>11}" for s in sizes) + f" {'alpha us':>9} {'beta GB/s':>10}"
    print(header)
    print("-" * len(header))
    report["fit"] = {}
    for n, res in report["ranks"].items():
        t = [res["sweep_s"][str(s)] for s in sizes]
        fit = fit_alpha_beta(sizes, t)
        report["fit"][n] = fit
        print(f"{n:>2} " + " ".join(f"{1e6 * v:8.1f} us" for v in t)
              + f" {1e6 * fit['alpha_s']:9.2f} {fit['beta_Bps'] / 1e9:10.2f}")
        print(f"{'':>2} " + " ".join(f"{r:+10.1f}%" for r in fit["residual_pct"]) + "   (fit residuals)")
    if "2" in report["fit"]:
        a_link, beta = link_params(report["fit"]["2"])
        report["ring_projection"] = {"alpha_link_s": a_link, "beta_Bps": beta, "bytes": MLP_BYTES,
                                     "seconds": {str(k): ring_time(k, MLP_BYTES, a_link, beta) for k in (2, 4, 8, 16)}}
        print()
        print(f"ring all-reduce model from the N=2 fit (PROJECTION, not a measurement): alpha_link = alpha/2 = "
              f"{1e6 * a_link:.2f} us, beta = {beta / 1e9:.2f} GB/s per rank; the MLP gradient "
              f"({MLP_BYTES:,} bytes) would take "
              + ", ".join(f"{1e3 * v:.2f} ms at {k} ranks" for k, v in report["ring_projection"]["seconds"].items()
                          if int(k) > 2)
              + f" (measured at 2: {1e3 * report['ranks']['2']['sweep_s'][str(MLP_BYTES)]:.2f} ms)")
        print("  assumes every rank keeps the per-rank copy bandwidth measured here while all N copy at once; "
              "bench/scaling.py turns this into a weak-scaling projection")

    print()
    noisy = [f"N={n} {label}: {100 * row['spread']:.0f}%" for n, res in report["ranks"].items()
             for label, row in res["sync"].items() if row["spread"] > NOISY_SPREAD]
    if noisy:
        print(f"NOISY  spread above {100 * NOISY_SPREAD:.0f}% ({'; '.join(noisy)}): the machine was busy; "
              "rerun before trusting the verdicts below")
    report["noisy"] = bool(noisy)
    busy = busy_warning(report["ranks"])
    report["busy"] = busy is not None
    if busy:
        print(busy)
    for n, res in report["ranks"].items():
        if not res["sum_ok"]:
            print(f"FAIL  N={n}: distbp's allreduce_sum_ did not return the sum over ranks")
            verdicts.append(False)
        row = res["sync"]["MLP 784-1024-1024-10"]
        ok = row["distbp_pct_of_raw"] >= 100 * TARGET
        verdicts.append(ok)
        report["targets"][f"distbp/raw@{n}"] = {"limit_pct": 100 * TARGET, "value_pct": row["distbp_pct_of_raw"],
                                                "ok": ok}
        over = " (oversubscribed)" if res["oversubscribed"] else ""
        print(f"{'PASS' if ok else 'FAIL'}  N={n}{over}: distbp sync at {row['distbp_pct_of_raw']:.1f}% of raw "
              f"Allreduce speed (target >= {100 * TARGET:.0f}%; A/A control {row['aa_pct_of_raw']:.1f}%)")
    return finish(report, args.json, args.strict, verdicts)


if __name__ == "__main__":
    sys.exit(main())
