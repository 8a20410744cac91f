"""ZeroMQ parameter server vs MPI all-reduce: samples/s of real ``distbp-train`` runs on one host at 2
and 4 workers, interleaved (bench/README.md). Target: ZeroMQ over ipc:// (what launch/zmq-local
uses on one host, as MPI uses shared memory) at >= 80% of MPI's samples/s; over TCP loopback
(what compose and other hosts use) reported beside it."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: E402  (bench/ is on sys.path)

TARGET = 0.80  # ZeroMQ at >= 80% of MPI's throughput
NUMEL = sum(a * b + b for a, b in zip(common.MLP, common.MLP[1:]))


def config(samples: int, global_batch: int, steps: int) -> list[str]:
    return ["data.name=synthetic", f"data.samples={samples}", "data.features=784", "data.classes=10",
            f"model.sizes=[{','.join(map(str, common.MLP))}]", f"train.global_batch={global_batch}",
            f"train.max_steps={steps}", "train.epochs=1000", "train.log_every=1", "train.eval_every=1000000",
            "train.progress=plain", "checkpoint.every=1000000", "checkpoint.keep=1", "comm.threads=1", "seed=1"]


def commands(kind: str, n: int, overrides: list[str], d: Path) -> list[list[str]]:
    """The processes of one run: MPI's mpiexec, or ZeroMQ's server and its N workers."""
    cli = [sys.executable, "-m", "distbp.cli"]
    if kind == "mpi":
        return [[str(common.mpiexec_path()), "-n", str(n), *cli, *common.sets(overrides), "--run-dir", str(d / "run")]]
    endpoint = f"ipc://{d / 'ps.ipc'}" if kind == "zmq" else common.free_endpoint()
    both = [*cli, *common.sets([*overrides, "comm.backend=zmq", f"comm.endpoint={endpoint}",
                                "comm.join_timeout_s=120"])]
    server = [*both, "--set", "comm.role=server", "--set", f"comm.workers={n}", "--run-dir", str(d / "run")]
    return [server] + [[*both, "--set", "comm.role=worker"] for _ in range(n)]


def measure(cmds: list[list[str]], d: Path, timeout: float) -> dict:
    """Run the processes to their end; the per-step samples/s and the machine's other load."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = []
    try:
        with common.CpuWatch() as watch:
            for i, cmd in enumerate(cmds):
                with open(d / f"p{i}.out", "w") as out, open(d / f"p{i}.err", "w") as err:
                    procs.append(subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True))
            deadline = time.monotonic() + timeout
            for i, p in enumerate(procs):
                try:
                    code = p.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise SystemExit(f"bench/ps.py: {d} still running after {timeout:g} s") from None
                if code != 0:
                    raise SystemExit(f"bench/ps.py: process {i} of {d.name} exited {code}:\n"
                                     + (d / f"p{i}.err").read_text()[-2000:])
    finally:
        for p in procs:
            common.kill_group(p)
    rates = [json.loads(line)["samples_per_s"] for line in (d / "run" / "metrics.jsonl").read_text().splitlines()
             if '"samples_per_s"' in line]
    return {"dir": str(d), "rates": rates, "wall_s": watch.result["wall_s"], "other_cores": watch.result["other_cores"]}


def summarize(runs: list[dict], warmup: int, batch: int) -> dict:
    steps = [r for run in runs for r in run["rates"][warmup:]]
    q = statistics.quantiles(steps, n=4) if len(steps) >= 2 else [steps[0]] * 3
    med = statistics.median(steps)
    return {"median_samples_per_s": med, "step_ms": 1e3 * batch / med, "steps": len(steps),
            "iqr_pct": 100 * (q[2] - q[0]) / med,
            "per_run_median": [statistics.median(r["rates"][warmup:]) for r in runs],
            "other_cores_max": max(r["other_cores"] for r in runs)}


def run_all(args, kinds: tuple[str, ...]) -> dict[int, dict[str, list[dict]]]:
    """Every round runs every kind for every N, the order of the kinds flipping every round;
    each run through ``common.least_disturbed``."""
    overrides, work = config(args.samples, args.global_batch, args.steps), Path(tempfile.mkdtemp(prefix="distbp-ps-"))
    runs: dict[int, dict[str, list[dict]]] = {n: {k: [] for k in kinds} for n in args.workers}
    count = [0]

    def run(kind: str, n: int) -> dict:
        count[0] += 1
        d = work / f"{count[0]:02d}-{kind}{n}"
        d.mkdir()
        return measure(commands(kind, n, overrides, d), d, 300 if args.quick else 900)
    try:
        for r in range(args.rounds):
            for n in args.workers:
                for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                    res = common.least_disturbed(lambda: run(kind, n), args.retries)
                    runs[n][kind].append(res)
                    print(f"  round {r + 1} N={n} {kind:<7}: {statistics.median(res['rates'][args.warmup:]):9,.0f} "
                          f"samples/s, {res['wall_s']:.1f} s wall, other processes kept {res['other_cores']:.2f} cores "
                          f"busy ({res['attempts']} attempt(s))", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--workers", type=lambda s: [int(v) for v in s.split(",")], default=[2, 4],
                    help="comma-separated worker counts (default 2,4)")
    args = common.parse(ap, argv, steps=("steps per run", 45, 8), warmup=("steps dropped at each run's start", 5, 2),
                        rounds=("interleaved rounds", 2, 1), samples=("synthetic samples", 8192, 2048),
                        global_batch=("global batch for every N", 1024, 1024),
                        retries=("reruns of a run during which other processes were busy", 2, 0))
    if args.steps <= args.warmup or args.rounds < 1 or args.retries < 0 or args.global_batch < max(args.workers):
        ap.error("--steps must exceed --warmup, --rounds >= 1, --retries >= 0, --global-batch >= the largest N")
    info = common.header("bench/ps.py: ZeroMQ parameter server vs MPI all-reduce, real distbp-train runs on loopback")
    kinds = ("mpi", "zmq", "zmq-tcp")
    runs = run_all(args, kinds)
    report: dict = {"machine": info, "command": sys.argv, "args": vars(args), "numel": NUMEL, "workers": {},
                    "config": config(args.samples, args.global_batch, args.steps)}
    for n in args.workers:
        row = report["workers"][str(n)] = {k: summarize(runs[n][k], args.warmup, args.global_batch) for k in kinds}
        row.update({{"zmq": "ratio", "zmq-tcp": "ratio_tcp"}[k]: row[k]["median_samples_per_s"]
                    / row["mpi"]["median_samples_per_s"] for k in kinds[1:]}, oversubscribed=n > info["usable_cores"])
        for k in kinds:
            s = row[k]
            print(f"N={n} {k:<7} {s['median_samples_per_s']:10,.0f} samples/s, step {s['step_ms']:.1f} ms, IQR "
                  f"{s['iqr_pct']:.1f}% of {s['steps']} steps")
    for n, row in report["workers"].items():
        common.judge(report, f"zmq/mpi@{n}", row["ratio"] >= TARGET, f"N={n}: ZeroMQ (ipc://, zmq-local's) at "
                     f"{100 * row['ratio']:.1f}% of MPI's samples/s (target >= {100 * TARGET:.0f}%)"
                     + (" (oversubscribed)" if row["oversubscribed"] else "")
                     + f"; over TCP loopback {100 * row['ratio_tcp']:.1f}%",
                     limit_pct=100 * TARGET, value_pct=100 * row["ratio"])
    common.flag_noise(report, loads={f"N={n} {k}": row[k]["other_cores_max"] for n, row in report["workers"].items()
                                     for k in kinds})
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
