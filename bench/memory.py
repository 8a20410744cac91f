"""Memory of distbp training: the peak of one training step against its floor, and
resident-set growth over 10,000 steps, as a bare loop and through the Trainer.

    .venv/bin/python bench/memory.py                  # about 30 s
    .venv/bin/python bench/memory.py --quick          # CI smoke: 1,000 growth steps, about 10 s
    .venv/bin/python bench/memory.py --json out.json  # also write the figures as JSON
    .venv/bin/python bench/memory.py --strict         # exit 1 when a target fails

Peak. One training step (zero_grad, forward, cross-entropy, backward, Adam; float32, ReLU,
the user's code of bench/step.py) of the MLP 784-1024-1024-10 at batch 64 and 512, and of the
default config's MLP 64-256-10 at its batch 128, each in a fresh child process:

  * tracemalloc is started before the model is built, so it has traced every allocation the
    training set-up and the step make (numpy reports its data buffers to it): its peak during
    the step is the total of live bytes at the worst moment, the persistent buffers included
    (flat parameters, flat gradients, Adam's two moments and scratch, the batch, the model's
    and optimizer's Python objects), plus the graph and the temporaries. Two warm-up steps
    first, so lazily built state is already there.
  * The floor is params + grads + Adam state (2 moments) + activations, where activations are
    exactly the arrays the VJPs read, by formula: each Linear's input (the batch x, then each
    hidden ReLU output, which is also what ReLU's VJP reads), the logits (cross-entropy's VJP)
    and the int64 targets. Not in the floor, so inside the 1.5x allowance: pre-activations (no
    VJP reads them), activation gradients in flight during backward, the optimizer's scratch,
    Python objects. Target: peak / floor <= 1.5.
  * What the forward keeps (numpy bytes still alive once it returned, only the loss held) is
    compared with what backward reads of it (the floor's activations minus x and targets,
    which existed before): the "freed as soon as backward no longer needs it" target, within
    5% (the per-sample losses and scalars the graph keeps are far below that here).
  * Also the process view: peak RSS (VmHWM, reset through /proc/self/clear_refs after the
    warm-up) minus the RSS before the model was built, in a run without tracemalloc. It adds
    the allocator's slack (freed memory glibc keeps), so it is reported, not judged.

Growth. The default config's MLP at batch 128: RSS (after gc.collect()) after 500 warm-up
steps, then every 1,000 steps over 10,000 more; the same through ``distbp.train.Trainer`` on
synthetic data with logging, evaluation and checkpoints (where leaks tend to live). Target:
growth from the warm-up to the end < 1% of RSS. A short traced run counts the bytes Python
and numpy still hold after N more steps: a real leak shows there byte-exactly, independent of
the allocator.

Prints PASS/FAIL lines; the exit status is 0 unless --strict (then 1 if a target failed).
"""

from __future__ import annotations

import os

# One BLAS thread, set before numpy loads its BLAS, as in bench/step.py: the figures must not
# depend on how many threads (and per-thread buffers) OpenBLAS starts on a shared machine.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import linecache  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

from common import DistbpMLP, finish, machine_info  # noqa: E402  (bench/ is on sys.path)
from step import BETAS, EPS, LR, SIZES, rss_bytes  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from distbp.comm import LocalCommunicator  # noqa: E402
from distbp.train import Trainer, resolve  # noqa: E402

DEFAULT_SIZES = [64, 256, 10]  # configs/default.yaml's model
DEFAULT_BATCH = 128  # and its global batch
PEAK_LIMIT = 1.5
KEPT_LIMIT = 1.05
GROWTH_LIMIT_PCT = 1.0
MiB = 2 ** 20
NUMPY_DOMAIN = np.lib.tracemalloc_domain


# -- the floor ------------------------------------------------------------------------------
def floor_bytes(sizes: list[int], batch: int, itemsize: int = 4) -> dict[str, int]:
    """The issue's floor for an MLP of ``sizes`` with ReLU, cross-entropy and Adam: parameters,
    gradients, Adam's two moments, and the activations the VJPs read (see the module doc).
    ``kept_needed`` is the part of the activations the forward itself creates."""
    n_params = sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))
    p = n_params * itemsize
    x, targets = batch * sizes[0] * itemsize, batch * np.dtype(np.int64).itemsize
    made_by_forward = batch * (sum(sizes[1:-1]) + sizes[-1]) * itemsize  # hidden outputs, logits
    activations = x + targets + made_by_forward
    return {"params": p, "grads": p, "optimizer_state": 2 * p, "activations": activations,
            "kept_needed": made_by_forward, "total": 4 * p + activations, "n_params": n_params}


# -- one training step ------------------------------------------------------------------------
def make_step(sizes: list[int], batch: int, seed: int = 0) -> DistbpMLP:
    """The training step as a user writes it (``common.DistbpMLP``, the step bench/step.py
    times) on a random batch of ``batch`` rows. Only the step's own copy of x survives (the
    array passed in is dropped), as in a real loop where the loader's batch is the model input."""
    rng = np.random.default_rng([seed, batch])
    x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], size=batch)
    return DistbpMLP(x, y, sizes, LR, BETAS, EPS, seed=seed)


def _numpy_sites(snapshot: tracemalloc.Snapshot) -> dict[str, tuple[int, int]]:
    """numpy's data buffers in ``snapshot`` by allocating line: {"file:line": (bytes, count)}."""
    only_numpy = snapshot.filter_traces([tracemalloc.DomainFilter(True, NUMPY_DOMAIN)])
    return {f"{s.traceback[0].filename}:{s.traceback[0].lineno}": (s.size, s.count)
            for s in only_numpy.statistics("lineno")}


def _numpy_sites_now() -> dict[str, tuple[int, int]]:
    """``_numpy_sites`` of the live allocations now."""
    snap = tracemalloc.take_snapshot()
    try:
        return _numpy_sites(snap)
    finally:
        del snap  # the snapshot is traced too: drop it before anything else is measured


def _short_path(site: str) -> str:
    """A site relative to the checkout (distbp/...) or to site-packages (numpy/...)."""
    root = str(Path(__file__).resolve().parents[1]) + os.sep
    return site.split("site-packages" + os.sep, 1)[-1].replace(root, "")


def _site_diff(now: dict[str, tuple[int, int]], base: dict[str, tuple[int, int]]) -> list[dict]:
    """Sites that hold more than at ``base``, largest first, with the allocating source line."""
    rows = []
    for site, (size, count) in now.items():
        b_size, b_count = base.get(site, (0, 0))
        if size > b_size:
            filename, _, lineno = site.rpartition(":")
            rows.append({"site": _short_path(site), "bytes": size - b_size, "arrays": count - b_count,
                         "code": linecache.getline(filename, int(lineno)).strip()})
    return sorted(rows, key=lambda r: -r["bytes"])


def _total(sites: dict[str, tuple[int, int]]) -> int:
    return sum(size for size, _ in sites.values())


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """VmHWM, the peak resident set size since start or the last ``reset_peak_rss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure_peak(sizes: list[int], batch: int, warmup: int = 2) -> dict[str, Any]:
    """Everything about one configuration's step memory; runs in a fresh child process."""
    out: dict[str, Any] = {"sizes": sizes, "batch": batch, "warmup_steps": warmup,
                           "floor": floor_bytes(sizes, batch)}

    # Process view first, while no tracemalloc bookkeeping inflates the RSS.
    gc.collect()
    rss0 = rss_bytes()
    v = make_step(sizes, batch)
    for _ in range(warmup):
        v.step()
    gc.collect()
    rss_warm = rss_bytes()
    hwm = None
    if reset_peak_rss():
        v.step()
        hwm = peak_rss_bytes()
    out["rss"] = {"before_model": rss0, "after_warmup": rss_warm, "peak": hwm,
                  "peak_above_start": None if hwm is None else hwm - rss0}
    del v
    gc.collect()

    # Allocation view: every allocation since before the model existed is traced.
    tracemalloc.start(1)
    try:
        v = make_step(sizes, batch)
        for _ in range(warmup):
            v.step()
        gc.collect()
        base_sites = _numpy_sites_now()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        v.step()
        peak = tracemalloc.get_traced_memory()[1]

        # The same step again in phases: where the peak is, and what the forward keeps.
        gc.collect()
        base2 = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        loss = v.forward()
        fwd_peak = tracemalloc.get_traced_memory()[1]
        kept_sites = _numpy_sites_now()
        tracemalloc.reset_peak()
        v.backward(loss)
        bwd_peak = tracemalloc.get_traced_memory()[1]
        del loss
        tracemalloc.reset_peak()
        v.update()
        opt_peak = tracemalloc.get_traced_memory()[1]

        # Once more, looking inside backward each time a parameter's gradient is final: which
        # arrays are alive there (the true peak may sit between two looks, inside a VJP).
        looks: list[tuple[int, dict[str, tuple[int, int]]]] = []
        names = [n for n, _ in v.model.named_parameters()]
        v.opt.flat.on_grad_ready = lambda i: looks.append((i, _numpy_sites_now()))
        try:
            loss = v.forward()
            v.backward(loss)
            del loss
        finally:
            v.opt.flat.on_grad_ready = None
        v.update()
    finally:
        tracemalloc.stop()

    base_np = _total(base_sites)
    out["traced"] = {"base": base, "base_numpy": base_np, "peak": peak, "peak_over_base": peak - base,
                     "phase_peak_over_base": {"forward": fwd_peak - base2, "backward": bwd_peak - base2,
                                              "optimizer": opt_peak - base2}}
    out["peak_over_floor"] = peak / out["floor"]["total"]
    kept = _total(kept_sites) - base_np
    out["forward_kept_numpy"] = kept
    out["forward_kept_over_needed"] = kept / out["floor"]["kept_needed"]
    out["forward_kept_sites"] = _site_diff(kept_sites, base_sites)
    if looks:
        i, sites = max(looks, key=lambda look: _total(look[1]))
        out["backward_look"] = {"after_grad_of": names[i], "numpy_over_base": _total(sites) - base_np,
                                "sites": _site_diff(sites, base_sites)}
    if out["rss"]["peak_above_start"] is not None:
        out["rss_peak_over_floor"] = out["rss"]["peak_above_start"] / out["floor"]["total"]
    return out


def run_peak_child(sizes: list[int], batch: int) -> dict[str, Any]:
    """``measure_peak`` in a fresh interpreter: a heap and a VmHWM no other measurement touched."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak-child", f"{','.join(map(str, sizes))}:{batch}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"peak measurement of {sizes} at batch {batch} failed:\n{res.stdout}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- growth -------------------------------------------------------------------------------------
def _growth(samples: dict[int, int], warm_step: int) -> dict[str, Any]:
    """RSS samples {step: bytes} -> growth from ``warm_step`` to the last sample, and over the
    second half of the samples (a leak grows in both halves, a one-off allocator step in one)."""
    steps = sorted(samples)
    warm, end = samples[warm_step], samples[steps[-1]]
    after = [s for s in steps if s >= warm_step]
    mid = samples[after[len(after) // 2]]
    return {"rss_mb": {str(s): samples[s] / MiB for s in steps}, "warm_step": warm_step, "end_step": steps[-1],
            "rss_warm_mb": warm / MiB, "rss_end_mb": end / MiB, "growth_mb": (end - warm) / MiB,
            "growth_pct": 100.0 * (end - warm) / warm, "growth_second_half_mb": (end - mid) / MiB}


def loop_growth(steps: int, warmup: int, every: int) -> dict[str, Any]:
    """RSS of the bare training loop (default config's MLP, its batch) every ``every`` steps."""
    v = make_step(DEFAULT_SIZES, DEFAULT_BATCH, seed=3)
    samples: dict[int, int] = {}
    t0 = time.perf_counter()
    for done in range(warmup + steps + 1):
        if (done >= warmup and (done - warmup) % every == 0) or done == warmup + steps:
            gc.collect()
            samples[done] = rss_bytes()
        if done < warmup + steps:
            v.step()
    return {"sizes": DEFAULT_SIZES, "batch": DEFAULT_BATCH, "steps": steps, "warmup_steps": warmup,
            "seconds": time.perf_counter() - t0, **_growth(samples, warmup)}


def trainer_config(total: int, every: int) -> dict[str, Any]:
    """The default config (its model, batch, Adam), on synthetic blobs shaped like the digits
    (64 features, 10 classes) so no data set is needed; logs every 10 steps, evaluates and
    checkpoints every ``every``."""
    return resolve(None, [
        "data.name=synthetic", "data.samples=2000", "data.features=64", "data.classes=10",
        f"model.sizes={DEFAULT_SIZES}", f"train.global_batch={DEFAULT_BATCH}", "train.epochs=1000000",
        f"train.max_steps={total}", "train.log_every=10", f"train.eval_every={every}", "train.progress=plain",
        f"checkpoint.every={every}", "checkpoint.keep=2", "comm.backend=local", "comm.threads=1"])


class ProbedTrainer(Trainer):
    """The Trainer, calling ``probe(step)`` before the steps in ``probes``."""

    def __init__(self, *args: Any, probes: set[int], probe: Callable[[int], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._probes, self._probe = probes, probe

    def _train_step(self, step: int, *args: Any, **kwargs: Any) -> Any:
        if step in self._probes:
            self._probe(step)
        return super()._train_step(step, *args, **kwargs)


def run_trainer(total: int, every: int, probes: set[int], probe: Callable[[int], None]) -> float:
    """A whole Trainer run in a temporary run directory; its wall time. The log goes to
    /dev/null: a StringIO would grow with every line and pass for a leak."""
    with tempfile.TemporaryDirectory(prefix="distbp-memory-") as run_dir, open(os.devnull, "w") as sink:
        t0 = time.perf_counter()
        ProbedTrainer(trainer_config(total, every), run_dir=run_dir, resume="never", comm=LocalCommunicator(),
                      stream=sink, probes=probes, probe=probe).run()
        return time.perf_counter() - t0


def trainer_growth(steps: int, warmup: int, every: int) -> dict[str, Any]:
    """RSS of a Trainer run, before step ``warmup``, every ``every`` steps after it and before
    step ``warmup + steps`` (one more step follows, so the probe is inside the loop)."""
    end = warmup + steps
    probes = set(range(warmup, end, every)) | {end}
    samples: dict[int, int] = {}

    def probe(step: int) -> None:
        gc.collect()
        samples[step] = rss_bytes()

    seconds = run_trainer(end + 1, max(1, warmup // 2), probes, probe)
    return {"sizes": DEFAULT_SIZES, "batch": DEFAULT_BATCH, "steps": steps, "warmup_steps": warmup,
            "eval_and_checkpoint_every": max(1, warmup // 2), "seconds": seconds, **_growth(samples, warmup)}


def traced_growth(steps: int, warmup: int, trainer: bool) -> dict[str, Any]:
    """Bytes tracemalloc still counts after ``steps`` more steps (after a full collection): a
    leak shows byte-exactly, whatever the allocator keeps. Bare loop, then (``trainer``) the
    Trainer."""
    out: dict[str, Any] = {"steps": steps, "warmup_steps": warmup}
    half = steps // 2
    tracemalloc.start(1)
    try:
        v = make_step(DEFAULT_SIZES, DEFAULT_BATCH, seed=5)
        traced = []
        for n in (warmup, half, steps - half):
            for _ in range(n):
                v.step()
            gc.collect()
            traced.append(tracemalloc.get_traced_memory()[0])
        del v
        out["loop_bytes"] = traced[2] - traced[0]
        out["loop_second_half_bytes"] = traced[2] - traced[1]
        if not trainer:
            return out

        points = {warmup: 0, warmup + half: 0, warmup + steps: 0}

        def probe(step: int) -> None:
            gc.collect()
            points[step] = tracemalloc.get_traced_memory()[0]

        run_trainer(warmup + steps + 1, max(1, warmup // 2), set(points), probe)
        a, b, c = (points[s] for s in sorted(points))
        out["trainer_bytes"] = c - a
        out["trainer_second_half_bytes"] = c - b
    finally:
        tracemalloc.stop()
    return out


# -- report ---------------------------------------------------------------------------------------
def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MiB:.2f}"


def model_name(sizes: list[int]) -> str:
    return "MLP " + "-".join(map(str, sizes))


def print_peak(rows: list[dict[str, Any]]) -> None:
    header = (f"{'model':<22} {'batch':>5} {'P+G+Adam':>9} {'activ.':>7} {'floor':>7} {'peak':>7} "
              f"{'peak/floor':>10} {'(phase)':>10} {'fwd keeps':>9} {'/needed':>7} {'RSS peak':>8} {'/floor':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        f, t = r["floor"], r["traced"]
        phase = max(t["phase_peak_over_base"], key=t["phase_peak_over_base"].get)
        rss_ratio = r.get("rss_peak_over_floor")
        print(f"{model_name(r['sizes']):<22} {r['batch']:>5} {mib(f['total'] - f['activations']):>9} "
              f"{mib(f['activations']):>7} {mib(f['total']):>7} {mib(t['peak']):>7} {r['peak_over_floor']:>10.3f} "
              f"{phase:>10} {mib(r['forward_kept_numpy']):>9} {r['forward_kept_over_needed']:>7.2f} "
              f"{mib(r['rss']['peak_above_start']):>8} {'-' if rss_ratio is None else f'{rss_ratio:.2f}':>6}")
    print("(MiB. peak: all bytes tracemalloc saw alive at the step's worst moment, persistent buffers included; "
          "phase: where it was; fwd keeps: numpy bytes alive after forward; /needed: over the forward's arrays "
          "the VJPs read; RSS peak: VmHWM minus RSS before the model existed, allocator slack included)")
    for r in rows:
        print(f"\n{model_name(r['sizes'])} at batch {r['batch']}: the forward keeps {mib(r['forward_kept_numpy'])} MiB "
              f"of arrays, the VJPs read {mib(r['floor']['kept_needed'])} MiB of them (hidden outputs and logits):")
        for s in r["forward_kept_sites"][:4]:
            print(f"  {mib(s['bytes']):>7} MiB in {s['arrays']} array(s) from {s['site']}: {s['code'][:60]}")
        extra = r["forward_kept_numpy"] - r["floor"]["kept_needed"]
        if r["forward_kept_over_needed"] > KEPT_LIMIT:
            print(f"  -> {mib(extra)} MiB kept that no VJP reads: each hidden Linear's output before its "
                  "activation (ReLU's VJP reads the activation's output), held by the activation's graph record")
        look = r.get("backward_look")
        if look:
            print(f"  in backward, most alive after the gradient of {look['after_grad_of']}: "
                  f"{mib(look['numpy_over_base'])} MiB above the persistent buffers:")
            for s in look["sites"][:5]:
                print(f"  {mib(s['bytes']):>7} MiB in {s['arrays']} array(s) from {s['site']}: {s['code'][:60]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, help="growth steps after the warm-up (default 10000; --quick 1000)")
    ap.add_argument("--warmup", type=int, help="growth warm-up steps (default 500; --quick 100)")
    ap.add_argument("--traced-steps", type=int, help="steps of the traced leak check (default 1000; --quick 200)")
    ap.add_argument("--no-trainer", action="store_true", help="skip the Trainer's growth runs")
    ap.add_argument("--quick", action="store_true", help="CI smoke: fewer steps (explicit flags still win)")
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    ap.add_argument("--peak-child", metavar="SIZES:BATCH", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peak_child:
        sizes, batch = args.peak_child.split(":")
        print(json.dumps(measure_peak([int(n) for n in sizes.split(",")], int(batch))))
        return 0
    defaults = dict(steps=1000, warmup=100, traced_steps=200) if args.quick else \
        dict(steps=10000, warmup=500, traced_steps=1000)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < 2 or args.warmup < 2 or args.traced_steps < 2:
        ap.error("--steps, --warmup and --traced-steps must be >= 2")
    every = max(1, args.steps // 10)

    info = machine_info()
    print("bench/memory.py: peak memory of a training step against its floor, and RSS growth over many steps")
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), python {info['python']}, "
          f"numpy {info['numpy']}, BLAS {info['blas']} ({info['blas_threads']} thread); code {info['code']}")
    print()

    report: dict[str, Any] = {"machine": info, "command": sys.argv, "args": vars(args), "targets": {}}
    configs = [(SIZES, 64), (SIZES, 512), (DEFAULT_SIZES, DEFAULT_BATCH)]
    peaks = [run_peak_child(sizes, batch) for sizes, batch in configs]
    report["peak"] = peaks
    print("peak of one step (zero_grad, forward, cross-entropy, backward, Adam), float32, each in a fresh process; "
          "floor = params + grads + Adam's 2 moments + the activations the VJPs read")
    print_peak(peaks)
    print()

    loop = loop_growth(args.steps, args.warmup, every)
    report["loop_growth"] = loop
    print(f"growth, bare loop: {model_name(DEFAULT_SIZES)} at batch {DEFAULT_BATCH}, RSS {loop['rss_warm_mb']:.2f} MiB "
          f"after {args.warmup} warm-up steps, {loop['rss_end_mb']:.2f} MiB after {args.steps} more "
          f"({loop['seconds']:.1f} s): {loop['growth_mb']:+.3f} MiB ({loop['growth_pct']:+.3f}%), "
          f"{loop['growth_second_half_mb']:+.3f} MiB of it in the second half")
    print(f"  RSS every {every} steps (MiB): " + " ".join(f"{v:.2f}" for v in loop["rss_mb"].values()))
    if not args.no_trainer:
        tr = trainer_growth(args.steps, args.warmup, every)
        report["trainer_growth"] = tr
        print(f"growth, Trainer: the default config on synthetic data (64 features, 10 classes), logging every "
              f"10 steps, evaluating and checkpointing every {tr['eval_and_checkpoint_every']}: RSS "
              f"{tr['rss_warm_mb']:.2f} MiB before step {args.warmup}, {tr['rss_end_mb']:.2f} MiB before step "
              f"{tr['end_step']} ({tr['seconds']:.1f} s): {tr['growth_mb']:+.3f} MiB ({tr['growth_pct']:+.3f}%), "
              f"{tr['growth_second_half_mb']:+.3f} MiB of it in the second half")
        print(f"  RSS every {every} steps (MiB): " + " ".join(f"{v:.2f}" for v in tr["rss_mb"].values()))
    traced = traced_growth(args.traced_steps, min(args.warmup, 100), not args.no_trainer)
    report["traced_growth"] = traced
    traced_line = (f"traced (tracemalloc, after gc): over {traced['steps']} steps after {traced['warmup_steps']} "
                   f"warm-up, the bare loop holds {traced['loop_bytes']:+,} bytes more "
                   f"({traced['loop_second_half_bytes']:+,} in the second half)")
    if "trainer_bytes" in traced:
        traced_line += f", the Trainer {traced['trainer_bytes']:+,} ({traced['trainer_second_half_bytes']:+,})"
    print(traced_line)
    print()

    verdicts = []

    def target(key: str, limit: float, value: float, ok: bool, line: str) -> None:
        verdicts.append(ok)
        report["targets"][key] = {"limit": limit, "value": value, "ok": ok}
        print(f"{'PASS' if ok else 'FAIL'}  {line}")

    for r in peaks:
        name, b = model_name(r["sizes"]), r["batch"]
        ratio = r["peak_over_floor"]
        target(f"peak/floor {name}@{b}", PEAK_LIMIT, ratio, ratio <= PEAK_LIMIT,
               f"peak / floor {name} at batch {b}: {ratio:.3f} ({mib(r['traced']['peak'])} / "
               f"{mib(r['floor']['total'])} MiB) (target <= {PEAK_LIMIT})")
    for r in peaks:
        name, b = model_name(r["sizes"]), r["batch"]
        kept = r["forward_kept_over_needed"]
        target(f"forward keeps/needed {name}@{b}", KEPT_LIMIT, kept, kept <= KEPT_LIMIT,
               f"activations kept only while backward needs them, {name} at batch {b}: the forward keeps "
               f"{kept:.2f}x what the VJPs read ({mib(r['forward_kept_numpy'])} / "
               f"{mib(r['floor']['kept_needed'])} MiB) (target <= {KEPT_LIMIT})")
    for key, g, what in (("rss growth loop", loop, "bare training steps"),
                         ("rss growth trainer", report.get("trainer_growth"), "Trainer steps")):
        if g is None:
            continue
        target(key, GROWTH_LIMIT_PCT, g["growth_pct"], g["growth_pct"] < GROWTH_LIMIT_PCT,
               f"RSS growth over {g['steps']} {what}: {g['growth_pct']:+.3f}% ({g['growth_mb']:+.3f} MiB) "
               f"(target < {GROWTH_LIMIT_PCT:g}%)")
        # bench/run.py shows a "%" unit for targets that carry value_pct.
        report["targets"][key].update(value_pct=g["growth_pct"], value_mb=g["growth_mb"])

    return finish(report, args.json, args.strict, verdicts)


if __name__ == "__main__":
    sys.exit(main())
