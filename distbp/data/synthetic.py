"""Synthetic data sets generated from the seed: Gaussian blobs, interleaved spirals, and a
noisy nonlinear regression."""

from __future__ import annotations

import numpy as np

from .dataset import Dataset


def blobs(samples: int, features: int, classes: int, noise: float, seed: int) -> Dataset:
    """``classes`` Gaussian clusters with centres on a sphere of radius 3, spread ``noise``."""
    rng = np.random.default_rng([seed, 1])
    centres = rng.standard_normal((classes, features))
    centres *= 3.0 / np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, classes, samples)
    x = centres[y] + noise * rng.standard_normal((samples, features))
    return Dataset("synthetic-blobs", x.astype(np.float32), y.astype(np.int64),
                   [str(c) for c in range(classes)])


def spirals(samples: int, classes: int, noise: float, seed: int) -> Dataset:
    """The CS231n toy problem: ``classes`` arms of a spiral in 2-D, not linearly separable."""
    rng = np.random.default_rng([seed, 2])
    y = np.repeat(np.arange(classes), -(-samples // classes))[:samples]
    r = rng.random(samples)
    theta = y * (2 * np.pi / classes) + 4.0 * r + noise * rng.standard_normal(samples)
    x = np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)
    perm = rng.permutation(samples)
    return Dataset("synthetic-spirals", x[perm].astype(np.float32), y[perm].astype(np.int64),
                   [str(c) for c in range(classes)])


def regression(samples: int, features: int, noise: float, seed: int) -> Dataset:
    """y = sin(x·w) + 0.5 (x·v)^2 / d + noise, one target column."""
    rng = np.random.default_rng([seed, 3])
    x = rng.standard_normal((samples, features))
    w, v = rng.standard_normal(features), rng.standard_normal(features)
    y = np.sin(x @ w) + 0.5 * (x @ v) ** 2 / features + noise * rng.standard_normal(samples)
    return Dataset("synthetic-regression", x.astype(np.float32), y[:, None].astype(np.float32))
