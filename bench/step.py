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

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from common import finish, machine_info  # noqa: E402  (bench/ is on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import distbp as db  # noqa: E402
import distbp.functional as F  # noqa: E402
from distbp import nn, optim  # noqa: E402

SIZES = [784, 1024, 1024, 10]
LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
TARGETS = {64: 1.10, 512: 1.05}  # distbp / hand must not exceed these
CHECK_STEPS = 3
CHECK_RTOL = 1e-5
REWARM = 2  # untimed steps at the start of each turn in a round (see _rounds)
NOISY_SPREAD = 0.10  # interquartile range / median above this: a busy machine, verdicts unreliable


# -- the batch ------------------------------------------------------------------------------
def make_batch(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], size=batch)
    return x, y


# -- (a) distbp -----------------------------------------------------------------------------
class DistbpStep:
    """distbp as a user writes it."""

    name = "distbp"

    def __init__(self, x: np.ndarray, y: np.ndarray, seed: int = 0) -> None:
        db.manual_seed(seed)
        self.model = nn.MLP(SIZES, activation="relu")
        self.opt = optim.Adam(self.model.parameters(), lr=LR, betas=BETAS, eps=EPS)
        self.x, self.y = db.tensor(x), y

    def step(self) -> None:
        self.opt.zero_grad()
        loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()

    # Phases for --phases: the same calls, split where a user's code would split them.
    def forward(self):
        self.opt.zero_grad()
        return F.cross_entropy(self.model(self.x), self.y)

    def backward(self, loss) -> None:
        loss.backward()

    def update(self) -> None:
        self.opt.step()

    def weights(self) -> list[np.ndarray]:
        """Per-layer (W, b) in (in, out) layout: W1, b1, W2, b2, W3, b3."""
        return [p.data for p in self.model.parameters()]


# -- (b) the hand-written reference ---------------------------------------------------------
class HandStep:
    """The same step in plain numpy: every buffer allocated once, every op in place.

    Parameters live in one flat float32 buffer and gradients in another (W1, b1, W2, b2, W3,
    b3, the order of distbp's named_parameters), so Adam is a handful of calls on whole
    buffers, as in distbp. No gradient is computed for the input x.
    """

    name = "hand"

    def __init__(self, x: np.ndarray, y: np.ndarray, init: list[np.ndarray]) -> None:
        B = x.shape[0]
        shapes = [s for n_in, n_out in zip(SIZES[:-1], SIZES[1:]) for s in ((n_in, n_out), (n_out,))]
        sizes = [int(np.prod(s)) for s in shapes]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.flat = np.empty(int(offsets[-1]), dtype=np.float32)
        self.gflat = np.zeros_like(self.flat)
        views = [(self.flat[a:a + n].reshape(s), self.gflat[a:a + n].reshape(s))
                 for a, n, s in zip(offsets, sizes, shapes)]
        for (p, _), value in zip(views, init):
            p[...] = value
        (self.W1, self.gW1), (self.b1, self.gb1), (self.W2, self.gW2), (self.b2, self.gb2), \
            (self.W3, self.gW3), (self.b3, self.gb3) = views
        self.x, self.y, self.B = x, y, B
        self.rows = np.arange(B)
        f32 = np.float32
        self.h1 = np.empty((B, SIZES[1]), f32)
        self.h2 = np.empty((B, SIZES[2]), f32)
        self.z = np.empty((B, SIZES[3]), f32)
        self.p = np.empty_like(self.z)
        self.zmax = np.empty((B, 1), f32)
        self.zsum = np.empty((B, 1), f32)
        self.dh1 = np.empty_like(self.h1)
        self.dh2 = np.empty_like(self.h2)
        self.mask1 = np.empty(self.h1.shape, bool)
        self.mask2 = np.empty(self.h2.shape, bool)
        self.adam = FlatAdam(self.flat, self.gflat)
        self.loss = 0.0

    def forward(self) -> float:
        x, h1, h2, z, p = self.x, self.h1, self.h2, self.z, self.p
        np.matmul(x, self.W1, out=h1)
        h1 += self.b1
        np.maximum(h1, 0, out=h1)
        np.matmul(h1, self.W2, out=h2)
        h2 += self.b2
        np.maximum(h2, 0, out=h2)
        np.matmul(h2, self.W3, out=z)
        z += self.b3
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
        dz, h1, h2, dh1, dh2 = self.p, self.h1, self.h2, self.dh1, self.dh2
        np.matmul(h2.T, dz, out=self.gW3)
        np.sum(dz, axis=0, out=self.gb3)
        np.matmul(dz, self.W3.T, out=dh2)
        np.greater(h2, 0, out=self.mask2)
        dh2 *= self.mask2
        np.matmul(h1.T, dh2, out=self.gW2)
        np.sum(dh2, axis=0, out=self.gb2)
        np.matmul(dh2, self.W2.T, out=dh1)
        np.greater(h1, 0, out=self.mask1)
        dh1 *= self.mask1
        np.matmul(self.x.T, dh1, out=self.gW1)
        np.sum(dh1, axis=0, out=self.gb1)

    def update(self) -> None:
        self.adam.step()

    def step(self) -> None:
        self.backward(self.forward())
        self.update()

    def weights(self) -> list[np.ndarray]:
        return [self.W1, self.b1, self.W2, self.b2, self.W3, self.b3]

    def grads(self) -> list[np.ndarray]:
        return [self.gW1, self.gb1, self.gW2, self.gb2, self.gW3, self.gb3]


class FlatAdam:
    """Adam (torch's formula) on a flat parameter buffer and a flat gradient buffer with one
    preallocated temporary: the same in-place sequence as distbp/optim/adam.py (12 passes,
    the bias corrections folded into two scalars), run block by block like distbp's
    optimizer (blocks of ``optim.Adam.block_size`` elements, so a block's arrays stay in
    cache across the passes; the temporary holds one block), so both sides do the same
    optimizer work and the comparison is about framework overhead.

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p -= lr / c1 * m / (sqrt(v) / c2 + eps)  ==  p - (lr c2 / c1) * m / (sqrt(v) + eps c2)
        with c1 = 1 - b1^t, c2 = sqrt(1 - b2^t)
    """

    def __init__(self, params: np.ndarray, grads: np.ndarray) -> None:
        self.p, self.g = params, grads
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)
        self.block = min(optim.Adam.block_size or params.size, params.size)
        self.tmp = np.empty(self.block, dtype=params.dtype)
        self.t = 0

    def step(self) -> None:
        b1, b2 = BETAS
        self.t += 1
        c1, c2 = 1.0 - b1 ** self.t, math.sqrt(1.0 - b2 ** self.t)
        one_b1, one_b2, eps_c2, scale = 1.0 - b1, 1.0 - b2, EPS * c2, LR * (c2 / c1)
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


# -- (c) PyTorch ----------------------------------------------------------------------------
class TorchStep:
    """PyTorch eager CPU as its users write it; weights copied from ``init`` (transposed)."""

    name = "torch"

    def __init__(self, x: np.ndarray, y: np.ndarray, init: list[np.ndarray]) -> None:
        torch = import_torch()
        layers = []
        for i, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
            layers.append(torch.nn.Linear(n_in, n_out))
            if i < len(SIZES) - 2:
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers)
        linears = [m for m in self.model if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for lin, W, b in zip(linears, init[0::2], init[1::2]):
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
                lin.bias.copy_(torch.from_numpy(b))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR, betas=BETAS, eps=EPS)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.F = torch.nn.functional

    def step(self) -> None:
        self.opt.zero_grad()
        loss = self.F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()

    def forward(self):
        self.opt.zero_grad()
        return self.F.cross_entropy(self.model(self.x), self.y)

    def backward(self, loss) -> None:
        loss.backward()

    def update(self) -> None:
        self.opt.step()


def torch_version() -> str | None:
    """torch's version if it is installed, without importing it (the memory check runs first,
    so torch's few hundred MB are not part of its baseline)."""
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
    import torch
    torch.set_num_threads(1)
    return torch


# -- measurement ----------------------------------------------------------------------------
def check_same_math(x: np.ndarray, y: np.ndarray) -> dict:
    """distbp and hand from identical weights and batch, CHECK_STEPS steps. Each step's
    gradients must agree per tensor (the sharp test that both compute the same backprop), and
    the parameters at the end over the whole buffer, both norm-wise relative to CHECK_RTOL.
    Per tensor, parameters can differ by a few 1e-5: Adam's first steps divide by |g|, which
    turns float32 rounding of near-zero gradients into a visible relative change."""
    a = DistbpStep(x, y, seed=1)
    start = [w.copy() for w in a.weights()]
    b = HandStep(x, y, start)
    names = [f"{k}{i}" for i in range(1, len(SIZES)) for k in ("W", "b")]

    def rel(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.linalg.norm(u - v)) / max(float(np.linalg.norm(v)), 1e-30)

    grad_rel = {n: 0.0 for n in names}
    for _ in range(CHECK_STEPS):
        b.backward(b.forward())
        a.backward(a.forward())
        for n, p, g in zip(names, a.model.parameters(), b.grads()):
            grad_rel[n] = max(grad_rel[n], rel(p.grad, g))
        a.update()
        b.update()
    param_rel = {n: rel(pa, pb) for n, pa, pb in zip(names, a.weights(), b.weights())}
    whole = rel(np.concatenate([w.ravel() for w in a.weights()]), b.flat)
    worst_grad = max(grad_rel.values())
    return {"batch": len(y), "steps": CHECK_STEPS, "max_rel_grad": worst_grad, "rel_params": whole,
            "rel_grad_per_tensor": grad_rel, "rel_param_per_tensor": param_rel,
            "ok": worst_grad <= CHECK_RTOL and whole <= CHECK_RTOL}


def _rounds(variants: list, steps: int, rounds: int, warmup: int):
    """``warmup`` untimed steps of each variant, then yield (variant, count) for ``rounds``
    rounds of ceil(steps / rounds) steps each. The order rotates every round and reverses
    every other one, so drift and bursts of a shared machine hit every variant alike. Each
    turn starts with REWARM untimed steps: the variant that ran before evicted this one's
    weights and optimizer state from the caches, which a real training loop never does."""
    for v in variants:
        for _ in range(warmup):
            v.step()
    per_round = max(1, -(-steps // rounds))
    for r in range(rounds):
        k = r % len(variants)
        order = variants[k:] + variants[:k]
        for v in (order[::-1] if r % 2 else order):
            for _ in range(REWARM):
                v.step()
            yield v, per_round


def interleaved(variants: list, steps: int, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Per-step times (seconds) of each variant, measured in interleaved rounds."""
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    clock = time.perf_counter
    for v, n in _rounds(variants, steps, rounds, warmup):
        out, step = times[v.name], v.step
        for _ in range(n):
            t0 = clock()
            step()
            out.append(clock() - t0)
    return times


def phase_times(variants: list, steps: int, rounds: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median forward / backward / optimizer time (seconds) of each variant, interleaved."""
    acc = {v.name: {"forward": [], "backward": [], "optimizer": []} for v in variants}
    clock = time.perf_counter
    for v, n in _rounds(variants, steps, rounds, warmup):
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


def rss_bytes() -> int:
    """Current resident set size (not the peak), from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_run(steps: int, warmup: int, batch: int = 64) -> dict:
    """RSS after ``warmup`` distbp steps, after half of ``steps`` more and after all of them:
    a leak grows in both halves, a one-off allocator step only in one."""
    x, y = make_batch(batch, seed=2)
    v = DistbpStep(x, y, seed=3)
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, help="timed steps per variant and batch (default 50; --quick 10)")
    ap.add_argument("--rounds", type=int, help="interleaving rounds (default 10; --quick 2)")
    ap.add_argument("--warmup", type=int, help="untimed steps per variant first (default 5; --quick 2)")
    ap.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[64, 512],
                    help="comma-separated batch sizes (default 64,512)")
    ap.add_argument("--mem-steps", type=int, help="distbp steps of the RSS check (default 1000; --quick 100)")
    ap.add_argument("--quick", action="store_true", help="CI smoke: fewer steps (explicit flags still win)")
    ap.add_argument("--phases", action="store_true", help="also time forward, backward and optimizer separately")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a timing or memory target fails")
    args = ap.parse_args(argv)
    defaults = dict(steps=10, rounds=2, warmup=2, mem_steps=100) if args.quick else \
        dict(steps=50, rounds=10, warmup=5, mem_steps=1000)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0 or args.mem_steps < 2:
        ap.error("--steps and --rounds must be >= 1, --warmup >= 0, --mem-steps >= 2")
    mem_warmup = 10 if args.quick else 50

    info = machine_info()
    print("bench/step.py: one training step of MLP 784-1024-1024-10 (ReLU, softmax CE, Adam), float32")
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
          f"python {info['python']}, numpy {info['numpy']}, BLAS {info['blas']} "
          f"({info['blas_threads']} thread)")
    version = None if args.no_torch else torch_version()
    if version is None:
        print("torch: skipped (--no-torch)" if args.no_torch else "torch not installed: skipped")
    else:
        info["torch"] = version
        print(f"torch {version} (1 thread)")
    print()

    report: dict = {"machine": info, "command": sys.argv, "args": vars(args), "checks": [],
                    "batches": {}, "targets": {}}
    for B in args.batches:
        chk = check_same_math(*make_batch(B, seed=4))
        report["checks"].append(chk)
        print(f"check batch {B}: distbp vs hand, {chk['steps']} steps from the same weights: gradients "
              f"differ by <= {chk['max_rel_grad']:.1e} (per tensor), parameters by {chk['rel_params']:.1e} "
              f"(relative norm) -> {'OK' if chk['ok'] else 'MISMATCH'} (tolerance {CHECK_RTOL:g})")
        if not chk["ok"]:
            print("  gradients per tensor:", json.dumps(chk["rel_grad_per_tensor"]))
            print("  parameters per tensor:", json.dumps(chk["rel_param_per_tensor"]))
            print("the hand-written reference does not compute what distbp computes: timings would be meaningless")
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
    print(f"timing: {args.warmup} warm-up steps, then {args.steps} timed steps per variant in "
          f"{args.rounds} interleaved rounds ({REWARM} untimed steps first in each); median step "
          f"time; spread = largest interquartile range / median of the variants")
    header = (f"{'batch':>5} {'distbp ms':>10} {'hand ms':>9} {'torch ms':>9} {'distbp/hand':>12} "
              f"{'distbp/torch':>13} {'spread':>7}")
    print(header)
    print("-" * len(header))
    for B in args.batches:
        x, y = make_batch(B)
        a = DistbpStep(x, y, seed=0)
        variants = [a, HandStep(x, y, [w.copy() for w in a.weights()])]
        if torch is not None:
            variants.append(TorchStep(x, y, [w.copy() for w in a.weights()]))
        times = interleaved(variants, args.steps, args.rounds, args.warmup)
        med = {k: statistics.median(ts) for k, ts in times.items()}
        quart = {k: statistics.quantiles(ts, n=4) for k, ts in times.items() if len(ts) > 1}
        spread = max(((q[2] - q[0]) / med[k] for k, q in quart.items()), default=0.0)
        row = {"steps": {k: len(ts) for k, ts in times.items()}, "median_s": med, "quartiles_s": quart,
               "spread": spread, "distbp_over_hand": med["distbp"] / med["hand"], "times_s": times}
        if "torch" in med:
            row["distbp_over_torch"] = med["distbp"] / med["torch"]
        if args.phases:
            row["phases_s"] = phase_times(variants, args.steps, args.rounds, 2)
        report["batches"][str(B)] = row
        t_ms = ms(med["torch"]) if "torch" in med else f"{'-':>8}"
        t_ratio = f"{row['distbp_over_torch']:13.3f}" if "torch" in med else f"{'-':>13}"
        print(f"{B:>5} {ms(med['distbp']):>10} {ms(med['hand']):>9} {t_ms:>9} "
              f"{row['distbp_over_hand']:12.3f} {t_ratio} {100 * spread:6.1f}%")
        del variants, a
        gc.collect()

    if args.phases:
        print()
        print(f"{'phases (median ms)':<22} {'forward':>9} {'backward':>9} {'optimizer':>10}")
        for B in args.batches:
            for name, ph in report["batches"][str(B)]["phases_s"].items():
                print(f"  batch {B:<4} {name:<8} {ms(ph['forward']):>9} {ms(ph['backward']):>9} "
                      f"{ms(ph['optimizer']):>10}")

    print()
    noisy = {B: row["spread"] for B, row in report["batches"].items() if row["spread"] > NOISY_SPREAD}
    if noisy:
        print("NOISY  the machine was busy: spread " + ", ".join(f"{100 * v:.0f}% at batch {B}" for B, v in noisy.items())
              + f" (> {100 * NOISY_SPREAD:.0f}%); rerun before trusting the verdicts below")
    report["noisy"] = bool(noisy)
    verdicts = []
    for B, limit in TARGETS.items():
        row = report["batches"].get(str(B))
        if row is None:
            continue
        ok = row["distbp_over_hand"] <= limit
        verdicts.append(ok)
        report["targets"][f"distbp/hand@{B}"] = {"limit": limit, "value": row["distbp_over_hand"], "ok": ok}
        print(f"{'PASS' if ok else 'FAIL'}  distbp/hand at batch {B}: {row['distbp_over_hand']:.3f} (target <= {limit:.2f})")
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
