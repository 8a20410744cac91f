"""The in-memory data set every loader returns, and the error every loader raises."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ..errors import DistbpError


class DataError(DistbpError, ValueError):
    """A data file or data set is unusable; the message names the file and, where there is
    one, the line or the sample."""


@dataclass
class Dataset:
    """Features ``x`` (float32, (n, d); or int64 word-id windows for the window classifier) and
    targets ``y`` (int64 class ids for classification, float32 (n, k) for regression).

    ``classes`` names the classes (None for regression); ``vocab`` holds the words of a text
    data set so a checkpoint can map ids back to words.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    classes: list[str] | None = None
    vocab: list[str] | None = None
    source: str = ""  # the file it came from, for error messages
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DataError(f"{self.name}: {len(self.x)} samples but {len(self.y)} targets")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    @property
    def num_features(self) -> int:
        return int(np.prod(self.x.shape[1:]))

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of the samples ``indices`` (the protocol of ``distbp.data.source``)."""
        return self.x[indices], self.y[indices]

    def subset(self, index: np.ndarray) -> "Dataset":
        return Dataset(self.name, self.x[index], self.y[index], self.classes, self.vocab, self.source,
                       dict(self.extra))


def check_finite(x: np.ndarray, what: str, row_label: str = "sample") -> None:
    """Raise DataError naming the first NaN or infinite value, so a bad file fails at load time
    and not as a non-finite loss hundreds of steps later."""
    if x.dtype.kind != "f":
        return
    bad = ~np.isfinite(x)
    if bad.any():
        pos = np.argwhere(bad)[0]
        where = f"{row_label} {pos[0]}" + (f", column {pos[1]}" if len(pos) > 1 else "")
        raise DataError(f"{what}: {x[tuple(pos)]} at {where} (NaN or infinite values are not allowed)")
