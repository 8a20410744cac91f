"""The overlapped all-reduce's bookkeeping, with a recording communicator (no MPI needed)."""

from __future__ import annotations

import numpy as np
import pytest

import distbp as db
import distbp.functional as F
from distbp import nn, optim
from distbp.comm import LocalCommunicator
from distbp.comm.buckets import BucketedAllreduce


class Recorder(LocalCommunicator):
    """Records which ranges were started, when, and doubles them (a 2-rank sum of equals)."""

    def __init__(self, grad: np.ndarray) -> None:
        self.grad, self.started, self.waited = grad, [], 0

    def iallreduce_sum_(self, view):
        lo = (view.__array_interface__["data"][0] - self.grad.__array_interface__["data"][0]) // view.itemsize
        self.started.append((lo, lo + view.size))
        view *= 2
        return len(self.started)

    def wait_all(self, handles):
        self.waited += len(handles)


def _model():
    db.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    return model, optim.SGD(model.parameters(), lr=0.1)


def test_buckets_cover_the_buffer_from_the_end_and_start_during_backward():
    model, opt = _model()
    flat = opt.flat
    rec = Recorder(flat.grad)
    red = BucketedAllreduce(rec, flat.grad, flat.offsets, bucket_bytes=4 * 20)
    # Contiguous ranges from the end of the buffer, each holding whole parameters.
    assert red.bounds[0][1] == flat.numel and red.bounds[-1][0] == 0
    assert all(a[0] == b[1] for a, b in zip(red.bounds, red.bounds[1:]))
    assert all(lo in flat.offsets and hi in flat.offsets for lo, hi in red.bounds)
    x = db.tensor(np.random.default_rng(0).standard_normal((7, 4)))
    opt.zero_grad()
    F.cross_entropy(model(x), np.arange(7) % 3).backward()
    reference = flat.flat_grad().copy()  # without the reducer
    flat.on_grad_ready = red.ready
    opt.zero_grad()
    F.cross_entropy(model(x), np.arange(7) % 3).backward()
    # Every bucket started during backward, the output layer's before the input layer's.
    assert sorted(rec.started) == sorted(red.bounds) and rec.started[-1] == red.bounds[-1]
    grad = red.finish()
    assert rec.waited == len(red.bounds)
    np.testing.assert_array_equal(grad, 2 * reference)


def test_a_bucket_with_an_unused_parameter_starts_in_finish_with_zeros():
    model, opt = _model()
    flat = opt.flat
    rec = Recorder(flat.grad)
    red = BucketedAllreduce(rec, flat.grad, flat.offsets, bucket_bytes=1)  # one bucket per parameter
    flat.on_grad_ready = red.ready
    opt.zero_grad()
    flat.grad[:] = 7.0  # stale values from an earlier step must not leak into the sum
    x = db.tensor(np.ones((2, 4)))
    (model[0](x)).sum().backward()  # only the first layer is used
    assert sorted(rec.started) == [(0, 24), (24, 30)]
    flat.flat_grad()  # zero-fills the unused parameters' views, as the Trainer does first
    grad = red.finish()
    assert len(rec.started) == len(red.bounds)
    np.testing.assert_array_equal(grad[30:], 0.0)
    with pytest.raises(RuntimeError, match="one backward per step"):
        opt.zero_grad()
        (model[0](x)).sum().backward()
        red.ready(0)
