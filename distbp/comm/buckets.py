"""Gradient buckets all-reduced while backward is still running (PyTorch DDP's reducer).

Backward produces the last layer's gradients first, so buckets are contiguous ranges of the
flat gradient buffer taken from its end. When every parameter of a bucket has its gradient,
the bucket's nonblocking all-reduce starts; ``finish`` starts any bucket left (parameters the
loss did not use, zero-filled by then) and waits for all of them.

With ``check_finite`` each bucket's own values are checked (a dot product, confirmed
elementwise only when it is not finite) just before its all-reduce overwrites them: the
buckets together cost the one dot product of the whole gradient, and ``non_finite`` is the
first element of this rank's gradient that was NaN or infinite (None: all finite)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import Communicator


class BucketedAllreduce:
    """Overlap the gradient sum with backward. ``offsets`` are the parameters' start offsets
    in ``grad`` (plus the end), in flat-buffer order; ``ready(i)`` is called when parameter i's
    gradient is final."""

    def __init__(self, comm: Communicator, grad: np.ndarray, offsets: np.ndarray, bucket_bytes: int,
                 check_finite: bool = False) -> None:
        self.comm, self.grad, self.check_finite = comm, grad, check_finite
        self.non_finite: int | None = None
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
        view = self.grad[lo:hi]
        if self.check_finite:
            bad = first_non_finite(view)
            if bad is not None and (self.non_finite is None or lo + bad < self.non_finite):
                self.non_finite = lo + bad
        self._requests.append(self.comm.iallreduce_sum_(view))

    def finish(self) -> np.ndarray:
        """Start the buckets backward did not complete, wait for all, reset for the next step.
        Call it after the gradients of unused parameters are zero-filled (``flat_grad()``)."""
        self.start_rest()
        return self.wait()

    def start_rest(self) -> None:
        """``finish``'s first half: start the buckets backward did not complete."""
        for b in np.flatnonzero(~self._started):
            self._start(b)

    def wait(self) -> np.ndarray:
        """``finish``'s second half: wait for every bucket, reset for the next step."""
        self.comm.wait_all(self._requests)
        self._requests = []
        self._waiting[:] = self._sizes
        self._started[:] = False
        self.non_finite = None
        return self.grad


def first_non_finite(a: np.ndarray) -> int | None:
    """The index of ``a``'s first NaN or infinity, or None: one dot product (a BLAS pass, NaN
    or inf anywhere makes it non-finite), confirmed elementwise only when it is not finite
    (squares of large finite values overflow)."""
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is what this looks for
        squares = np.dot(a, a)
    if math.isfinite(squares):
        return None
    bad = np.flatnonzero(~np.isfinite(a))
    return int(bad[0]) if bad.size else None
