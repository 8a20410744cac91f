"""Gradient buckets all-reduced while backward is still running (PyTorch DDP's reducer).

Backward produces the last layer's gradients first, so buckets are contiguous ranges of the
flat gradient buffer taken from its end. When every parameter of a bucket has its gradient,
the bucket's nonblocking all-reduce starts; ``finish`` starts any bucket left (parameters the
loss did not use, zero-filled by then) and waits for all of them."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Communicator


class BucketedAllreduce:
    """Overlap the gradient sum with backward. ``offsets`` are the parameters' start offsets
    in ``grad`` (plus the end), in flat-buffer order; ``ready(i)`` is called when parameter i's
    gradient is final."""

    def __init__(self, comm: Communicator, grad: np.ndarray, offsets: np.ndarray, bucket_bytes: int) -> None:
        self.comm, self.grad = comm, grad
        n = len(offsets) - 1
        self.bucket_of = np.empty(n, dtype=np.intp)
        self.bounds: list[tuple[int, int]] = []
        sizes: list[int] = []
        hi = int(offsets[n])
        members = 0
        for i in reversed(range(n)):  # from the output layer back to the input layer
            lo = int(offsets[i])
            self.bucket_of[i] = len(self.bounds)
            members += 1
            if (hi - lo) * grad.itemsize >= bucket_bytes or i == 0:
                self.bounds.append((lo, hi))
                sizes.append(members)
                hi, members = lo, 0
        self._sizes = np.array(sizes)
        self._waiting = self._sizes.copy()
        self._requests: list[Any] = []
        self._started = np.zeros(len(self.bounds), dtype=bool)

    def ready(self, i: int) -> None:
        b = self.bucket_of[i]
        if self._started[b]:
            raise RuntimeError(f"parameter {i}'s gradient changed while its bucket was being reduced; "
                               "with comm.overlap, run one backward per step")
        self._waiting[b] -= 1
        if self._waiting[b] == 0:
            self._start(b)
        elif self._requests:
            # MPI progresses nonblocking collectives only inside MPI calls: give it one.
            self.comm.test_all(self._requests)

    def _start(self, b: int) -> None:
        lo, hi = self.bounds[b]
        self._started[b] = True
        self._requests.append(self.comm.iallreduce_sum_(self.grad[lo:hi]))

    def finish(self) -> np.ndarray:
        """Start the buckets backward did not complete, wait for all, reset for the next step.
        Call it after the gradients of unused parameters are zero-filled (``flat_grad()``)."""
        for b in np.flatnonzero(~self._started):
            self._start(b)
        self.comm.wait_all(self._requests)
        self._requests = []
        self._waiting[:] = self._sizes
        self._started[:] = False
        return self.grad
