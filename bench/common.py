"""What every benchmark prints first (the machine and the code it measured), how it ends
(``finish``), and the MLP training-step variants and interleaved timing that bench/step.py and
bench/deep.py share, and what the multi-process benchmarks share (the launcher, the
machine's other load, the order of interleaved rounds)."""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np


def machine_info() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    blas = "unknown"
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:  # older numpy has no mode="dicts"; the BLAS name is only informative
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    info = {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "host": platform.node(),
            "python": platform.python_version(), "numpy": np.__version__, "blas": blas,
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"), "loadavg_at_start": load}
    try:
        import importlib.metadata
        info["mpi4py"] = importlib.metadata.version("mpi4py")
    except Exception:
        info["mpi4py"] = "unknown"
    info["code"] = code_version()
    return info


def code_version() -> str:
    """The commit the measured distbp comes from, and whether distbp/ had uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "distbp"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    if not head:
        return "unknown (not a git checkout)"
    return f"git {head}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


# -- shared by the multi-process benchmarks (allreduce, scaling, tta) --------------------------
BUSY_CORES = 0.25  # other processes using more than this many cores during a job: say so, run it again


def mpiexec_path() -> Path:
    here = Path(sys.executable).parent / "mpiexec"
    if here.is_file():
        return here
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if found is None:
        raise SystemExit("mpiexec not found next to the interpreter nor on PATH; install the mpich wheel "
                         "(pip install mpich) or an MPI")
    return Path(found)


def _cpu_ticks() -> tuple[float, float, float]:
    """(busy, steal, total) seconds of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    steal = fields[7] if len(fields) > 7 else 0.0
    total = sum(fields[:8])
    return (total - idle - steal) / hz, steal / hz, total / hz


class CpuWatch:
    """CPU used by everything else on the machine while a job runs: the busy time of all
    CPUs minus what this process and its (waited-for) children used, in cores, and the time
    the hypervisor stole. The machine is shared; this says how shared it was."""

    def __enter__(self) -> "CpuWatch":
        self.t0, self.cpu0, self.me0 = time.perf_counter(), _cpu_ticks(), os.times()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.t0
        cpu1, me1 = _cpu_ticks(), os.times()
        mine = sum(getattr(me1, k) - getattr(self.me0, k)
                   for k in ("user", "system", "children_user", "children_system"))
        busy, steal, total = (b - a for a, b in zip(self.cpu0, cpu1))
        self.result = {"wall_s": wall, "other_cores": max(0.0, busy - mine) / max(wall, 1e-9),
                       "steal_pct": 100.0 * steal / max(total, 1e-9)}


def rotation(names: list[str], r: int) -> list[str]:
    """Round r's order: rotated by r, reversed every other round, as bench/step.py does."""
    k = r % len(names)
    order = names[k:] + names[:k]
    return order[::-1] if r % 2 else order


def finish(report: dict, json_path: str | None, strict: bool, verdicts: list[bool]) -> int:
    """Write the figures to ``--json PATH`` if asked; the exit status (1 under ``--strict``
    when a target failed, else 0: a benchmark reports, it does not judge by default)."""
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {json_path}")
    return 1 if strict and not all(verdicts) else 0


# -- MLP training steps: the variants bench/step.py and bench/deep.py time ---------------------
# An MLP of ``sizes`` (input, hidden..., classes) with ReLU after every hidden layer, softmax
# cross-entropy (mean over the batch) and Adam, float32. Each variant has ``name``, ``step()``
# and, for --phases, ``forward()``, ``backward(loss)`` and ``update()``.
class _UserStep:
    """The step as a user writes it in a framework with torch's names; a subclass sets
    ``model``, ``opt``, ``F`` (the functional module), ``x`` and ``y``."""

    def step(self) -> None:
        self.opt.zero_grad()
        loss = self.F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()

    # Phases for --phases: the same calls, split where a user's code would split them.
    def forward(self):
        self.opt.zero_grad()
        return self.F.cross_entropy(self.model(self.x), self.y)

    def backward(self, loss) -> None:
        loss.backward()

    def update(self) -> None:
        self.opt.step()


class DistbpMLP(_UserStep):
    """distbp as a user writes it: ``nn.MLP``, ``F.cross_entropy`` and ``optim.Adam``."""

    name = "distbp"

    def __init__(self, x: np.ndarray, y: np.ndarray, sizes: list[int], lr: float, betas: tuple[float, float],
                 eps: float, seed: int = 0) -> None:
        # Imported here, not at the top: the benchmarks that only need machine_info() and
        # finish() do not load distbp (and scripts put the checkout on sys.path first).
        import distbp as db
        import distbp.functional as F
        from distbp import nn, optim
        db.manual_seed(seed)
        self.F = F
        self.model = nn.MLP(sizes, activation="relu")
        self.opt = optim.Adam(self.model.parameters(), lr=lr, betas=betas, eps=eps)
        self.x, self.y = db.tensor(x), y

    def weights(self) -> list[np.ndarray]:
        """Per-layer (W, b) in (in, out) layout: W1, b1, W2, b2, ..."""
        return [p.data for p in self.model.parameters()]

    def grads(self) -> list[np.ndarray]:
        return [p.grad for p in self.model.parameters()]


class HandMLP:
    """The same step in plain numpy, the way a competent engineer writes it: every buffer
    allocated once, every op in place (matmul with out=, in-place bias and ReLU, the fused
    softmax-CE gradient), no gradient for the input x.

    Parameters live in one flat float32 buffer and gradients in another (W1, b1, W2, b2, ...,
    the order of distbp's named_parameters), so Adam is a handful of calls on whole buffers
    (``FlatAdam``, in distbp's blocks of ``block`` elements), as in distbp.
    """

    name = "hand"

    def __init__(self, x: np.ndarray, y: np.ndarray, init: list[np.ndarray], sizes: list[int], lr: float,
                 betas: tuple[float, float], eps: float, block: int | None) -> None:
        B = x.shape[0]
        shapes = [s for n_in, n_out in zip(sizes[:-1], sizes[1:]) for s in ((n_in, n_out), (n_out,))]
        counts = [int(np.prod(s)) for s in shapes]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        self.flat = np.empty(int(offsets[-1]), dtype=np.float32)
        self.gflat = np.zeros_like(self.flat)
        views = [(self.flat[a:a + n].reshape(s), self.gflat[a:a + n].reshape(s))
                 for a, n, s in zip(offsets, counts, shapes)]
        for (p, _), value in zip(views, init):
            p[...] = value
        self.W, self.gW = [w for w, _ in views[0::2]], [g for _, g in views[0::2]]
        self.b, self.gb = [b for b, _ in views[1::2]], [g for _, g in views[1::2]]
        self.x, self.y, self.B = x, y, B
        self.rows = np.arange(B)
        f32 = np.float32
        # h[i] is hidden layer i's output (after ReLU), dh[i] its gradient, mask[i] where h[i] > 0.
        h = [np.empty((B, n), f32) for n in sizes[1:-1]]
        dh = [np.empty_like(a) for a in h]
        mask = [np.empty(a.shape, bool) for a in h]
        self.z = np.empty((B, sizes[-1]), f32)
        self.p = np.empty_like(self.z)
        self.zmax = np.empty((B, 1), f32)
        self.zsum = np.empty((B, 1), f32)
        inputs = [x] + h
        # Per layer, everything the loops touch, gathered once: (input, W, b, output) forward;
        # backward, from the last layer, (input, W, gW, gb, input's gradient, input's mask),
        # the last two None for the first layer (no gradient for x).
        self._hidden = list(zip(inputs[:-1], self.W[:-1], self.b[:-1], h))
        self._last_in = inputs[-1]
        self._back = [(inputs[i], self.W[i], self.gW[i], self.gb[i], dh[i - 1] if i else None,
                       mask[i - 1] if i else None) for i in reversed(range(len(self.W)))]
        self.adam = FlatAdam(self.flat, self.gflat, lr, betas, eps, block)
        self.loss = 0.0

    def forward(self) -> float:
        for a, W, b, h in self._hidden:
            np.matmul(a, W, out=h)
            h += b
            np.maximum(h, 0, out=h)
        z, p = self.z, self.p
        np.matmul(self._last_in, self.W[-1], out=z)
        z += self.b[-1]
        # Stable softmax cross-entropy; p ends as dloss/dz = (softmax - onehot) / B.
        np.max(z, axis=1, keepdims=True, out=self.zmax)
        z -= self.zmax
        np.exp(z, out=p)
        np.sum(p, axis=1, keepdims=True, out=self.zsum)
        self.loss = float((np.log(self.zsum).sum() - z[self.rows, self.y].sum()) / self.B)
        p /= self.zsum
        p[self.rows, self.y] -= 1.0
        p *= 1.0 / self.B
        return self.loss

    def backward(self, _loss: float = 0.0) -> None:
        d = self.p
        for a, W, gW, gb, da, mask in self._back:
            np.matmul(a.T, d, out=gW)
            np.sum(d, axis=0, out=gb)
            if da is not None:
                np.matmul(d, W.T, out=da)
                np.greater(a, 0, out=mask)
                da *= mask
                d = da

    def update(self) -> None:
        self.adam.step()

    def step(self) -> None:
        self.backward(self.forward())
        self.update()

    def weights(self) -> list[np.ndarray]:
        return [t for pair in zip(self.W, self.b) for t in pair]

    def grads(self) -> list[np.ndarray]:
        return [t for pair in zip(self.gW, self.gb) for t in pair]


class FlatAdam:
    """Adam (torch's formula) on a flat parameter buffer and a flat gradient buffer with one
    preallocated temporary: the same in-place sequence as distbp/optim/adam.py (12 passes,
    the bias corrections folded into two scalars), run block by block like distbp's
    optimizer (blocks of ``block`` elements, distbp's ``optim.Adam.block_size``, so a block's
    arrays stay in cache across the passes; the temporary holds one block), so both sides do
    the same optimizer work and the comparison is about framework overhead.

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p -= lr / c1 * m / (sqrt(v) / c2 + eps)  ==  p - (lr c2 / c1) * m / (sqrt(v) + eps c2)
        with c1 = 1 - b1^t, c2 = sqrt(1 - b2^t)
    """

    def __init__(self, params: np.ndarray, grads: np.ndarray, lr: float, betas: tuple[float, float], eps: float,
                 block: int | None) -> None:
        self.p, self.g = params, grads
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)
        self.block = min(block or params.size, params.size)
        self.tmp = np.empty(self.block, dtype=params.dtype)
        self.t = 0

    def step(self) -> None:
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1.0 - b1 ** self.t, math.sqrt(1.0 - b2 ** self.t)
        one_b1, one_b2, eps_c2, scale = 1.0 - b1, 1.0 - b2, self.eps * c2, self.lr * (c2 / c1)
        n, size = self.p.size, self.block
        for start in range(0, n, size):
            end = start + size
            p, m, v, g = self.p[start:end], self.m[start:end], self.v[start:end], self.g[start:end]
            t = self.tmp[:p.size]
            m *= b1
            np.multiply(g, one_b1, out=t)
            m += t
            v *= b2
            np.multiply(g, g, out=t)
            t *= one_b2
            v += t
            np.sqrt(v, out=t)
            t += eps_c2
            np.divide(m, t, out=t)
            t *= scale
            p -= t


class TorchMLP(_UserStep):
    """PyTorch eager CPU as its users write it (``nn.Sequential``, ``F.cross_entropy``,
    ``torch.optim.Adam``); weights copied from ``init`` (transposed)."""

    name = "torch"

    def __init__(self, x: np.ndarray, y: np.ndarray, init: list[np.ndarray], sizes: list[int], lr: float,
                 betas: tuple[float, float], eps: float) -> None:
        torch = import_torch()
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(torch.nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers)
        linears = [m for m in self.model if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for lin, W, b in zip(linears, init[0::2], init[1::2]):
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
                lin.bias.copy_(torch.from_numpy(b))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, betas=betas, eps=eps)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.F = torch.nn.functional


def make_variants(x: np.ndarray, y: np.ndarray, sizes: list[int], lr: float, betas: tuple[float, float],
                  eps: float, with_torch: bool, seed: int = 0) -> list:
    """distbp, hand and (``with_torch``) torch on batch (x, y), all from distbp's initial weights."""
    a = DistbpMLP(x, y, sizes, lr, betas, eps, seed=seed)
    init = [w.copy() for w in a.weights()]
    variants = [a, HandMLP(x, y, init, sizes, lr, betas, eps, a.opt.block_size)]
    if with_torch:
        variants.append(TorchMLP(x, y, init, sizes, lr, betas, eps))
    return variants


def torch_version() -> str | None:
    """torch's version if it is installed, without importing it (so a benchmark can measure
    something before torch's few hundred MB are loaded)."""
    try:
        if importlib.util.find_spec("torch") is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def import_torch():
    """torch, limited to one thread like the BLAS of the other variants."""
    import torch
    torch.set_num_threads(1)
    return torch


def check_same_math(a, b, names: list[str], steps: int, rtol: float) -> dict:
    """Variants ``a`` and ``b`` (with ``forward``, ``backward``, ``update``, ``weights`` and
    ``grads``), started from identical weights and batch, run ``steps`` steps. Each step's
    gradients must agree per tensor (the sharp test that both compute the same backprop), and
    the parameters at the end over the whole buffer, both norm-wise relative to ``rtol``.
    Per tensor, parameters can differ by a few 1e-5: Adam's first steps divide by |g|, which
    turns float32 rounding of near-zero gradients into a visible relative change."""

    def rel(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.linalg.norm(u - v)) / max(float(np.linalg.norm(v)), 1e-30)

    grad_rel = {n: 0.0 for n in names}
    for _ in range(steps):
        b.backward(b.forward())
        a.backward(a.forward())
        for n, ga, gb in zip(names, a.grads(), b.grads()):
            grad_rel[n] = max(grad_rel[n], rel(ga, gb))
        a.update()
        b.update()
    param_rel = {n: rel(pa, pb) for n, pa, pb in zip(names, a.weights(), b.weights())}
    whole = rel(np.concatenate([w.ravel() for w in a.weights()]), np.concatenate([w.ravel() for w in b.weights()]))
    worst_grad = max(grad_rel.values())
    return {"steps": steps, "max_rel_grad": worst_grad, "rel_params": whole, "rel_grad_per_tensor": grad_rel,
            "rel_param_per_tensor": param_rel, "ok": worst_grad <= rtol and whole <= rtol}


# -- interleaved timing ------------------------------------------------------------------------
def rounds(variants: list, steps: int, n_rounds: int, warmup: int, rewarm: int):
    """``warmup`` untimed steps of each variant, then yield (variant, count) for ``n_rounds``
    rounds of ceil(steps / n_rounds) steps each. The order rotates every round and reverses
    every other one, so drift and bursts of a shared machine hit every variant alike. Each
    turn starts with ``rewarm`` untimed steps: the variant that ran before evicted this one's
    weights and optimizer state from the caches, which a real training loop never does."""
    for v in variants:
        for _ in range(warmup):
            v.step()
    per_round = max(1, -(-steps // n_rounds))
    for r in range(n_rounds):
        for v in rotation(variants, r):
            for _ in range(rewarm):
                v.step()
            yield v, per_round


def interleaved(variants: list, steps: int, n_rounds: int, warmup: int, rewarm: int) -> dict[str, list[float]]:
    """Per-step times (seconds) of each variant, measured in interleaved rounds."""
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    clock = time.perf_counter
    for v, n in rounds(variants, steps, n_rounds, warmup, rewarm):
        out, step = times[v.name], v.step
        for _ in range(n):
            t0 = clock()
            step()
            out.append(clock() - t0)
    return times


def phase_times(variants: list, steps: int, n_rounds: int, warmup: int, rewarm: int) -> dict[str, dict[str, float]]:
    """Median forward / backward / optimizer time (seconds) of each variant, interleaved."""
    acc = {v.name: {"forward": [], "backward": [], "optimizer": []} for v in variants}
    clock = time.perf_counter
    for v, n in rounds(variants, steps, n_rounds, warmup, rewarm):
        a = acc[v.name]
        for _ in range(n):
            t0 = clock()
            loss = v.forward()
            t1 = clock()
            v.backward(loss)
            t2 = clock()
            v.update()
            t3 = clock()
            a["forward"].append(t1 - t0)
            a["backward"].append(t2 - t1)
            a["optimizer"].append(t3 - t2)
    return {name: {k: statistics.median(ts) for k, ts in a.items()} for name, a in acc.items()}


def summarize(times: dict[str, list[float]]) -> dict:
    """Median and quartiles per variant, and the spread: the largest interquartile range /
    median among the variants (above ~10% the machine was busy)."""
    med = {k: statistics.median(ts) for k, ts in times.items()}
    quart = {k: statistics.quantiles(ts, n=4) for k, ts in times.items() if len(ts) > 1}
    spread = max(((q[2] - q[0]) / med[k] for k, q in quart.items()), default=0.0)
    return {"median_s": med, "quartiles_s": quart, "spread": spread}


# -- what bench/step.py and bench/deep.py print ----------------------------------------------
def print_header(title: str, no_torch: bool) -> tuple[dict, str | None]:
    """Print the title, the command, the machine, the code and torch's version; return
    ``machine_info()`` (with "torch" added when it is used) and torch's version (None: skipped)."""
    info = machine_info()
    print(title)
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
          f"python {info['python']}, numpy {info['numpy']}, BLAS {info['blas']} "
          f"({info['blas_threads']} thread)")
    print(f"code: {info['code']}")
    version = None if no_torch else torch_version()
    if version is None:
        print("torch: skipped (--no-torch)" if no_torch else "torch not installed: skipped")
    else:
        info["torch"] = version
        print(f"torch {version} (1 thread)")
    print()
    return info, version


def print_check(chk: dict, rtol: float) -> bool:
    """Print the line of a ``check_same_math`` result (with "batch" added) and, on a mismatch,
    the per-tensor figures; whether the check passed (if not, timing would be meaningless)."""
    print(f"check batch {chk['batch']}: distbp vs hand, {chk['steps']} steps from the same weights: gradients "
          f"differ by <= {chk['max_rel_grad']:.1e} (per tensor), parameters by {chk['rel_params']:.1e} "
          f"(relative norm) -> {'OK' if chk['ok'] else 'MISMATCH'} (tolerance {rtol:g})")
    if not chk["ok"]:
        print("  gradients per tensor:", json.dumps(chk["rel_grad_per_tensor"]))
        print("  parameters per tensor:", json.dumps(chk["rel_param_per_tensor"]))
        print("the hand-written reference does not compute what distbp computes: timings would be meaningless")
    return chk["ok"]


def timing_intro(steps: int, n_rounds: int, warmup: int, rewarm: int) -> str:
    """The line that says how the table below was measured."""
    return (f"timing: {warmup} warm-up steps, then {steps} timed steps per variant in {n_rounds} interleaved "
            f"rounds ({rewarm} untimed steps first in each); median step time; spread = largest "
            f"interquartile range / median of the variants")


def time_batch(variants: list, steps: int, n_rounds: int, warmup: int, rewarm: int, phases: bool) -> dict:
    """Time ``make_variants``' variants interleaved: the figures of ``summarize``, the ratios
    distbp/hand and distbp/torch, with ``phases`` the median phase times, and every step's time."""
    times = interleaved(variants, steps, n_rounds, warmup, rewarm)
    row = {"steps": {k: len(ts) for k, ts in times.items()}, **summarize(times)}
    med = row["median_s"]
    row["distbp_over_hand"] = med["distbp"] / med["hand"]
    if "torch" in med:
        row["distbp_over_torch"] = med["distbp"] / med["torch"]
    if phases:
        row["phases_s"] = phase_times(variants, steps, n_rounds, 2, rewarm)
    row["times_s"] = times
    return row


TABLE_HEAD = f"{'batch':>5} {'distbp ms':>10} {'hand ms':>9} {'torch ms':>9} {'distbp/hand':>12} {'distbp/torch':>13}"


def table_cells(batch: int, row: dict, ms: Callable[[float], str]) -> str:
    """The cells of ``TABLE_HEAD`` for one ``time_batch`` row ("-" where torch was skipped)."""
    med = row["median_s"]
    t_ms = ms(med["torch"]) if "torch" in med else f"{'-':>8}"
    t_ratio = f"{row['distbp_over_torch']:13.3f}" if "torch" in med else f"{'-':>13}"
    return (f"{batch:>5} {ms(med['distbp']):>10} {ms(med['hand']):>9} {t_ms:>9} {row['distbp_over_hand']:12.3f} "
            f"{t_ratio}")


def print_phases(rows: dict[str, dict], ms: Callable[[float], str]) -> None:
    """The forward / backward / optimizer medians of every variant at every batch."""
    print()
    print(f"{'phases (median ms)':<22} {'forward':>9} {'backward':>9} {'optimizer':>10}")
    for batch, row in rows.items():
        for name, ph in row["phases_s"].items():
            print(f"  batch {batch:<4} {name:<8} {ms(ph['forward']):>9} {ms(ph['backward']):>9} "
                  f"{ms(ph['optimizer']):>10}")


def print_noisy(rows: dict[str, dict], limit: float) -> bool:
    """A NOISY line if any batch's spread is above ``limit``; whether there was one."""
    noisy = {batch: row["spread"] for batch, row in rows.items() if row["spread"] > limit}
    if noisy:
        print("NOISY  the machine was busy: spread "
              + ", ".join(f"{100 * v:.0f}% at batch {batch}" for batch, v in noisy.items())
              + f" (> {100 * limit:.0f}%); rerun before trusting the verdicts below")
    return bool(noisy)


def ratio_target(report: dict, verdicts: list[bool], key: str, what: str, value: float, limit: float) -> None:
    """Judge ``value <= limit``: into ``report["targets"][key]`` and ``verdicts``, and a PASS/FAIL line."""
    ok = value <= limit
    verdicts.append(ok)
    report["targets"][key] = {"limit": limit, "value": value, "ok": ok}
    print(f"{'PASS' if ok else 'FAIL'}  {what}: {value:.3f} (target <= {limit:.2f})")


def print_table(batches: list[int], make: Callable[[int], list], steps: int, n_rounds: int, warmup: int,
                rewarm: int, phases: bool, ms: Callable[[float], str], extra_head: str = "",
                extra: Callable[[list, dict], str] | None = None) -> dict[str, dict]:
    """Time the variants ``make(batch)`` returns at each batch (``time_batch``) and print one
    table row per batch, then the phases if asked; the rows by batch. ``extra(variants, row)``
    may add figures to a row and returns the cells it prints under ``extra_head``."""
    header = f"{TABLE_HEAD}{extra_head} {'spread':>7}"
    print(header)
    print("-" * len(header))
    rows: dict[str, dict] = {}
    for batch in batches:
        variants = make(batch)
        row = time_batch(variants, steps, n_rounds, warmup, rewarm, phases)
        cells = extra(variants, row) if extra is not None else ""
        rows[str(batch)] = row
        print(f"{table_cells(batch, row, ms)}{cells} {100 * row['spread']:6.1f}%")
        del variants  # before the next batch's variants exist: one set of buffers at a time
        gc.collect()
    if phases:
        print_phases(rows, ms)
    print()
    return rows


# -- the command line of bench/step.py and bench/deep.py ----------------------------------------
def step_arg_parser(doc: str, full: dict[str, int], quick: dict[str, int],
                    batches: list[int]) -> argparse.ArgumentParser:
    """The options both step benchmarks take; ``full`` and ``quick`` hold the defaults of
    --steps, --rounds and --warmup (and of any option the script adds) without and with --quick,
    filled in by ``parse_step_args``."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int,
                    help=f"timed steps per variant and batch (default {full['steps']}; --quick {quick['steps']})")
    ap.add_argument("--rounds", type=int,
                    help=f"interleaving rounds (default {full['rounds']}; --quick {quick['rounds']})")
    ap.add_argument("--warmup", type=int,
                    help=f"untimed steps per variant first (default {full['warmup']}; --quick {quick['warmup']})")
    ap.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=batches,
                    help=f"comma-separated batch sizes (default {','.join(map(str, batches))})")
    ap.add_argument("--quick", action="store_true", help="CI smoke: fewer steps (explicit flags still win)")
    ap.add_argument("--phases", action="store_true", help="also time forward, backward and optimizer separately")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    return ap


def parse_step_args(ap: argparse.ArgumentParser, argv: list[str] | None, full: dict[str, int],
                    quick: dict[str, int]) -> argparse.Namespace:
    """Parse, then give every option left unset its default from ``full`` or, with --quick, ``quick``."""
    args = ap.parse_args(argv)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args
