"""One training step of a 20-layer MLP of width 64 with step.py's variants and timing: the graph's
Python cost, and per op (bench/README.md). Target: distbp/hand <= 1.5 at batch 64."""

from __future__ import annotations

import os

os.environ.update(dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1"))

import sys  # noqa: E402

import common  # noqa: E402  (bench/ is on sys.path)
import mlp  # noqa: E402

DEPTH, WIDTH, INPUTS, CLASSES = 20, 64, 64, 10  # DEPTH Linear layers, DEPTH - 1 of them hidden
REWARM = 5  # untimed steps at the start of each turn in a round (mlp.rounds)


def per_op(variants: list, row: dict) -> str:
    """The ops distbp records in one forward pass (each one VJP call in backward: the loss's
    non-leaf nodes), and the overhead per op."""
    seen, stack, ops = set(), [variants[0].forward()], 0
    while stack:
        node = stack.pop()
        if id(node) in seen or node._record is None:
            continue
        seen.add(id(node))
        ops += 1
        stack.extend(parent for _, parent in node._record[1])
    row["graph_ops"] = ops
    row["overhead_per_op_us"] = (row["median_s"]["distbp"] - row["median_s"]["hand"]) / ops * 1e6
    return f" {ops:>4} {row['overhead_per_op_us']:10.2f}"


def main(argv: list[str] | None = None) -> int:
    args, report, with_torch = mlp.start("bench/deep.py: one training step of a deep MLP (ReLU, softmax CE, Adam), "
                                         "float32", __doc__, argv, [16, 64, 256], steps=(400, 20),
                                         rounds=(20, 2), warmup=(20, 3), depth=("Linear layers", DEPTH, DEPTH),
                                         width=("hidden width", WIDTH, WIDTH))
    sizes = report["sizes"] = [INPUTS] + [args.width] * (args.depth - 1) + [CLASSES]
    if not mlp.same_math(report, sizes, args.batches):
        return 1
    rows = mlp.table(report, args, sizes, REWARM, with_torch, 3, per_op, f" {'ops':>4} {'per-op us':>10}")
    if (args.depth, args.width) == (DEPTH, WIDTH):
        mlp.ratio_target(report, "deep_distbp/hand@64", rows, 64, 1.5)
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
