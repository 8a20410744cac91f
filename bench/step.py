"""One training step of an MLP 784-1024-1024-10 (ReLU, softmax cross-entropy, Adam, float32,
one BLAS thread): distbp against a hand-written numpy reference and PyTorch eager, timed in the
same run.

    .venv/bin/python bench/step.py                  # batches 64 and 512, 50 timed steps each
    .venv/bin/python bench/step.py --quick          # CI smoke: few steps, short memory run
    .venv/bin/python bench/step.py --json out.json  # also write the figures as JSON
    .venv/bin/python bench/step.py --phases         # also time forward / backward / optimizer

Variants, each doing forward, backward and an Adam update on the same fixed batch:
  distbp  nn.MLP + F.cross_entropy + optim.Adam, exactly as a user writes it;
  hand    the same math in numpy with preallocated buffers, the way a competent engineer
          writes it (matmul with out=, in-place bias/ReLU, fused softmax-CE gradient, weight
          gradients written straight into one flat buffer, Adam on the flat buffers with
          the same in-place sequence as distbp's optimizer);
  torch   torch.nn.Sequential + F.cross_entropy + torch.optim.Adam, if torch is installed.

Timings are never absolute claims: the machine is shared and noisy. Steps are interleaved
in rounds between the variants (the order rotates every round) and the median step time of
each is compared with the others measured in the same run. Before timing, distbp and hand
start from the same weights and must agree after three steps, so the reference really does
the same math. The exit status is 0 unless that check fails (or --strict and a target fails).
"""

from __future__ import annotations

import os

# One BLAS thread, set before numpy (or torch) loads its BLAS: the comparison is about the
# framework's overhead, not about how two noisy shared cores get split between threads.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import gc  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402  (bench/ is on sys.path)
from common import (DistbpMLP, finish, import_torch, make_variants, parse_step_args, print_check,  # noqa: E402
                    print_header, print_noisy, print_table, ratio_target, step_arg_parser, timing_intro)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

SIZES = [784, 1024, 1024, 10]
LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
TARGETS = {64: 1.10, 512: 1.05}  # distbp / hand must not exceed these
CHECK_STEPS = 3
CHECK_RTOL = 1e-5
REWARM = 2  # untimed steps at the start of each turn in a round (see common.rounds)
NOISY_SPREAD = 0.10  # interquartile range / median above this: a busy machine, verdicts unreliable


# -- the batch ------------------------------------------------------------------------------
def make_batch(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], size=batch)
    return x, y


# -- the variants (bench/common.py) -------------------------------------------------------
def check_same_math(x: np.ndarray, y: np.ndarray) -> dict:
    """distbp and hand from identical weights and batch, CHECK_STEPS steps (``common.check_same_math``)."""
    a, b = make_variants(x, y, SIZES, LR, BETAS, EPS, with_torch=False, seed=1)
    names = [f"{k}{i}" for i in range(1, len(SIZES)) for k in ("W", "b")]
    return {"batch": len(y), **common.check_same_math(a, b, names, CHECK_STEPS, CHECK_RTOL)}


def rss_bytes() -> int:
    """Current resident set size (not the peak), from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_run(steps: int, warmup: int, batch: int = 64) -> dict:
    """RSS after ``warmup`` distbp steps, after half of ``steps`` more and after all of them:
    a leak grows in both halves, a one-off allocator step only in one."""
    x, y = make_batch(batch, seed=2)
    v = DistbpMLP(x, y, SIZES, LR, BETAS, EPS, seed=3)
    rss = []
    for n in (warmup, steps // 2, steps - steps // 2):
        for _ in range(n):
            v.step()
        gc.collect()
        rss.append(rss_bytes())
    growth = rss[2] - rss[0]
    mb, pct = growth / 2 ** 20, 100.0 * growth / rss[0]
    return {"batch": batch, "warmup_steps": warmup, "steps": steps, "rss_before_mb": rss[0] / 2 ** 20,
            "rss_half_mb": rss[1] / 2 ** 20, "rss_after_mb": rss[2] / 2 ** 20, "growth_mb": mb,
            "growth_second_half_mb": (rss[2] - rss[1]) / 2 ** 20, "growth_pct": pct,
            "ok": pct < 1.0 or mb < 2.0}


# -- report ---------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.2f}"


def main(argv: list[str] | None = None) -> int:
    full, quick = dict(steps=50, rounds=10, warmup=5, mem_steps=1000), dict(steps=10, rounds=2, warmup=2, mem_steps=100)
    ap = step_arg_parser(__doc__, full, quick, batches=[64, 512])
    ap.add_argument("--mem-steps", type=int, help="distbp steps of the RSS check (default 1000; --quick 100)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a timing or memory target fails")
    args = parse_step_args(ap, argv, full, quick)
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0 or args.mem_steps < 2:
        ap.error("--steps and --rounds must be >= 1, --warmup >= 0, --mem-steps >= 2")
    mem_warmup = 10 if args.quick else 50

    info, version = print_header("bench/step.py: one training step of MLP 784-1024-1024-10 (ReLU, softmax CE, "
                                 "Adam), float32", args.no_torch)

    report: dict = {"machine": info, "command": sys.argv, "args": vars(args), "checks": [],
                    "batches": {}, "targets": {}}
    for B in args.batches:
        chk = check_same_math(*make_batch(B, seed=4))
        report["checks"].append(chk)
        if not print_check(chk, CHECK_RTOL):
            return 1

    # Before torch is imported, so its libraries are not part of the baseline.
    mem = memory_run(args.mem_steps, mem_warmup)
    report["memory"] = mem
    print(f"memory: RSS {mem['rss_before_mb']:.1f} MB after {mem_warmup} warm-up distbp steps at batch 64, "
          f"{mem['rss_half_mb']:.1f} MB after {args.mem_steps // 2} more, {mem['rss_after_mb']:.1f} MB "
          f"after {args.mem_steps}: growth {mem['growth_mb']:+.2f} MB ({mem['growth_pct']:+.2f}%), "
          f"{mem['growth_second_half_mb']:+.2f} MB of it in the second half")
    print()

    torch = None if version is None else import_torch()
    print(timing_intro(args.steps, args.rounds, args.warmup, REWARM))
    report["batches"] = print_table(
        args.batches, lambda B: make_variants(*make_batch(B), SIZES, LR, BETAS, EPS, with_torch=torch is not None),
        args.steps, args.rounds, args.warmup, REWARM, args.phases, ms)
    report["noisy"] = print_noisy(report["batches"], NOISY_SPREAD)
    verdicts = []
    for B, limit in TARGETS.items():
        row = report["batches"].get(str(B))
        if row is None:
            continue
        ratio_target(report, verdicts, f"distbp/hand@{B}", f"distbp/hand at batch {B}", row["distbp_over_hand"], limit)
    row = report["batches"].get("64")
    if row is not None and "distbp_over_torch" in row:
        ok = row["distbp_over_torch"] < 1.0
        verdicts.append(ok)
        report["targets"]["distbp/torch@64"] = {"limit": 1.0, "value": row["distbp_over_torch"], "ok": ok}
        print(f"{'PASS' if ok else 'FAIL'}  distbp faster than torch at batch 64: "
              f"distbp/torch {row['distbp_over_torch']:.3f} (target < 1)")
    elif row is not None:
        print("SKIP  distbp faster than torch at batch 64 (torch not installed)")
    verdicts.append(mem["ok"])
    report["targets"]["memory"] = {"limit": "< 1% or < 2 MB", "value_mb": mem["growth_mb"],
                                   "value_pct": mem["growth_pct"], "ok": mem["ok"]}
    print(f"{'PASS' if mem['ok'] else 'FAIL'}  memory: RSS growth over {mem['steps']} distbp steps "
          f"{mem['growth_mb']:+.2f} MB ({mem['growth_pct']:+.2f}%) (target < 1% or < 2 MB)")

    return finish(report, args.json, args.strict, verdicts)


if __name__ == "__main__":
    sys.exit(main())
