"""The Trainer's cost over a bare loop: samples/s of ``Trainer(model=..., loss_fn=...,
train_data=...)`` against the loop a user would write over the same model, the same
per-sample loss (its ``.mean()``), the same batches and Adam, timed in the same run (one
process, one BLAS thread).

    .venv/bin/python bench/trainer.py               # 784-512-512-10 Module of your own, batch 128
    .venv/bin/python bench/trainer.py --quick       # CI smoke: few steps
    .venv/bin/python bench/trainer.py --json out.json [--strict]

The two take turns in blocks of 10 steps, from the same initial weights: every 10th of the
Trainer's steps (its hook ``_train_step``) closes the Trainer's block and runs a block of the
bare loop on its own copy of the model, each block timed. Pairing in time matters here: timed
separately, whole runs of either spread by +-10% on this shared machine; blocks rather than
single steps keep each one's parameters and optimizer state in cache as they would be alone. Set-up, the final evaluation and the final checkpoint
are outside the timed steps; the Trainer's logging every 10 steps, finiteness check, replica
check and exchange are inside. The figure is the median over runs of median bare step time /
median Trainer step time. First both must end at the same parameters (rtol 1e-5).
Target: Trainer / bare samples/s >= 0.97.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import common  # noqa: E402  (bench/ is on sys.path)
import distbp as db  # noqa: E402
import distbp.functional as F  # noqa: E402
from distbp import nn, optim  # noqa: E402
from distbp.comm import LocalCommunicator  # noqa: E402
from distbp.data import DistributedSampler  # noqa: E402
from distbp.train import Trainer  # noqa: E402

SIZES, BATCH, SAMPLES, LR = (784, 512, 512, 10), 128, 8192, 1e-3
TARGET = 0.97
BLOCK = 10  # steps of one, then of the other: paired in time, without thrashing each other's cache


class Net(nn.Module):
    """A Module of your own: two ReLU layers and a residual add."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.a = nn.Linear(SIZES[0], SIZES[1], rng=rng)
        self.b = nn.Linear(SIZES[1], SIZES[2], rng=rng)
        self.out = nn.Linear(SIZES[2], SIZES[3], rng=rng)

    def forward(self, x):
        h = F.relu(self.a(x))
        return self.out(h + F.relu(self.b(h)))


def per_sample(out, y):
    return F.cross_entropy(out, y, reduction="none")


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.standard_normal((SAMPLES, SIZES[0]), dtype=np.float32), rng.integers(0, SIZES[-1], SAMPLES)


def paired_run(x: np.ndarray, y: np.ndarray, warmup: int, steps: int) -> dict[str, list[float]]:
    """One Trainer run with a bare loop stepped beside it: before each of the Trainer's steps,
    one step of the bare loop (its own model, the same batch). Each step of either is timed,
    so both see the same moment of a noisy machine; the Trainer's step is timed from its
    start to the start of the next (its exchange, finiteness check, logging and checkpoint
    cadence included). Also returns both final parameters."""
    clock = time.perf_counter
    bare_model = Net()
    opt = optim.Adam(bare_model.parameters(), lr=LR)
    sampler = DistributedSampler(len(x), BATCH, seed=0)
    times: dict[str, list[float]] = {"trainer": [], "bare": []}
    total = warmup + steps + 1  # warmup and steps are multiples of BLOCK
    last = [0.0]

    done = [0]

    def bare_step(step: int) -> None:
        done[0] += 1
        idx, _ = sampler.local_indices(step)
        opt.zero_grad()
        per_sample(bare_model(db.tensor(x[idx])), y[idx]).mean().backward()  # the same loss, as a user would
        opt.step()

    class Paired(Trainer):
        def _train_step(self, step, run):
            # Every BLOCK steps: close the Trainer's block, run the bare loop's block.
            if step % BLOCK == 0:
                now = clock()
                if step > warmup:
                    times["trainer"].append((now - last[0]) / BLOCK)
                if step < total - 1:
                    t0 = clock()
                    for s in range(step, step + BLOCK):
                        bare_step(s)
                    if step >= warmup:
                        times["bare"].append((clock() - t0) / BLOCK)
                last[0] = clock()
            return super()._train_step(step, run)

    config = {"train": {"global_batch": BATCH, "epochs": 1000, "max_steps": total, "log_every": 10,
                        "eval_every": 10**9, "progress": "plain"},
              "optimizer": {"name": "adam", "lr": LR}, "checkpoint": {"every": 10**9, "keep": 1},
              "comm": {"threads": 1}}
    model = Net()
    with tempfile.TemporaryDirectory() as run_dir, open(os.devnull, "w") as sink:
        Paired(config, model=model, loss_fn=per_sample, train_data=(x, y), run_dir=run_dir, resume="never",
               comm=LocalCommunicator(), stream=sink).fit()
    while done[0] < total:  # the untimed last step(s), so that both end at the same step
        bare_step(done[0])
    params = {"trainer": next(model.parameters())._flat.data, "bare": opt.flat.data}
    return {**times, "params": params}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few steps and rounds (CI smoke)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--strict", action="store_true", help="exit 1 if the target is missed")
    args = ap.parse_args(argv)
    steps = args.steps or (20 if args.quick else 300)
    n_rounds = args.rounds or (1 if args.quick else 9)
    warmup = BLOCK if args.quick else 2 * BLOCK
    report, _ = common.print_header("Trainer with a model passed in, against a bare loop", no_torch=True)
    x, y = data()
    check = paired_run(x, y, 0, BLOCK)["params"]
    same = bool(np.allclose(check["trainer"], check["bare"], rtol=1e-5, atol=1e-7))
    print(f"same math after {BLOCK + 1} steps: {'yes' if same else 'NO'} "
          f"(max |diff| {np.abs(check['trainer'] - check['bare']).max():.2e})")
    ratios, med = [], {"trainer": [], "bare": []}
    for _ in range(n_rounds):
        t = paired_run(x, y, warmup, steps)
        # Trainer samples/s over bare samples/s: the ratio of their median step times.
        ratios.append(statistics.median(t["bare"]) / statistics.median(t["trainer"]))
        for k in med:
            med[k].append(statistics.median(t[k]))
    ratio = statistics.median(ratios)
    print(f"model {'-'.join(map(str, SIZES))} (residual), batch {BATCH}, {steps} paired steps x {n_rounds} runs")
    for name, values in med.items():
        m = statistics.median(values)
        print(f"  {name:8s} {m * 1e3:7.3f} ms/step  {BATCH / m:10,.0f} samples/s (median)")
    print(f"Trainer / bare loop samples/s: {ratio:.3f} (runs: {' '.join(f'{r:.3f}' for r in ratios)}; "
          f"target >= {TARGET}) {'met' if ratio >= TARGET else 'NOT met'}")
    report.update(model=list(SIZES), batch=BATCH, steps=steps, rounds=n_rounds, same_math=same,
                  ms_per_step={k: statistics.median(v) * 1e3 for k, v in med.items()}, ratio=ratio,
                  run_ratios=ratios, target=TARGET)
    return common.finish(report, args.json, args.strict, [ratio >= TARGET]) if same else 1


if __name__ == "__main__":
    sys.exit(main())
