"""One training step of the MLP 784-1024-1024-10: distbp against the same math hand-written in numpy
and PyTorch eager (mlp.py; bench/README.md), and RSS over 1,000 steps. Targets: distbp/hand <= 1.10
at batch 64, <= 1.05 at 512; distbp/torch < 1 at 64; RSS growth < 1% or < 2 MB."""

from __future__ import annotations

import os

# One BLAS thread, set before numpy (or torch) loads its BLAS: the comparison is about the
# framework's overhead, not about how two noisy shared cores get split between threads.
os.environ.update(dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1"))

import gc  # noqa: E402
import sys  # noqa: E402

import common  # noqa: E402  (bench/ is on sys.path)
import mlp  # noqa: E402

SIZES = common.MLP
REWARM = 2  # untimed steps at the start of each turn in a round (mlp.rounds)


def memory_run(steps: int, warmup: int, batch: int = 64) -> dict:
    """RSS after ``warmup`` distbp steps, after half of ``steps`` more and after all of them:
    a leak grows in both halves, a one-off allocator step only in one."""
    v = mlp.DistbpMLP(*mlp.make_batch(batch, SIZES, seed=2), SIZES, mlp.LR, mlp.BETAS, mlp.EPS, seed=3)
    rss = []
    for n in (warmup, steps // 2, steps - steps // 2):
        for _ in range(n):
            v.step()
        gc.collect()
        rss.append(common.rss_bytes() / 2 ** 20)
    mb, pct = rss[2] - rss[0], 100.0 * (rss[2] - rss[0]) / rss[0]
    return {"batch": batch, "warmup_steps": warmup, "steps": steps, "rss_before_mb": rss[0], "rss_half_mb": rss[1],
            "rss_after_mb": rss[2], "growth_mb": mb, "growth_second_half_mb": rss[2] - rss[1], "growth_pct": pct,
            "ok": pct < 1.0 or mb < 2.0}


def main(argv: list[str] | None = None) -> int:
    args, report, with_torch = mlp.start("bench/step.py: one training step of MLP 784-1024-1024-10 (ReLU, softmax CE, "
                                         "Adam), float32", __doc__, argv, [64, 512], steps=(50, 10), rounds=(10, 2),
                                         warmup=(5, 2), mem_steps=("distbp steps of the RSS check", 1000, 100))
    if not mlp.same_math(report, SIZES, args.batches):
        return 1
    mem = report["memory"] = memory_run(args.mem_steps, 10 if args.quick else 50)  # before torch is loaded
    rows = mlp.table(report, args, SIZES, REWARM, with_torch, digits=2)
    mlp.ratio_target(report, "distbp/hand@64", rows, 64, 1.10)
    mlp.ratio_target(report, "distbp/hand@512", rows, 512, 1.05)
    mlp.ratio_target(report, "distbp/torch@64", rows, 64, 1.0, of="torch")
    common.judge(report, "memory", mem["ok"], f"memory: RSS growth over {mem['steps']} distbp steps after "
                 f"{mem['warmup_steps']} {mem['growth_mb']:+.2f} MB ({mem['growth_pct']:+.2f}%; "
                 f"{mem['growth_second_half_mb']:+.2f} in the second half) (target < 1% or < 2 MB)",
                 limit="< 1% or < 2 MB", value_mb=mem["growth_mb"], value_pct=mem["growth_pct"])
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
