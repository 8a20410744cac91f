"""Data-parallel scaling of real distbp training steps under mpiexec: the MLP 784-1024-1024-10
(ReLU, softmax cross-entropy, Adam, float32) of bench/step.py, one BLAS thread per rank, at 1,
2 and 4 ranks; weak scaling (fixed per-rank batch 512) and strong scaling (fixed global batch
1024), the time of each step split into compute and all-reduce, and a projection to 8 and 16
ranks from the figures measured here.

    .venv/bin/python bench/scaling.py                  # 1, 2, 4 ranks, about 1-2 minutes
    .venv/bin/python bench/scaling.py --quick          # CI smoke, under 30 s
    .venv/bin/python bench/scaling.py --json out.json  # also write the figures as JSON

The script launches itself: ``python bench/scaling.py`` runs ``mpiexec -n N python
bench/scaling.py --worker ...`` for each N. Every rank runs the Trainer's step in the
Trainer's order on a fixed random batch (no data loading):

    opt.zero_grad()
    loss = F.cross_entropy(model(x), y, reduction="sum") * (1 / global_batch)
    loss.backward()
    comm.allreduce_sum_(opt.flat.flat_grad())        # distbp.comm.MPICommunicator
    opt.step()

Configurations, timed in interleaved rounds inside each job (the order rotates every round,
each turn starts after a barrier and one untimed step):
  weak     per-rank batch 512, global batch 512 N;
  strong   global batch 1024 split over the N ranks (the same as weak at N = 2: measured once);
  compute  the weak step without the all-reduce, all ranks at once (N >= 2): what the ranks'
           compute costs when they share the machine;
  solo     the same on rank 0 alone while the other ranks sleep (N >= 2): the single-rank
           compute measured in the same job, the reference of the contention figure.
A step's time is the maximum over the ranks; each figure is the median over the timed steps.
samples/s = global batch / step time; speedup = samples/s(N) / samples/s(1); efficiency =
speedup / N. Ratios between jobs are taken from jobs run one after the other (1, 2, 4 ranks),
so a noisy neighbour can still move them: run twice.

The projection to 8 and 16 ranks is a computation, not a measurement (no bigger machine was
available): see the assumptions it prints and bench/README.md.
"""

from __future__ import annotations

import os

# One BLAS thread per rank, set before numpy loads: ranks x threads must not exceed the cores,
# and the scaling figure is about ranks, not about threads inside one rank.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
sys.path.insert(0, str(Path(__file__).resolve().parent))      # bench/allreduce.py's helpers

import allreduce as arb
from common import BUSY_CORES, finish, machine_info, rotation  # noqa: E402

SIZES = arb.MLP_SIZES
LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
RANKS = (1, 2, 4)
PER_RANK = 512
GLOBAL = 1024
TARGET_SPEEDUP_2 = 1.85       # weak scaling at 2 ranks, this machine
TORCH_DDP_SPEEDUP_2 = 1.77    # PyTorch DDP + gloo measured on this machine (not re-measured here)
PROJ_TARGETS = {8: 0.90, 16: 0.80}  # on a 16-core machine
NOISY_SPREAD = 0.10
PHASES = ("forward", "backward", "allreduce", "optimizer")


# -- the worker (one rank under mpiexec) ----------------------------------------------------
class Config:
    """One model + Adam + fixed batch; ``step`` is the Trainer's step, timed by phase."""

    def __init__(self, name: str, local_batch: int, global_batch: int, sync: bool, comm, rank: int,
                 only_rank0: bool = False) -> None:
        import distbp as db
        from distbp import nn, optim

        self.name, self.local_batch, self.global_batch, self.sync = name, local_batch, global_batch, sync
        self.only_rank0 = only_rank0
        self.comm = comm
        db.manual_seed(0)  # the same initial parameters on every rank (the Trainer broadcasts them)
        self.model = nn.MLP(SIZES, activation="relu")
        self.opt = optim.Adam(self.model.parameters(), lr=LR, betas=BETAS, eps=EPS)
        comm.broadcast_(self.opt.flat.data, root=0)
        rng = np.random.default_rng([11, rank, local_batch])
        self.x = db.tensor(rng.standard_normal((local_batch, SIZES[0]), dtype=np.float32))
        self.y = rng.integers(0, SIZES[-1], size=local_batch)
        self.scale = 1.0 / global_batch
        self.times: list[tuple[float, float, float, float]] = []

    def step(self, record: bool) -> None:
        import distbp.functional as F

        clock = time.perf_counter
        opt = self.opt
        t0 = clock()
        opt.zero_grad()
        loss = F.cross_entropy(self.model(self.x), self.y, reduction="sum") * self.scale
        t1 = clock()
        loss.backward()
        t2 = clock()
        if self.sync:
            self.comm.allreduce_sum_(opt.flat.flat_grad())
        t3 = clock()
        opt.step()
        t4 = clock()
        if record:
            self.times.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3))


def gentle_barrier(world) -> None:
    """A barrier that sleeps while it waits (MPI's Barrier polls a core at 100%): the ranks
    sitting out the solo configuration must not take CPU from the rank that runs it."""
    req = world.Ibarrier()
    while not req.Test():
        time.sleep(2e-4)


def worker(args) -> int:
    from mpi4py import MPI

    from distbp.comm import MPICommunicator

    comm = MPICommunicator()          # what the training step calls
    world = MPI.COMM_WORLD            # the benchmark's own barriers, sweep and gather
    rank, n = comm.rank, comm.size
    try:
        from threadpoolctl import threadpool_info
        blas_threads = sorted({p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"})
    except Exception:
        blas_threads = []

    lo, hi = rank * args.global_batch // n, (rank + 1) * args.global_batch // n
    strong_sizes = [(r + 1) * args.global_batch // n - r * args.global_batch // n for r in range(n)]
    configs = [Config("weak", args.per_rank, args.per_rank * n, True, comm, rank)]
    strong_is_weak = all(s == args.per_rank for s in strong_sizes)
    if not strong_is_weak:
        configs.append(Config("strong", hi - lo, args.global_batch, True, comm, rank))
    if n > 1:
        configs.append(Config("compute", args.per_rank, args.per_rank * n, False, comm, rank))
        configs.append(Config("solo", args.per_rank, args.per_rank, False, comm, rank, only_rank0=True))

    def runs(c: Config) -> bool:
        return not c.only_rank0 or rank == 0

    for c in configs:
        gentle_barrier(world)
        if runs(c):
            for _ in range(args.warmup):
                c.step(False)
    per_round = max(1, -(-args.steps // args.rounds))
    names = [c.name for c in configs]
    by_name = {c.name: c for c in configs}
    for r in range(args.rounds):
        for name in rotation(names, r):
            c = by_name[name]
            gentle_barrier(world)
            if runs(c):
                c.step(False)  # re-warm: the configuration before evicted this one's buffers
                if c.sync:
                    comm.barrier()  # start the timed steps together
                for _ in range(per_round):
                    c.step(True)
    gentle_barrier(world)
    sweep = None
    if args.sweep and n > 1:
        sweep = {str(k): v for k, v in arb.sweep(world, MPI, arb.SWEEP_BYTES, args.sweep_rounds,
                                                  arb.sweep_calls(args.quick)).items()}
    mine = {c.name: c.times for c in configs}
    gathered = world.gather(mine, root=0)
    if rank == 0:
        result = {"ranks": n, "strong_local_batches": strong_sizes, "strong_is_weak": strong_is_weak,
                  "blas_threads": blas_threads, "per_rank": args.per_rank, "global_batch": args.global_batch,
                  "configs": {}, "sweep_s": sweep}
        for c in configs:
            ranks_times = [np.asarray(g[c.name], dtype=np.float64).reshape(-1, 4) for g in gathered]
            ranks_times = [t for t in ranks_times if len(t)]
            result["configs"][c.name] = {
                "local_batch": c.local_batch, "global_batch": c.global_batch if c.name != "solo" else c.local_batch,
                "sync": c.sync, "ranks_running": len(ranks_times),
                "per_rank_phase_s": [t.tolist() for t in ranks_times]}
        Path(args.out).write_text(json.dumps(result))
    return 0


# -- analysis -------------------------------------------------------------------------------
def summarize(cfg: dict) -> dict:
    """Step time = max over ranks per step, then median over steps; phases likewise (the
    all-reduce also as its minimum over ranks: the rank that arrives last waits for nobody,
    so the minimum is the transfer itself and max - min the wait for the slowest rank)."""
    t = np.asarray(cfg["per_rank_phase_s"])          # ranks x steps x phases
    steps = min(len(r) for r in t) if len(t) else 0
    t = np.asarray([r[:steps] for r in t])
    total = t.sum(axis=2)                             # ranks x steps
    step_max = total.max(axis=0)
    compute = t[:, :, [0, 1, 3]].sum(axis=2)
    q1, q3 = np.percentile(step_max, [25, 75])
    med = float(np.median(step_max))
    return {"steps": int(steps), "step_s": med, "step_quartiles_s": [float(q1), float(q3)],
            "spread": float((q3 - q1) / med),
            "phase_max_s": {p: float(np.median(t[:, :, i].max(axis=0))) for i, p in enumerate(PHASES)},
            "compute_max_s": float(np.median(compute.max(axis=0))),
            "compute_rank_median_s": [float(np.median(c)) for c in compute],
            "allreduce_min_s": float(np.median(t[:, :, 2].min(axis=0))),
            "samples_per_s": cfg["global_batch"] / med}


def project(t_compute: float, fit: dict, contention: float | None, in_step_factor: float | None) -> dict:
    """Weak-scaling efficiency at N ranks of a hypothetical many-core machine: per-rank step =
    compute (this machine's single-rank figure, optionally times the contention factor) + a
    blocking ring all-reduce of the MLP gradient with alpha and beta fitted here at 2 ranks
    (optionally scaled by how much slower the all-reduce is inside a training step, with cold
    caches, than in the benchmark's tight loop)."""
    a_link, beta = arb.link_params(fit)
    out = {"t_compute_s": t_compute, "alpha_link_s": a_link, "beta_Bps": beta, "bytes": arb.MLP_BYTES,
           "contention": contention, "in_step_factor": in_step_factor, "ranks": {}}
    for n in (2, 4, 8, 16):
        t_ar = arb.ring_time(n, arb.MLP_BYTES, a_link, beta)
        eff = t_compute / (t_compute + t_ar)
        row = {"allreduce_s": t_ar, "efficiency": eff}
        if contention is not None:
            row["efficiency_with_contention"] = t_compute / (contention * t_compute + t_ar)
        if in_step_factor is not None:
            row["allreduce_in_step_s"] = in_step_factor * t_ar
            row["efficiency_in_step_allreduce"] = t_compute / (t_compute + in_step_factor * t_ar)
        target = PROJ_TARGETS.get(n)
        if target is not None:
            # The per-rank bandwidth below which the target is missed (compute uncontended).
            budget = t_compute * (1.0 / target - 1.0) - 2.0 * (n - 1) * a_link
            row["target"] = target
            row["beta_needed_Bps"] = (2.0 * (n - 1) / n * arb.MLP_BYTES / budget) if budget > 0 else float("inf")
        out["ranks"][str(n)] = row
    return out


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=lambda s: [int(v) for v in s.split(",")], default=list(RANKS),
                    help="comma-separated rank counts (default 1,2,4; must include 1 and 2 for the ratios)")
    ap.add_argument("--per-rank", type=int, default=PER_RANK, help="weak scaling: batch per rank (default 512)")
    ap.add_argument("--global-batch", type=int, default=GLOBAL, help="strong scaling: global batch (default 1024)")
    ap.add_argument("--steps", type=int, help="timed steps per configuration (default 30; --quick 4)")
    ap.add_argument("--rounds", type=int, help="interleaving rounds (default 6; --quick 2)")
    ap.add_argument("--warmup", type=int, help="untimed steps per configuration first (default 3; --quick 1)")
    ap.add_argument("--sweep-rounds", type=int, help="rounds of the all-reduce size sweep (default 10; --quick 2)")
    ap.add_argument("--retries", type=int, help="rerun a job up to this many times when other processes kept "
                    f"more than {BUSY_CORES} cores busy during it (default 2; --quick 0)")
    ap.add_argument("--quick", action="store_true", help="CI smoke: few steps (explicit flags still win)")
    ap.add_argument("--bind", action="store_true", help="pass '-bind-to core' to mpiexec")
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the 2-rank target fails")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sweep", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    defaults = dict(steps=4, rounds=2, warmup=1, sweep_rounds=2, retries=0) if args.quick else \
        dict(steps=30, rounds=6, warmup=3, sweep_rounds=10, retries=2)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0 or args.per_rank < 1 or args.sweep_rounds < 1 \
            or args.retries < 0:
        ap.error("--steps, --rounds, --per-rank and --sweep-rounds must be >= 1, --warmup and --retries >= 0")
    if args.worker:
        return worker(args)
    if 1 not in args.ranks:
        ap.error("--ranks must include 1: every ratio is against the single-rank run")
    if any(args.global_batch < n for n in args.ranks):
        ap.error("--global-batch must be at least the largest rank count")

    info = machine_info()
    cores = info["usable_cores"] or 1
    print(f"bench/scaling.py: data-parallel training steps of MLP {'-'.join(map(str, SIZES))} (ReLU, softmax CE, "
          f"Adam), float32, gradients summed by distbp.comm.MPICommunicator")
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    arb.print_machine(info)
    over = [n for n in args.ranks if n > cores]
    if over:
        print(f"NOTE: this machine has {cores} cores: {', '.join(map(str, over))} ranks oversubscribe them "
              f"({', '.join(f'{n / cores:g} ranks per core' for n in over)}); those rows measure time-sharing, "
              "not scaling")
    print(f"timing: {args.warmup} warm-up steps per configuration, then {args.steps} timed steps in "
          f"{args.rounds} interleaved rounds (one untimed step first in each turn); step time = max over "
          f"ranks, median over steps")

    script = Path(__file__).resolve()
    base = ["--per-rank", str(args.per_rank), "--global-batch", str(args.global_batch), "--steps", str(args.steps),
            "--rounds", str(args.rounds), "--warmup", str(args.warmup), "--sweep-rounds", str(args.sweep_rounds)]
    base += ["--quick"] if args.quick else []
    mpiexec_args = ["-bind-to", "core"] if args.bind else []
    report: dict = {"machine": info, "command": sys.argv,
                    "args": {k: v for k, v in vars(args).items() if k not in ("worker", "out", "sweep")},
                    "ranks": {}, "targets": {}}
    for n in args.ranks:
        extra = ["--sweep"] if n == 2 else []
        res = arb.launch_retrying(script, n, base + extra, 120 if args.quick else 1800, mpiexec_args, args.retries)
        res["oversubscribed"] = n > cores
        res["summary"] = {name: summarize(cfg) for name, cfg in res["configs"].items()}
        if res["strong_is_weak"]:
            res["summary"]["strong"] = dict(res["summary"]["weak"])
        report["ranks"][str(n)] = res
        print(arb.load_line(n, res) + f"; BLAS threads per rank: {res['blas_threads'] or 'unknown'}", flush=True)
    print()

    R = report["ranks"]
    one = R["1"]["summary"]
    for kind, title in (("weak", f"weak scaling: per-rank batch {args.per_rank}, global batch {args.per_rank} x N"),
                        ("strong", f"strong scaling: global batch {args.global_batch} split over N ranks")):
        print(title)
        header = (f"{'N':>2} {'per-rank':>8} {'global':>6} {'step ms':>8} {'samples/s':>10} {'speedup':>8} "
                  f"{'efficiency':>10} {'compute ms':>10} {'allreduce ms':>12} {'(wait)':>7} {'spread':>7} {'':>14}")
        print(header)
        print("-" * len(header))
        for n, res in R.items():
            s = res["summary"][kind]
            speed = s["samples_per_s"] / one[kind]["samples_per_s"]
            s["speedup"], s["efficiency"] = speed, speed / int(n)
            local = args.per_rank if kind == "weak" else "/".join(map(str, sorted(set(res["strong_local_batches"]))))
            glob = args.per_rank * int(n) if kind == "weak" else args.global_batch
            wait = s["phase_max_s"]["allreduce"] - s["allreduce_min_s"]
            note = "oversubscribed" if res["oversubscribed"] else ""
            print(f"{n:>2} {local:>8} {glob:>6} {ms(s['step_s'])} {s['samples_per_s']:10.0f} {speed:7.2f}x "
                  f"{100 * s['efficiency']:9.1f}% {ms(s['compute_max_s']):>10} {ms(s['allreduce_min_s']):>12} "
                  f"{ms(wait)[2:]:>7} {100 * s['spread']:6.1f}% {note:>14}")
        print()
    print("compute = forward + backward + optimizer, max over ranks; allreduce = the call's time on the rank "
          "that arrives last (min over ranks); wait = max - min, the time the first rank waits for the "
          "slowest")
    print()

    print("per-rank step breakdown, weak scaling (median ms; max over ranks)")
    header = f"{'N':>2} {'forward':>8} {'backward':>9} {'allreduce':>10} {'optimizer':>10} {'step':>8}"
    print(header)
    print("-" * len(header))
    for n, res in R.items():
        ph = res["summary"]["weak"]["phase_max_s"]
        print(f"{n:>2} {ms(ph['forward'])} {ms(ph['backward']):>9} {ms(ph['allreduce']):>10} "
              f"{ms(ph['optimizer']):>10} {ms(res['summary']['weak']['step_s'])}")
    print()

    print("contention (same job, interleaved): the weak step's compute without the all-reduce, run on rank 0 "
          "alone while the others sleep (solo) and on all ranks at once (compute)")
    header = (f"{'N':>2} {'solo ms':>8} {'all ranks ms':>12} {'slowdown':>9} {'weak step ms':>12} "
              f"{'speedup vs solo':>16} {'vs 1-rank job':>14}")
    print(header)
    print("-" * len(header))
    print(f"{1:>2} {ms(one['weak']['compute_max_s'])} {'-':>12} {'-':>9} {ms(one['weak']['step_s']):>12} "
          f"{'-':>16} {'-':>14}")
    for n, res in R.items():
        S = res["summary"]
        if "solo" not in S:
            continue
        solo, conc = S["solo"]["step_s"], S["compute"]["step_s"]
        res["contention"] = conc / solo
        res["speedup_vs_solo"] = int(n) * solo / S["weak"]["step_s"]
        print(f"{n:>2} {ms(solo)} {ms(conc):>12} {conc / solo:8.3f}x {ms(S['weak']['step_s']):>12} "
              f"{res['speedup_vs_solo']:15.2f}x {S['weak']['speedup']:13.2f}x")
    print("(speedup vs solo = N x solo / weak step, all measured in the one N-rank job; vs 1-rank job = the "
          "weak-scaling speedup above)")
    print()

    # -- projection -----------------------------------------------------------------------
    fit_src = R.get("2", {}).get("sweep_s")
    if fit_src:
        sizes = arb.SWEEP_BYTES
        fit = arb.fit_alpha_beta(sizes, [fit_src[str(s)] for s in sizes])
        t_c = one["weak"]["compute_max_s"]
        contention = R["2"].get("contention")
        in_step = R["2"]["summary"]["weak"]["allreduce_min_s"]
        a_link, beta = arb.link_params(fit)
        factor = in_step / arb.ring_time(2, arb.MLP_BYTES, a_link, beta)
        proj = project(t_c, fit, contention, factor)
        proj["fit"] = fit
        report["projection"] = proj
        print("PROJECTION to 8 and 16 ranks: computed, NOT measured (no machine with more than "
              f"{cores} cores was available)")
        print(f"  raw Allreduce sweep at 2 ranks, fitted t = alpha + bytes/beta: alpha = {1e6 * fit['alpha_s']:.2f} us, "
              f"beta = {fit['beta_Bps'] / 1e9:.2f} GB/s (residuals "
              + ", ".join(f"{r:+.0f}%" for r in fit["residual_pct"]) + f" at {', '.join(map(arb.fmt_bytes, sizes))})")
        print(f"  ring all-reduce of the {arb.MLP_BYTES:,}-byte gradient over N ranks: 2(N-1)/N bytes/beta + "
              f"2(N-1) alpha_link, alpha_link = alpha/2 = {1e6 * proj['alpha_link_s']:.2f} us (the ring model at N=2 "
              "is bytes/beta + 2 alpha_link)")
        print(f"  compute per step: {1e3 * t_c:.1f} ms, the single-rank forward+backward+optimizer measured "
              f"above (per-rank batch {args.per_rank}, 1 BLAS thread)")
        print("  assumes: a 16-core machine whose cores each compute as fast as one core here and do not slow "
              "each other down; every rank keeps the per-rank copy bandwidth beta fitted here while all N copy "
              "at once (shared memory); the Trainer's blocking all-reduce after backward (no overlap); "
              "1 rank per core")
        header = (f"{'N':>3} {'allreduce ms':>12} {'efficiency':>10} {'with 2-rank contention':>23} "
                  f"{'in-step allreduce':>18} {'target':>7} {'beta needed GB/s':>17}")
        print(header)
        print("-" * len(header))
        for n, row in proj["ranks"].items():
            wc = row.get("efficiency_with_contention")
            wc_s = f"{100 * wc:22.1f}%" if wc is not None else f"{'-':>23}"
            tgt = f"{100 * row['target']:6.0f}%" if "target" in row else f"{'-':>7}"
            need = f"{row['beta_needed_Bps'] / 1e9:17.2f}" if "beta_needed_Bps" in row else f"{'-':>17}"
            print(f"{n:>3} {ms(row['allreduce_s']):>12} {100 * row['efficiency']:9.1f}% {wc_s} "
                  f"{100 * row['efficiency_in_step_allreduce']:17.1f}% {tgt} {need}")
        meas2 = R["2"]["summary"]["weak"]["efficiency"]
        print(f"  check against this machine at 2 ranks: the model gives {100 * proj['ranks']['2']['efficiency']:.1f}%, "
              f"{100 * proj['ranks']['2'].get('efficiency_with_contention', float('nan')):.1f}% with the measured "
              f"{contention:.3f}x compute slowdown, {100 * proj['ranks']['2']['efficiency_in_step_allreduce']:.1f}% "
              f"with the in-step all-reduce; measured {100 * meas2:.1f}%")
        print("  'with 2-rank contention' applies the compute slowdown measured here between 1 and 2 concurrent "
              "ranks to every rank; 'in-step allreduce' scales the modelled all-reduce by "
              f"{factor:.2f}x, the ratio of the all-reduce inside a training step here ({1e3 * in_step:.2f} ms, caches "
              f"cold after backward) to the model at 2 ranks; 'beta needed' is the per-rank all-reduce bandwidth "
              "below which the target is missed (uncontended compute)")
        print()

    verdicts = []
    if "2" in R:
        s2 = R["2"]["summary"]["weak"]["speedup"]
        ok = s2 >= TARGET_SPEEDUP_2
        verdicts.append(ok)
        report["targets"]["weak_speedup@2"] = {"limit": TARGET_SPEEDUP_2, "value": s2, "ok": ok,
                                               "torch_ddp_gloo_reference": TORCH_DDP_SPEEDUP_2}
        print(f"{'PASS' if ok else 'FAIL'}  weak scaling at 2 ranks: {s2:.2f}x (target >= {TARGET_SPEEDUP_2}x; "
              f"PyTorch DDP + gloo: {TORCH_DDP_SPEEDUP_2}x on this machine, measured last session, not re-measured here)")
        if not ok:
            w = R["2"]["summary"]["weak"]
            t1 = one["weak"]["step_s"]
            wait = w["phase_max_s"]["allreduce"] - w["allreduce_min_s"]
            rest = w["step_s"] - w["compute_max_s"] - w["allreduce_min_s"] - wait
            print(f"      the target needs a 2-rank step <= 2 x {1e3 * t1:.1f} / {TARGET_SPEEDUP_2} = "
                  f"{2e3 * t1 / TARGET_SPEEDUP_2:.1f} ms; measured {1e3 * w['step_s']:.1f} ms = compute "
                  f"{1e3 * w['compute_max_s']:.1f} ({1e3 * (w['compute_max_s'] - one['weak']['compute_max_s']):+.1f} vs "
                  f"1 rank) + all-reduce {1e3 * w['allreduce_min_s']:.1f} + wait for the slower rank {1e3 * wait:.1f}"
                  f" + rest {1e3 * rest:+.1f} (medians of maxima do not add up exactly)")
    if "projection" in report:
        for n, row in report["projection"]["ranks"].items():
            if "target" in row:
                ok = row["efficiency"] >= row["target"]
                report["targets"][f"projected_weak_efficiency@{n}"] = {"limit": row["target"],
                                                                      "value": row["efficiency"], "ok": ok}
                print(f"PROJ  {'meets' if ok else 'misses'} weak-scaling efficiency at {n} ranks on 16 cores: "
                      f"{100 * row['efficiency']:.1f}% projected (target >= {100 * row['target']:.0f}%; a "
                      "projection, not a measurement)")
    noisy = [f"N={n} {k}: {100 * s['spread']:.0f}%" for n, res in R.items() for k, s in res["summary"].items()
             if s["spread"] > NOISY_SPREAD]
    report["noisy"] = bool(noisy)
    if noisy:
        print(f"NOISY  step-time spread above {100 * NOISY_SPREAD:.0f}% ({'; '.join(noisy)}): the machine was "
              "busy; rerun before trusting the verdicts")
    busy = arb.busy_warning(R)
    report["busy"] = busy is not None
    if busy:
        print(busy)
    return finish(report, args.json, args.strict, verdicts)


if __name__ == "__main__":
    sys.exit(main())
