"""Your own training loop, data-parallel with distbp.distributed (Horovod's and DDP's style).

    python examples/own_loop.py                   # one process
    mpirun -n 2 python examples/own_loop.py       # two ranks: the same parameters, to 1e-5

Each rank computes the gradient of its slice of every global batch; DistributedOptimizer
sums the ranks' gradients before each step. The loss is the slice's sum divided by the
global batch, so the sum over ranks is exactly the global mean (slices may differ in size)."""

from __future__ import annotations

import argparse

import numpy as np

import distbp as db
import distbp.distributed as dist
import distbp.functional as F
from distbp import nn, optim


def main(argv: list[str] | None = None) -> np.ndarray:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", help="write the final flat parameters here (.npy), on rank 0")
    parser.add_argument("--overlap", action="store_true", help="all-reduce buckets during backward")
    args = parser.parse_args(argv)

    dist.init()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(900, 12)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) > 0).astype(np.int64) + (x[:, 3] > 1).astype(np.int64)
    # Each rank may draw its own initial weights: broadcast_parameters makes them rank 0's.
    model = nn.Sequential(nn.Linear(12, 64, rng=np.random.default_rng(dist.rank())), nn.ReLU(),
                          nn.Dropout(0.0), nn.Linear(64, 3, rng=np.random.default_rng(100 + dist.rank())))
    opt = dist.DistributedOptimizer(optim.SGD(model.parameters(), lr=0.1, momentum=0.9), op="sum",
                                    overlap=args.overlap)
    dist.broadcast_parameters(model)
    dist.broadcast_optimizer_state(opt)
    sampler = dist.DistributedSampler(len(x), global_batch=96, seed=0)
    for step in range(args.steps):
        idx, global_batch = sampler.local_indices(step)
        opt.zero_grad()
        loss = F.cross_entropy(model(db.tensor(x[idx])), y[idx], reduction="sum") * (1.0 / global_batch)
        loss.backward()
        opt.step()
        mean_loss = dist.allreduce_(np.array([loss.item()]))[0]
        if dist.rank() == 0 and step % 10 == 0:
            print(f"step {step} loss {mean_loss:.4f}")
    params = opt.flat.data.copy()
    if dist.rank() == 0:
        if args.out:
            np.save(args.out, params)
        print(f"done: {args.steps} steps on {dist.size()} rank(s)")
    return params


if __name__ == "__main__":
    main()
