"""The Trainer's cost over a bare loop, paired blocks of 10 steps inside one Trainer run
(bench/README.md). Target: Trainer / bare samples/s >= 0.97."""

from __future__ import annotations

import os

os.environ.update(dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1"))

import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

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


def paired_run(x: np.ndarray, y: np.ndarray, warmup: int, steps: int) -> dict:
    """One Trainer run with the bare loop beside it (its own model, the same batches): every BLOCK steps
    the Trainer's block is closed (timed start to start: exchange, finiteness check, logging included)
    and the bare loop runs its block, timed. Also returns both final parameters."""
    clock = time.perf_counter
    bare_model = Net()
    opt = optim.Adam(bare_model.parameters(), lr=LR)
    sampler = DistributedSampler(len(x), BATCH, seed=0)
    times: dict[str, list[float]] = {"trainer": [], "bare": []}
    total, last, done = warmup + steps + 1, [0.0], [0]  # warmup and steps are multiples of BLOCK

    def bare_step(step: int) -> None:
        done[0] += 1
        idx, _ = sampler.local_indices(step)
        opt.zero_grad()
        per_sample(bare_model(db.tensor(x[idx])), y[idx]).mean().backward()  # the same loss, as a user would
        opt.step()

    class Paired(Trainer):
        def _train_step(self, step, run):
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
    return {**times, "params": {"trainer": next(model.parameters())._flat.data, "bare": opt.flat.data}}


def main(argv: list[str] | None = None) -> int:
    args = common.parse(common.parser(__doc__), argv, steps=("paired steps per run", 300, 20), rounds=("runs", 9, 1))
    warmup = BLOCK if args.quick else 2 * BLOCK
    report = {"machine": common.header("bench/trainer.py: the Trainer with a model passed in, against a bare loop"),
              "command": sys.argv, "model": list(SIZES), "batch": BATCH, "steps": args.steps, "rounds": args.rounds}
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((SAMPLES, SIZES[0]), dtype=np.float32), rng.integers(0, SIZES[-1], SAMPLES)
    check = paired_run(x, y, 0, BLOCK)["params"]
    same = report["same_math"] = bool(np.allclose(check["trainer"], check["bare"], rtol=1e-5, atol=1e-7))
    print(f"same math after {BLOCK + 1} steps: {'yes' if same else 'NO'} "
          f"(max |diff| {np.abs(check['trainer'] - check['bare']).max():.2e})")
    if not same:
        return 1
    ratios, med = [], {"trainer": [], "bare": []}
    for _ in range(args.rounds):
        t = paired_run(x, y, warmup, args.steps)
        ratios.append(statistics.median(t["bare"]) / statistics.median(t["trainer"]))  # samples/s: Trainer / bare
        for k in med:
            med[k].append(statistics.median(t[k]))
    ratio = statistics.median(ratios)
    report.update(ms_per_step={k: statistics.median(v) * 1e3 for k, v in med.items()}, ratio=ratio, run_ratios=ratios)
    common.judge(report, "trainer/bare", ratio >= TARGET, f"Trainer / bare loop samples/s: {ratio:.3f} (runs: "
                 + " ".join(f"{r:.3f}" for r in ratios) + f"; target >= {TARGET})", limit=TARGET, value=ratio)
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
