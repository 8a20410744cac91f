"""What the Trainer reads batches from: any object with ``__len__`` and
``batch(indices) -> (x, y)``. ``Dataset`` is one (in memory); an ``(x, y)`` pair of arrays
becomes one; a ``np.memmap`` or a reader of your own serves data larger than memory, since
only the rows of one batch are ever read.

The protocol (documented in README.md, "Your own model"):

* ``len(data)``: the number of samples;
* ``data.batch(indices)``: ``(x, y)`` for those sample indices (an int64 array, in the order
  given, not sorted; a step's indices are a slice of one epoch's permutation);
* optional ``data.num_classes`` (an int) or ``data.classes`` (names), which ``auto`` sizes
  and accuracy use; ``data.vocab`` for text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .dataset import DataError, Dataset


@runtime_checkable
class BatchSource(Protocol):
    """Data read a batch at a time: ``len()`` and ``batch(indices) -> (x, y)``."""

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class Subset:
    """The samples ``indices`` of ``source`` (a split of data you passed)."""

    def __init__(self, source: BatchSource, indices: np.ndarray) -> None:
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)
        for attr in ("classes", "num_classes", "vocab"):
            if hasattr(source, attr):
                setattr(self, attr, getattr(source, attr))

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.source.batch(self.indices[indices])


def as_source(data: Any, what: str) -> BatchSource:
    """``data`` as a BatchSource: a Dataset or protocol object as it is, an ``(x, y)`` pair
    of arrays (numpy or memmap) wrapped; anything else is refused with a DataError."""
    if isinstance(data, tuple) and len(data) == 2 and all(hasattr(a, "shape") for a in data):
        x, y = data
        if len(x) != len(y):
            raise DataError(f"{what}: x has {len(x)} samples but y has {len(y)}")
        classes = None
        if np.asarray(y[:1]).dtype.kind in "iu" and np.ndim(y) == 1:
            classes = [str(c) for c in range(int(np.max(y)) + 1)] if len(y) else []
        return Dataset(what, x, y, classes, source=what)
    if isinstance(data, BatchSource):
        if len(data) <= 0:
            raise DataError(f"{what}: the data set is empty")
        return data
    raise DataError(f"{what}: expected a distbp.data.Dataset, an (x, y) pair of numpy arrays, or an object with "
                    f"__len__ and batch(indices) -> (x, y); got {type(data).__name__}")


def num_classes(source: BatchSource) -> int | None:
    """The number of classes a source declares (None for regression or when it says nothing)."""
    n = getattr(source, "num_classes", None)
    if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
        return int(n)
    classes = getattr(source, "classes", None)
    return None if classes is None else len(classes)


@dataclass(frozen=True)
class DataInfo:
    """What a model factory learns of the data: ``features`` (the size of one flattened
    input), ``classes`` (a count; None for regression), ``vocab_size`` (None without a
    vocabulary), ``shape`` (one sample's input shape) and ``targets`` (outputs a regression
    needs)."""

    features: int
    classes: int | None
    vocab_size: int | None
    shape: tuple[int, ...]
    targets: int
    integer_inputs: bool
    name: str = "data"


def data_info(source: BatchSource) -> DataInfo:
    """Read the first sample to learn the shapes; classes and vocabulary as the source declares."""
    x, y = source.batch(np.zeros(1, dtype=np.int64))
    x, y = np.asarray(x), np.asarray(y)
    vocab = getattr(source, "vocab", None)
    classes = num_classes(source)
    targets = classes if classes is not None else (int(np.prod(y.shape[1:])) if y.ndim > 1 else 1)
    return DataInfo(int(np.prod(x.shape[1:])), classes, None if vocab is None else len(vocab),
                    tuple(x.shape[1:]), targets, x.dtype.kind in "iu", str(getattr(source, "name", "data")))
