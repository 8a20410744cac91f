"""The default random generator for initializers and dropout, reseeded by ``manual_seed``."""

from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the default generator (as torch.manual_seed); returns it."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def default_rng() -> np.random.Generator:
    """The generator used where a function is not given its own ``rng``."""
    return _generator
