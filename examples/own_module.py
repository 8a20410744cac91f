"""Your own nn.Module through the Trainer: checkpoints, resume, signals and any number of
workers come with it.

    python examples/own_module.py                      # one process
    mpirun -n 2 python examples/own_module.py          # two data-parallel workers, same result
    python examples/own_module.py --set train.max_steps=100 --run-dir runs/own

The model has a residual connection and uses one weight twice (its gradient is the sum of
both uses); the loss returns one value per sample and the Trainer takes the global mean."""

from __future__ import annotations

import argparse

import numpy as np

import distbp.functional as F
from distbp import nn
from distbp.train import Trainer, resolve


class TiedResidual(nn.Module):
    """x -> h = tanh(x W_in) -> h + tanh(h W_mix) -> h + tanh(h W_mix) -> h W_out."""

    def __init__(self, features: int, width: int, classes: int, rng: np.random.Generator) -> None:
        super().__init__()
        self.inp = nn.Linear(features, width, rng=rng)
        self.mix = nn.Linear(width, width, rng=rng)  # applied twice: one weight, two uses
        self.out = nn.Linear(width, classes, rng=rng)

    def forward(self, x):
        h = F.tanh(self.inp(x))
        h = h + F.tanh(self.mix(h))  # residual adds
        h = h + F.tanh(self.mix(h))
        return self.out(h)


def per_sample_cross_entropy(output, target):
    return F.cross_entropy(output, target, reduction="none")


def make_data(n: int = 1200, features: int = 10, classes: int = 4, seed: int = 7):
    """Gaussian blobs: (train x, y), (validation x, y)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.5, (classes, features))
    y = rng.integers(0, classes, n)
    x = (centers[y] + rng.normal(0, 2.0, (n, features))).astype(np.float32)
    cut = n * 9 // 10
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/own-module")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--resume", default="auto")
    args = parser.parse_args(argv)
    config = resolve({"train": {"global_batch": 64, "max_steps": 60, "eval_every": 20, "log_every": 10},
                      "optimizer": {"name": "adam", "lr": 0.005}, "checkpoint": {"every": 20}}, args.overrides)
    train, val = make_data()
    model = TiedResidual(train[0].shape[1], 32, 4, np.random.default_rng(0))
    accuracy_of_top2 = lambda out, y: float(np.mean((np.argsort(-out, axis=1)[:, :2] == y[:, None]).any(axis=1)))
    result = Trainer(config, model=model, loss_fn=per_sample_cross_entropy, train_data=train, val_data=val,
                     metrics={"top2_accuracy": accuracy_of_top2}, run_dir=args.run_dir, resume=args.resume).fit()
    print(f"final: {({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})}", flush=True)
    return result


if __name__ == "__main__":
    main()
