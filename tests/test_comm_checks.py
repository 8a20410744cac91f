"""The pieces of MPI fault handling that need no MPI: a rank's own finiteness check (one dot
product, in buckets when they overlap backward), the config key that sets the deadline, and
the Communicator interface the Trainer calls for it."""

from __future__ import annotations

import numpy as np
import pytest

import distbp as db
import distbp.functional as F
from distbp import nn, optim
from distbp.comm import LocalCommunicator
from distbp.comm.buckets import BucketedAllreduce, first_non_finite
from distbp.train import resolve
from distbp.train.config import ConfigError


def test_first_non_finite_finds_the_first_nan_or_inf():
    a = np.ones(1000, dtype=np.float32)
    assert first_non_finite(a) is None
    a[[7, 500]] = [np.inf, np.nan]
    assert first_non_finite(a) == 7
    a[:] = 3e38  # finite values whose squares overflow: confirmed elementwise, not flagged
    assert first_non_finite(a) is None


class Doubler(LocalCommunicator):
    """A 2-rank sum of equals, applied at once."""

    def iallreduce_sum_(self, view):
        view *= 2
        return None


def test_buckets_check_each_bucket_before_its_all_reduce_overwrites_it():
    db.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    flat = optim.SGD(model.parameters(), lr=0.1).flat
    red = BucketedAllreduce(Doubler(), flat.grad, flat.offsets, bucket_bytes=4 * 20, check_finite=True)
    x = db.tensor(np.random.default_rng(0).standard_normal((7, 4)))
    flat.zero_grad()
    flat.on_grad_ready = red.ready
    F.cross_entropy(model(x), np.arange(7) % 3).backward()
    red.start_rest()
    assert red.non_finite is None
    red.wait()

    poisoned = int(flat.offsets[2]) + 3  # in the second layer's weight

    def ready(i):
        if i == 2:
            flat.grad[poisoned] = np.nan  # this rank's own gradient, before its bucket starts
        red.ready(i)

    flat.zero_grad()
    flat.on_grad_ready = ready
    F.cross_entropy(model(x), np.arange(7) % 3).backward()
    red.start_rest()
    assert red.non_finite == poisoned
    red.wait()
    assert red.non_finite is None  # reset for the next step


def test_comm_timeout_s_applies_under_mpi_and_auto_not_to_one_process():
    assert resolve(None, ["comm.timeout_s=3"])["comm"]["timeout_s"] == 3.0
    assert resolve(None, ["comm.backend=mpi", "comm.timeout_s=3"])["comm"]["timeout_s"] == 3.0
    with pytest.raises(ConfigError, match="comm.timeout_s: has no effect with comm.backend: local"):
        resolve(None, ["comm.backend=local", "comm.timeout_s=3"])


def test_solo_and_the_trainers_notes_do_nothing_where_nothing_waits():
    comm = LocalCommunicator()
    with comm.solo():
        pass
    comm.current_step, comm.parameters = 3, (["w"], np.array([0, 4]))
    assert comm.current_step == 3
