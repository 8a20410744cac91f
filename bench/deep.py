"""One training step of a deep, narrow MLP, 64 -> 19 hidden layers of 64 -> 10 (ReLU, softmax
cross-entropy, Adam, float32, one BLAS thread): distbp against hand-written numpy and PyTorch
eager, timed in the same run. At width 64 a layer's arithmetic takes a few microseconds, so
this measures what the graph itself costs: the Python work per op of recording the forward,
walking it backward and stepping the optimizer.

    .venv/bin/python bench/deep.py                  # batches 16, 64 and 256
    .venv/bin/python bench/deep.py --quick          # CI smoke: few steps
    .venv/bin/python bench/deep.py --json out.json  # also write the figures as JSON
    .venv/bin/python bench/deep.py --phases         # also time forward / backward / optimizer

The variants are bench/step.py's (bench/common.py): distbp as a user writes it (nn.MLP,
F.cross_entropy, optim.Adam), the same math in numpy with preallocated buffers, and
torch.nn.Sequential + torch.optim.Adam if torch is installed. Steps are interleaved in rounds
and medians compared; distbp and hand must agree after three steps from the same weights
first. Target: distbp/hand <= 1.5 at batch 64. The per-op overhead is (distbp step - hand
step) / the number of ops distbp records per step. The exit status is 0 unless the same-math
check fails (or --strict and the target fails).
"""

from __future__ import annotations

import os

# One BLAS thread, set before numpy (or torch) loads its BLAS, as in bench/step.py.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402  (bench/ is on sys.path)
from common import (finish, import_torch, make_variants, parse_step_args, print_check, print_header,  # noqa: E402
                    print_noisy, print_table, ratio_target, step_arg_parser, timing_intro)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

DEPTH, WIDTH, INPUTS, CLASSES = 20, 64, 64, 10  # DEPTH Linear layers, DEPTH - 1 of them hidden
LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
TARGET_BATCH, TARGET = 64, 1.5  # distbp / hand must not exceed TARGET at TARGET_BATCH
CHECK_STEPS = 3
CHECK_RTOL = 1e-5
REWARM = 5  # untimed steps at the start of each turn in a round (see common.rounds)
NOISY_SPREAD = 0.10  # interquartile range / median above this: a busy machine, verdicts unreliable


def layer_sizes(depth: int, width: int) -> list[int]:
    """INPUTS, then depth - 1 hidden layers of ``width``, then CLASSES."""
    return [INPUTS] + [width] * (depth - 1) + [CLASSES]


def make_batch(batch: int, sizes: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], size=batch)
    return x, y


def graph_ops(distbp_variant: common.DistbpMLP) -> int:
    """The ops distbp records in one forward pass of ``distbp_variant`` (each is also one VJP
    call in backward): the non-leaf nodes of the loss's graph."""
    loss = distbp_variant.forward()
    seen, stack, count = set(), [loss], 0
    while stack:
        node = stack.pop()
        if id(node) in seen or node._record is None:
            continue
        seen.add(id(node))
        count += 1
        stack.extend(parent for _, parent in node._record[1])
    return count


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.3f}"


def main(argv: list[str] | None = None) -> int:
    full, quick = dict(steps=400, rounds=20, warmup=20), dict(steps=20, rounds=2, warmup=3)
    ap = step_arg_parser(__doc__, full, quick, batches=[16, 64, 256])
    ap.add_argument("--depth", type=int, default=DEPTH, help=f"Linear layers (default {DEPTH})")
    ap.add_argument("--width", type=int, default=WIDTH, help=f"hidden width (default {WIDTH})")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the timing target fails")
    args = parse_step_args(ap, argv, full, quick)
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0 or args.depth < 1 or args.width < 1:
        ap.error("--steps, --rounds, --depth and --width must be >= 1, --warmup >= 0")
    sizes = layer_sizes(args.depth, args.width)

    arch = f"{sizes[0]}-{args.width}x{args.depth - 1}-{sizes[-1]}" if args.depth > 1 else f"{sizes[0]}-{sizes[-1]}"
    info, version = print_header(f"bench/deep.py: one training step of MLP {arch} ({args.depth} Linear layers, "
                                 f"ReLU, softmax CE, Adam), float32", args.no_torch)

    report: dict = {"machine": info, "command": sys.argv, "args": vars(args), "sizes": sizes, "checks": [],
                    "batches": {}, "targets": {}}
    names = [f"{k}{i}" for i in range(1, len(sizes)) for k in ("W", "b")]
    for B in args.batches:
        a, b = make_variants(*make_batch(B, sizes, seed=4), sizes, LR, BETAS, EPS, with_torch=False, seed=1)
        chk = {"batch": B, **common.check_same_math(a, b, names, CHECK_STEPS, CHECK_RTOL)}
        report["checks"].append(chk)
        if not print_check(chk, CHECK_RTOL):
            return 1
    print()

    torch = None if version is None else import_torch()
    print(timing_intro(args.steps, args.rounds, args.warmup, REWARM)
          + "; per-op = (distbp - hand) / the ops distbp records per step")

    def per_op(variants: list, row: dict) -> str:
        ops = graph_ops(variants[0])
        med = row["median_s"]
        row["graph_ops"] = ops
        row["overhead_per_op_us"] = (med["distbp"] - med["hand"]) / ops * 1e6
        return f" {ops:>4} {row['overhead_per_op_us']:10.2f}"

    def variants(B: int) -> list:
        return make_variants(*make_batch(B, sizes), sizes, LR, BETAS, EPS, with_torch=torch is not None)

    report["batches"] = print_table(args.batches, variants, args.steps, args.rounds, args.warmup, REWARM, args.phases,
                                    ms, f" {'ops':>4} {'per-op us':>10}", per_op)
    report["noisy"] = print_noisy(report["batches"], NOISY_SPREAD)
    verdicts = []
    row = report["batches"].get(str(TARGET_BATCH))
    if row is not None and args.depth == DEPTH and args.width == WIDTH:
        ratio_target(report, verdicts, f"deep_distbp/hand@{TARGET_BATCH}", f"distbp/hand at batch {TARGET_BATCH}",
                     row["distbp_over_hand"], TARGET)
    else:
        print(f"SKIP  the target is for {DEPTH} layers of width {WIDTH} at batch {TARGET_BATCH}")
    return finish(report, args.json, args.strict, verdicts)


if __name__ == "__main__":
    sys.exit(main())
