"""The distributed sampler of docs/ARCHITECTURE.md (invariant 1): one permutation per (seed, epoch), cut into
global batches; worker r of N takes its slice of every global batch."""

from __future__ import annotations

import numpy as np
import pytest

from distbp.data import DistributedSampler, slice_bounds


@pytest.mark.parametrize("n, batch", [(100, 10), (103, 10), (7, 3), (5, 8), (64, 64), (1, 1)])
def test_each_epoch_is_a_permutation(n, batch):
    s = DistributedSampler(n, batch, seed=5)
    assert s.steps_per_epoch == -(-n // batch)
    for epoch in range(3):
        steps = range(epoch * s.steps_per_epoch, (epoch + 1) * s.steps_per_epoch)
        batches = [s.global_batch_indices(t) for t in steps]
        assert all(len(b) == batch for b in batches[:-1])
        assert len(batches[-1]) == n - batch * (s.steps_per_epoch - 1)
        seen = np.concatenate(batches)
        assert np.array_equal(np.sort(seen), np.arange(n))
        assert np.array_equal(seen, s.order(epoch))


def test_order_depends_on_seed_and_epoch_only():
    a = DistributedSampler(50, 7, seed=1)
    b = DistributedSampler(50, 13, seed=1, rank=2, world_size=3)
    c = DistributedSampler(50, 7, seed=2)
    for epoch in range(4):
        assert np.array_equal(a.order(epoch), b.order(epoch))
        assert np.array_equal(a.order(epoch), np.random.default_rng([1, epoch]).permutation(50))
        assert not np.array_equal(a.order(epoch), c.order(epoch))
    assert not np.array_equal(a.order(0), a.order(1))
    # the cache does not leak between epochs visited out of order
    fresh = DistributedSampler(50, 7, seed=1)
    assert np.array_equal(fresh.order(3), a.order(3)) and np.array_equal(fresh.order(0), a.order(0))


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("n, batch", [(37, 8), (20, 3), (11, 11), (9, 2)])
def test_local_slices_concatenate_to_the_global_batch(world, n, batch):
    samplers = [DistributedSampler(n, batch, seed=9, rank=r, world_size=world) for r in range(world)]
    ref = DistributedSampler(n, batch, seed=9)
    for step in range(3 * ref.steps_per_epoch):
        parts = [s.local_indices(step) for s in samplers]
        g = ref.global_batch_indices(step)
        assert all(size == len(g) for _, size in parts)
        assert np.array_equal(np.concatenate([idx for idx, _ in parts]), g)
        sizes = [len(idx) for idx, _ in parts]
        assert max(sizes) - min(sizes) <= 1
        if len(g) < world:
            assert 0 in sizes


def test_empty_slices_when_batch_is_smaller_than_the_world():
    parts = [DistributedSampler(10, 2, seed=0, rank=r, world_size=5).local_indices(0) for r in range(5)]
    assert [len(i) for i, _ in parts] == [0, 0, 1, 0, 1]
    assert all(size == 2 for _, size in parts)


def test_slice_bounds():
    assert [slice_bounds(10, r, 4) for r in range(4)] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert [slice_bounds(2, r, 3) for r in range(3)] == [(0, 0), (0, 1), (1, 2)]
    assert slice_bounds(7, 0, 1) == (0, 7)


@pytest.mark.parametrize("n, batch", [(100, 10), (103, 10), (5, 8)])
def test_position(n, batch):
    s = DistributedSampler(n, batch, seed=0)
    for step in range(5 * s.steps_per_epoch):
        assert s.position(step) == divmod(step, s.steps_per_epoch)
        epoch, i = s.position(step)
        assert np.array_equal(s.global_batch_indices(step), s.order(epoch)[i * batch:(i + 1) * batch])


def test_drop_last():
    s = DistributedSampler(103, 10, seed=0, drop_last=True)
    assert s.steps_per_epoch == 10
    for epoch in range(2):
        batches = [s.global_batch_indices(epoch * 10 + i) for i in range(10)]
        assert all(len(b) == 10 for b in batches)
        seen = np.concatenate(batches)
        assert len(np.unique(seen)) == 100
        assert np.array_equal(seen, s.order(epoch)[:100])
    assert DistributedSampler(100, 10, seed=0, drop_last=True).steps_per_epoch == 10
    with pytest.raises(ValueError, match="drop_last leaves no batch"):
        DistributedSampler(5, 8, seed=0, drop_last=True)


def test_resumed_sampler_continues_the_same_order():
    # a fresh sampler (as after a resume, with any world size) gives the same batches at step t
    a = DistributedSampler(30, 4, seed=3)
    seq = [a.global_batch_indices(t).tolist() for t in range(40)]
    for start in (0, 5, 8, 13):
        b = DistributedSampler(30, 4, seed=3)
        assert [b.global_batch_indices(t).tolist() for t in range(start, 40)] == seq[start:]


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0, "global_batch": 2}, "empty"),
    ({"n": 5, "global_batch": 0}, "global_batch must be positive"),
    ({"n": 5, "global_batch": 2, "rank": 3, "world_size": 3}, "rank 3 outside world of size 3"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistributedSampler(seed=0, **kwargs)
