"""Activation memory: backward lets go of each activation once the walk is past the
last VJP that reads it, and the forward keeps only the arrays backward will read.

Both are observed from outside the walk: weak references to the activations, looked at each
time backward finishes a parameter's gradient (``FlatParameters.on_grad_ready``), and
tracemalloc's count of numpy's data buffers alive after the forward."""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import numpy as np
import pytest

import distbp as db
import distbp.functional as F
from distbp import nn

SIZES = [8, 16, 16, 3]
BATCH = 4
ACTIVATIONS = ["relu", "tanh", "sigmoid"]


def _batch(sizes: list[int], batch: int) -> tuple[db.Tensor, np.ndarray]:
    """A float32 input batch and integer targets for an MLP of ``sizes``."""
    rng = np.random.default_rng(1)
    return db.tensor(rng.standard_normal((batch, sizes[0])), dtype=np.float32), rng.integers(0, sizes[-1], batch)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_frees_each_activation_once_the_walk_is_past_it(activation):
    """MLP 8-16-16-3 run layer by layer, so each layer's output array can be watched; the graph
    alone holds them when backward starts. When a parameter's gradient is final, backward has
    finished that layer: every array only the layers after it read must be gone, every array
    the layers before it read must still be there (the sanity check of the probe)."""
    model = nn.MLP(SIZES, activation=activation, rng=np.random.default_rng(0))
    flat = nn.flatten_parameters(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    x, y = _batch(SIZES, BATCH)
    watched: dict[str, weakref.ref] = {}
    h = x
    for i, layer in enumerate(model):
        h = layer(h)
        watched[f"{i}:{type(layer).__name__}"] = weakref.ref(h.data)
    loss = F.cross_entropy(h, y)
    del h
    gc.collect()
    assert all(r() is not None for r in watched.values()), "the graph holds every activation before backward"

    alive_at: dict[str, set[str]] = {}
    flat.on_grad_ready = lambda i: alive_at.setdefault(names[i], {k for k, r in watched.items() if r() is not None})
    try:
        loss.backward()
    finally:
        flat.on_grad_ready = None

    act = type(model[1]).__name__
    # Layer 2 (the middle Linear) done: the logits and the second hidden output were last read
    # by the layers above it; its own input (the first hidden output) is still being read.
    assert f"1:{act}" in alive_at["2.weight"]
    assert not {"4:Linear", f"3:{act}"} & alive_at["2.weight"], alive_at["2.weight"]
    # Layer 0 done: nothing above the first Linear's own output may be left.
    assert not {f"1:{act}", "2:Linear", f"3:{act}", "4:Linear"} & alive_at["0.weight"], alive_at["0.weight"]
    del loss
    gc.collect()
    assert all(r() is None for r in watched.values()), "backward left activations alive"


def _numpy_bytes_alive() -> int:
    """Bytes of numpy data buffers allocated since tracemalloc started and still alive."""
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)])
    return sum(t.size for t in snap.traces)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_keeps_only_the_arrays_backward_reads(activation):
    """What ``model(x)`` and the loss leave alive, with only the loss held, against what the VJPs
    read: each hidden output (the next Linear's input and the activation's own VJP input) and
    the logits (cross-entropy's). Allowed on top: the per-sample losses and a few scalars."""
    sizes, batch = [32, 64, 64, 5], 16
    model = nn.MLP(sizes, activation=activation, rng=np.random.default_rng(0))
    nn.flatten_parameters(model.parameters())
    x, y = _batch(sizes, batch)
    F.cross_entropy(model(x), y).backward()  # anything built lazily on the first pass exists now
    gc.collect()
    tracemalloc.start()
    try:
        loss = F.cross_entropy(model(x), y)
        kept = _numpy_bytes_alive()
    finally:
        tracemalloc.stop()
    itemsize = np.dtype(np.float32).itemsize
    needed = batch * (sum(sizes[1:-1]) + sizes[-1]) * itemsize
    slack = batch * itemsize + 256  # per-sample losses, the reductions' scalars
    assert needed <= kept <= needed + slack, f"the forward keeps {kept} bytes; backward reads {needed}"
    loss.backward()
