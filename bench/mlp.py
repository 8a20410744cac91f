"""The MLP training step that step.py and deep.py time and memory.py measures, in three variants
(distbp as a user writes it, the same math hand-written in numpy, PyTorch eager), the check that
distbp and hand compute the same thing, and the interleaved timing."""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
from typing import Callable

import numpy as np

import common

LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8


def import_torch():
    """torch, limited to one thread like the BLAS of the other variants."""
    import torch
    torch.set_num_threads(1)
    return torch


# An MLP of ``sizes`` (input, hidden..., classes), ReLU after every hidden layer, softmax
# cross-entropy (mean over the batch) and Adam, float32. Each variant has ``name``, ``step()``
# and ``forward()``, ``backward(loss)``, ``update()``.
class _UserStep:
    """The step with torch's names; a subclass sets ``model``, ``opt``, ``F``, ``x`` and ``y``."""

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


class DistbpMLP(_UserStep):
    """distbp as a user writes it: ``nn.MLP``, ``F.cross_entropy`` and ``optim.Adam``."""

    name = "distbp"

    def __init__(self, x: np.ndarray, y: np.ndarray, sizes: list[int], lr: float, betas: tuple[float, float],
                 eps: float, seed: int = 0) -> None:
        import distbp as db
        import distbp.functional as F
        from distbp import nn, optim
        db.manual_seed(seed)
        self.F = F
        self.model = nn.MLP(sizes, activation="relu")
        self.opt = optim.Adam(self.model.parameters(), lr=lr, betas=betas, eps=eps)
        self.x, self.y = db.tensor(x), y

    def weights(self) -> list[np.ndarray]:  # W1, b1, W2, b2, ... in (in, out) layout
        return [p.data for p in self.model.parameters()]

    def grads(self) -> list[np.ndarray]:
        return [p.grad for p in self.model.parameters()]


class HandMLP:
    """The same step in plain numpy, the way a competent engineer writes it: every buffer allocated
    once, every op in place (matmul with out=, in-place bias and ReLU, the fused softmax-CE gradient),
    no gradient for x; parameters and gradients in two flat float32 buffers (distbp's order), so Adam
    is a handful of calls on whole buffers (``FlatAdam``, in distbp's blocks of ``block`` elements)."""

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
        self.x, self.y, self.B, self.rows, f32 = x, y, B, np.arange(B), np.float32
        # h[i] is hidden layer i's output (after ReLU), dh[i] its gradient, mask[i] where h[i] > 0.
        h = [np.empty((B, n), f32) for n in sizes[1:-1]]
        dh = [np.empty_like(a) for a in h]
        mask = [np.empty(a.shape, bool) for a in h]
        self.z, self.p = np.empty((B, sizes[-1]), f32), np.empty((B, sizes[-1]), f32)
        self.zmax, self.zsum = np.empty((B, 1), f32), np.empty((B, 1), f32)
        inputs = [x] + h
        # Per layer, what the loops touch: (input, W, b, output) forward; backward, from the last
        # layer, (input, W, gW, gb, input's gradient, input's mask), None for x's gradient.
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
    """Adam (torch's formula) on flat buffers with one preallocated temporary: distbp/optim/adam.py's
    in-place sequence (12 passes, the bias corrections folded into two scalars), block by block like
    distbp (``block`` = ``optim.Adam.block_size``), so both sides do the same optimizer work.

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p -= lr / c1 * m / (sqrt(v) / c2 + eps)  ==  p - (lr c2 / c1) * m / (sqrt(v) + eps c2)
        with c1 = 1 - b1^t, c2 = sqrt(1 - b2^t)
    """

    def __init__(self, params: np.ndarray, grads: np.ndarray, lr: float, betas: tuple[float, float], eps: float,
                 block: int | None) -> None:
        self.p, self.g, self.lr, self.betas, self.eps, self.t = params, grads, lr, betas, eps, 0
        self.m, self.v = np.zeros_like(params), np.zeros_like(params)
        self.block = min(block or params.size, params.size)
        self.tmp = np.empty(self.block, dtype=params.dtype)

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
    """PyTorch eager as its users write it (``nn.Sequential``, ``F.cross_entropy``, ``optim.Adam``)."""

    name = "torch"

    def __init__(self, x: np.ndarray, y: np.ndarray, init: list[np.ndarray], sizes: list[int], lr: float,
                 betas: tuple[float, float], eps: float) -> None:
        torch = import_torch()
        self.model = torch_mlp(torch, sizes, torch.nn.ReLU, init)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, betas=betas, eps=eps)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.F = torch.nn.functional


def torch_mlp(torch, sizes: list[int], activation, init: list[np.ndarray]):
    """``nn.Sequential`` of Linear layers with ``activation()`` between them, its weights copied
    from ``init`` (distbp's W1, b1, W2, b2, ... in (in, out) layout)."""
    model = torch.nn.Sequential(*[m for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]))
                                  for m in [torch.nn.Linear(n_in, n_out)] + [activation()] * (i < len(sizes) - 2)])
    with torch.no_grad():
        for lin, W, b in zip(model[0::2], init[0::2], init[1::2]):
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            lin.bias.copy_(torch.from_numpy(b))
    return model


def make_batch(batch: int, sizes: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, sizes[0]), dtype=np.float32), rng.integers(0, sizes[-1], size=batch)


def make_variants(x: np.ndarray, y: np.ndarray, sizes: list[int], with_torch: bool, seed: int = 0) -> list:
    """distbp, hand and (``with_torch``) torch on batch (x, y), all from distbp's initial weights."""
    a = DistbpMLP(x, y, sizes, LR, BETAS, EPS, seed=seed)
    init = [w.copy() for w in a.weights()]
    variants = [a, HandMLP(x, y, init, sizes, LR, BETAS, EPS, a.opt.block_size)]
    if with_torch:
        variants.append(TorchMLP(x, y, init, sizes, LR, BETAS, EPS))
    return variants


def check_same_math(a, b, names: list[str], steps: int, rtol: float) -> dict:
    """Variants ``a`` and ``b``, started from identical weights and batch, run ``steps`` steps.
    Each step's gradients must agree per tensor (the sharp test that both compute the same
    backprop), and the parameters at the end over the whole buffer, both norm-wise relative to
    ``rtol``. Per tensor, parameters can differ by a few 1e-5: Adam's first steps divide by |g|,
    which turns float32 rounding of near-zero gradients into a visible relative change."""

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


def same_math(report: dict, sizes: list[int], batches: list[int], steps: int = 3, rtol: float = 1e-5) -> bool:
    """``check_same_math`` of distbp and hand at every batch, into ``report["checks"]``, printed."""
    names = [f"{k}{i}" for i in range(1, len(sizes)) for k in ("W", "b")]
    for batch in batches:
        a, b = make_variants(*make_batch(batch, sizes, seed=4), sizes, with_torch=False, seed=1)
        chk = {"batch": batch, **check_same_math(a, b, names, steps, rtol)}
        report["checks"].append(chk)
        print(f"check batch {batch}: distbp vs hand, {steps} steps from the same weights: gradients differ by <= "
              f"{chk['max_rel_grad']:.1e} (per tensor), parameters by {chk['rel_params']:.1e} (relative norm) -> "
              f"{'OK' if chk['ok'] else 'MISMATCH'} (tolerance {rtol:g})")
        if not chk["ok"]:  # the reference computes something else: timing it would be meaningless
            print(f"  gradients per tensor: {chk['rel_grad_per_tensor']}\n  parameters: {chk['rel_param_per_tensor']}")
    report["same_math"] = all(c["ok"] for c in report["checks"])
    return report["same_math"]


def rounds(variants: list, steps: int, n_rounds: int, warmup: int, rewarm: int):
    """``warmup`` untimed steps of each variant, then yield (variant, count) for ``n_rounds``
    rounds of ceil(steps / n_rounds) steps each, in ``rotation`` order. Each turn starts with
    ``rewarm`` untimed steps: the variant that ran before evicted this one's weights and
    optimizer state from the caches, which a real training loop never does."""
    for v in variants:
        for _ in range(warmup):
            v.step()
    per_round = max(1, -(-steps // n_rounds))
    for r in range(n_rounds):
        for v in common.rotation(variants, r):
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


def time_batch(variants: list, steps: int, n_rounds: int, warmup: int, rewarm: int) -> dict:
    """Time the variants interleaved: median and quartiles per variant, the spread (the largest
    interquartile range / median among them: above ~10% the machine was busy), the ratios
    distbp/hand and distbp/torch, and every step's time."""
    times = interleaved(variants, steps, n_rounds, warmup, rewarm)
    med = {k: statistics.median(ts) for k, ts in times.items()}
    quart = {k: statistics.quantiles(ts, n=4) for k, ts in times.items() if len(ts) > 1}
    row = {"steps": {k: len(ts) for k, ts in times.items()}, "median_s": med, "quartiles_s": quart,
           "spread": max(((q[2] - q[0]) / med[k] for k, q in quart.items()), default=0.0),
           "distbp_over_hand": med["distbp"] / med["hand"]}
    if "torch" in med:
        row["distbp_over_torch"] = med["distbp"] / med["torch"]
    row["times_s"] = times
    return row


def start(title: str, doc: str, argv: list[str] | None, batches: list[int], steps: tuple, rounds: tuple,
          warmup: tuple, **more) -> tuple[argparse.Namespace, dict, bool]:
    """step.py's and deep.py's command line (``steps``, ``rounds``, ``warmup``, ``more``: see
    ``common.parse``), header and report, and whether torch is timed too (installed, no --no-torch)."""
    ap = common.parser(doc)
    ap.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=batches,
                    help=f"comma-separated batch sizes (default {','.join(map(str, batches))})")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    args = common.parse(ap, argv, steps=("timed steps per variant and batch", *steps),
                        rounds=("interleaving rounds", *rounds), warmup=("untimed steps per variant first", *warmup),
                        **more)
    if min(args.steps, args.rounds, *[getattr(args, k) for k in more]) < 1 or args.warmup < 0:
        ap.error("--warmup must be >= 0, the other counts >= 1")
    info = common.header(title)
    version = None if args.no_torch else common.torch_version()
    print("torch: skipped (--no-torch)" if args.no_torch else f"torch {version} (1 thread)" if version else
          "torch not installed: skipped")
    info["torch"] = version
    return args, {"machine": info, "command": sys.argv, "args": vars(args), "checks": [], "targets": {}}, bool(version)


def table(report: dict, args: argparse.Namespace, sizes: list[int], rewarm: int, with_torch: bool, digits: int,
          extra: Callable[[list, dict], str] | None = None, extra_head: str = "") -> dict[str, dict]:
    """Time the variants at every batch into ``report["batches"]``, a printed row each (``extra(variants,
    row)`` may add figures to a row and returns the cells it prints), and ``common.flag_noise``."""
    if with_torch:
        import_torch()
    print(f"\ntiming: {args.warmup} warm-up steps, then {args.steps} timed steps per variant in {args.rounds} "
          f"interleaved rounds ({rewarm} untimed steps first in each); median step time; spread = largest "
          "interquartile range / median of the variants")
    print(f"{'batch':>5} {'distbp ms':>10} {'hand ms':>9} {'distbp/hand':>12} {'torch ms':>9} {'distbp/torch':>13}"
          f"{extra_head} {'spread':>7}")
    rows: dict[str, dict] = {}
    for batch in args.batches:
        variants = make_variants(*make_batch(batch, sizes), sizes, with_torch=with_torch)
        row = rows[str(batch)] = time_batch(variants, args.steps, args.rounds, args.warmup, rewarm)
        med = {k: f"{1e3 * v:.{digits}f}" for k, v in row["median_s"].items()}
        torch_cells = f"{med['torch']:>9} {row['distbp_over_torch']:13.3f}" if "torch" in med else f"{'-':>9} {'-':>13}"
        cells = extra(variants, row) if extra is not None else ""
        print(f"{batch:>5} {med['distbp']:>10} {med['hand']:>9} {row['distbp_over_hand']:12.3f} {torch_cells}{cells} "
              f"{100 * row['spread']:6.1f}%", flush=True)
        del variants  # before the next batch's variants exist: one set of buffers at a time
        gc.collect()
    report["batches"] = rows
    common.flag_noise(report, {f"batch {b}": r["spread"] for b, r in rows.items()})
    return rows


def ratio_target(report: dict, key: str, rows: dict, batch: int, limit: float, of: str = "hand") -> None:
    """distbp/``of`` at ``batch`` (if timed) <= ``limit`` (< ``limit`` against torch), judged."""
    r = rows.get(str(batch), {}).get(f"distbp_over_{of}")
    if r is not None:
        common.judge(report, key, r < limit if of == "torch" else r <= limit, f"distbp/{of} at batch {batch}: {r:.3f} "
                     f"(target {'<' if of == 'torch' else '<='} {limit:.2f})", limit=limit, value=r)
