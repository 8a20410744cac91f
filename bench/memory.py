"""Memory of a training step: its peak against its floor, what the forward keeps against what
backward reads, RSS growth over 10,000 steps (bench/README.md). Targets: peak <= 1.5x the floor;
the forward keeps <= 1.05x; growth < 1%."""

from __future__ import annotations

import os

# One BLAS thread, set before numpy loads: the figures must not depend on OpenBLAS's threads.
os.environ.update(dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1"))

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402  (bench/ is on sys.path)
import mlp  # noqa: E402
from distbp.comm import LocalCommunicator  # noqa: E402
from distbp.train import Trainer, resolve  # noqa: E402

DEFAULT_SIZES, DEFAULT_BATCH = [64, 256, 10], 128  # configs/default.yaml's model and global batch
PEAK_LIMIT, KEPT_LIMIT, GROWTH_LIMIT_PCT = 1.5, 1.05, 1.0
MiB = 2 ** 20


def floor_bytes(sizes: list[int], batch: int, itemsize: int = 4) -> dict[str, int]:
    """Parameters, gradients, Adam's two moments and the activations the VJPs read (the batch
    x, each hidden ReLU output, the logits, the int64 targets); ``kept_needed``: the part of
    them the forward itself creates."""
    n_params = sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))
    p = n_params * itemsize
    made_by_forward = batch * (sum(sizes[1:-1]) + sizes[-1]) * itemsize  # hidden outputs, logits
    activations = batch * sizes[0] * itemsize + batch * np.dtype(np.int64).itemsize + made_by_forward
    return {"params": p, "grads": p, "optimizer_state": 2 * p, "activations": activations,
            "kept_needed": made_by_forward, "total": 4 * p + activations, "n_params": n_params}


def make_step(sizes: list[int], batch: int, seed: int = 0) -> mlp.DistbpMLP:
    """step.py's distbp step on a random batch; only the step's own copy of x survives."""
    rng = np.random.default_rng([seed, batch])
    x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    return mlp.DistbpMLP(x, rng.integers(0, sizes[-1], size=batch), sizes, mlp.LR, mlp.BETAS, mlp.EPS, seed=seed)


def numpy_bytes() -> int:
    """The bytes of numpy's live data buffers, as tracemalloc sees them."""
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)])
    return sum(s.size for s in snap.statistics("lineno"))


def measure_peak(sizes: list[int], batch: int, warmup: int = 2) -> dict:
    """The peak of one step after ``warmup``, tracemalloc started before the model is built (so it counts
    every live byte; numpy reports its buffers to it), then the numpy bytes the next forward keeps."""
    v = make_step(sizes, batch)  # untraced first: what is built lazily on the first steps exists before tracing
    for _ in range(warmup + 1):
        v.step()
    del v
    gc.collect()
    tracemalloc.start(1)
    try:
        v = make_step(sizes, batch)
        for _ in range(warmup):
            v.step()
        gc.collect()
        base_np, base = numpy_bytes(), tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        v.step()
        peak = tracemalloc.get_traced_memory()[1]
        gc.collect()
        loss = v.forward()
        kept = numpy_bytes() - base_np
        v.backward(loss)
        v.update()
    finally:
        tracemalloc.stop()
    floor = floor_bytes(sizes, batch)
    return {"sizes": sizes, "batch": batch, "warmup_steps": warmup, "floor": floor,
            "peak_over_floor": peak / floor["total"],
            "traced": {"base": base, "base_numpy": base_np, "peak": peak, "peak_over_base": peak - base},
            "forward_kept_numpy": kept, "forward_kept_over_needed": kept / floor["kept_needed"]}


def run_peak_child(sizes: list[int], batch: int) -> dict:
    """``measure_peak`` in a fresh interpreter: a heap no other measurement touched."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak-child", f"{','.join(map(str, sizes))}:{batch}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"peak measurement of {sizes} at batch {batch} failed:\n{res.stdout}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def growth(samples: dict[int, int], warm_step: int, **info) -> dict:
    """RSS samples {step: bytes} -> growth from ``warm_step`` to the last sample, and over the
    second half (a leak grows in both halves, a one-off allocator step in one)."""
    steps = sorted(samples)
    after = [s for s in steps if s >= warm_step]
    warm, mid, end = samples[warm_step], samples[after[len(after) // 2]], samples[steps[-1]]
    return {**info, "sizes": DEFAULT_SIZES, "batch": DEFAULT_BATCH, "rss_mb": {str(s): samples[s] / MiB for s in steps},
            "warm_step": warm_step, "end_step": steps[-1], "rss_warm_mb": warm / MiB, "rss_end_mb": end / MiB,
            "growth_mb": (end - warm) / MiB, "growth_pct": 100.0 * (end - warm) / warm,
            "growth_second_half_mb": (end - mid) / MiB}


def loop_growth(steps: int, warmup: int, every: int) -> dict:
    """RSS (after gc) of the bare training loop, default config's MLP, every ``every`` steps."""
    v, samples, t0 = make_step(DEFAULT_SIZES, DEFAULT_BATCH, seed=3), {}, time.perf_counter()
    for done in range(warmup + steps + 1):
        if (done >= warmup and (done - warmup) % every == 0) or done == warmup + steps:
            gc.collect()
            samples[done] = common.rss_bytes()
        if done < warmup + steps:
            v.step()
    return growth(samples, warmup, steps=steps, warmup_steps=warmup, seconds=time.perf_counter() - t0)


def trainer_growth(steps: int, warmup: int, every: int) -> dict:
    """RSS (after gc) of a Trainer run of the default config on digits-shaped blobs, logging every 10
    steps, evaluating and checkpointing every ``warmup // 2``: before step ``warmup``, every ``every``
    steps and before its last. The log goes to /dev/null (a StringIO would grow: a false leak)."""
    samples: dict[int, int] = {}
    probes, each = set(range(warmup, warmup + steps, every)) | {warmup + steps}, max(1, warmup // 2)

    class Probed(Trainer):
        def _train_step(self, step: int, *args, **kwargs):
            if step in probes:
                gc.collect()
                samples[step] = common.rss_bytes()
            return super()._train_step(step, *args, **kwargs)

    cfg = resolve(None, ["data.name=synthetic", "data.samples=2000", "data.features=64", "data.classes=10",
                         f"model.sizes={DEFAULT_SIZES}", f"train.global_batch={DEFAULT_BATCH}", "train.epochs=1000000",
                         f"train.max_steps={warmup + steps + 1}", "train.log_every=10", f"train.eval_every={each}",
                         "train.progress=plain", f"checkpoint.every={each}", "checkpoint.keep=2", "comm.backend=local",
                         "comm.threads=1"])
    with tempfile.TemporaryDirectory(prefix="distbp-memory-") as run_dir, open(os.devnull, "w") as sink:
        t0 = time.perf_counter()
        Probed(cfg, run_dir=run_dir, resume="never", comm=LocalCommunicator(), stream=sink).run()
    return growth(samples, warmup, steps=steps, warmup_steps=warmup, seconds=time.perf_counter() - t0,
                  eval_and_checkpoint_every=each)


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--peak-child", metavar="SIZES:BATCH", help=argparse.SUPPRESS)
    args = common.parse(ap, argv, steps=("growth steps after the warm-up", 10000, 1000),
                        warmup=("growth warm-up steps", 500, 100))
    if args.peak_child:
        sizes, batch = args.peak_child.split(":")
        print(json.dumps(measure_peak([int(n) for n in sizes.split(",")], int(batch))))
        return 0
    if args.steps < 2 or args.warmup < 2:
        ap.error("--steps and --warmup must be >= 2")
    report = {"machine": common.header("bench/memory.py: peak memory of a training step against its floor, and RSS "
                                       "growth over many steps"), "command": sys.argv, "args": vars(args)}
    report["peak"] = [run_peak_child(*c) for c in ((common.MLP, 64), (common.MLP, 512), (DEFAULT_SIZES, DEFAULT_BATCH))]
    every = max(1, args.steps // 10)
    for key, run in (("loop", loop_growth), ("trainer", trainer_growth)):
        report[f"{key}_growth"] = run(args.steps, args.warmup, every)
    for r in report["peak"]:
        name, b, ratio, kept = "MLP " + "-".join(map(str, r["sizes"])), r["batch"], r["peak_over_floor"], \
            r["forward_kept_over_needed"]
        common.judge(report, f"peak/floor {name}@{b}", ratio <= PEAK_LIMIT, f"peak / floor {name} at batch {b}: "
                     f"{ratio:.3f} ({r['traced']['peak'] / MiB:.2f} / {r['floor']['total'] / MiB:.2f} MiB) (target <= "
                     f"{PEAK_LIMIT})", limit=PEAK_LIMIT, value=ratio)
        common.judge(report, f"forward keeps/needed {name}@{b}", kept <= KEPT_LIMIT, f"the forward keeps {kept:.2f}x "
                     f"what the VJPs read, {name} at batch {b} (target <= {KEPT_LIMIT})", limit=KEPT_LIMIT, value=kept)
    for key in ("loop", "trainer"):
        g = report[f"{key}_growth"]
        common.judge(report, f"rss growth {key}", g["growth_pct"] < GROWTH_LIMIT_PCT, f"RSS growth over {g['steps']} "
                     f"{key} steps: {g['growth_pct']:+.3f}% ({g['growth_mb']:+.3f} MiB, "
                     f"{g['growth_second_half_mb']:+.3f} in the second half) (target < {GROWTH_LIMIT_PCT:g}%)",
                     limit=GROWTH_LIMIT_PCT, value=g["growth_pct"], value_mb=g["growth_mb"])
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
