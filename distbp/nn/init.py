"""Initializers, in place. distbp's weights are (in, out), so fan_in = shape[0], fan_out = shape[1]
(torch's Linear stores (out, in); the formulas are the same, the axes swap)."""

from __future__ import annotations

import math

import numpy as np

from ..autodiff.random import default_rng
from ..autodiff.tensor import Tensor


def _fans(t: Tensor) -> tuple[int, int]:
    if t.ndim < 1:
        raise ValueError("init: fan_in and fan_out need a tensor of at least one dimension")
    if t.ndim == 1:
        return t.shape[0], t.shape[0]
    receptive = int(np.prod(t.shape[2:])) if t.ndim > 2 else 1
    return t.shape[0] * receptive, t.shape[1] * receptive


def _fill(t: Tensor, values: np.ndarray) -> Tensor:
    t.data[...] = values  # in place: a flat-buffer view stays a view
    return t


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for an activation, as torch.nn.init.calculate_gain."""
    gains = {"linear": 1.0, "identity": 1.0, "sigmoid": 1.0, "softsign": 1.0, "hardtanh": 1.0,
             "tanh": 5.0 / 3, "relu": math.sqrt(2.0)}
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity not in gains:
        raise ValueError(f"calculate_gain: unknown nonlinearity {nonlinearity!r}; "
                         f"known: {', '.join(sorted(gains) + ['leaky_relu'])}")
    return gains[nonlinearity]


def xavier_uniform_(t: Tensor, gain: float = 1.0, rng: np.random.Generator | None = None) -> Tensor:
    """U[-a, a] with a = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    fan_in, fan_out = _fans(t)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _fill(t, (rng or default_rng()).uniform(-a, a, t.shape))


def xavier_normal_(t: Tensor, gain: float = 1.0, rng: np.random.Generator | None = None) -> Tensor:
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(t)
    return _fill(t, (rng or default_rng()).normal(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), t.shape))


def kaiming_normal_(t: Tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "relu",
                    rng: np.random.Generator | None = None) -> Tensor:
    """N(0, std^2) with std = gain / sqrt(fan) (He et al. 2015); ``a`` is leaky_relu's slope."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming_normal_: mode must be 'fan_in' or 'fan_out', not {mode!r}")
    fan = _fans(t)[0 if mode == "fan_in" else 1]
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return _fill(t, (rng or default_rng()).normal(0.0, std, t.shape))


def kaiming_uniform_(t: Tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "relu",
                     rng: np.random.Generator | None = None) -> Tensor:
    """U[-b, b] with b = gain * sqrt(3 / fan)."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming_uniform_: mode must be 'fan_in' or 'fan_out', not {mode!r}")
    fan = _fans(t)[0 if mode == "fan_in" else 1]
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return _fill(t, (rng or default_rng()).uniform(-bound, bound, t.shape))


def normal_(t: Tensor, mean: float = 0.0, std: float = 1.0, rng: np.random.Generator | None = None) -> Tensor:
    return _fill(t, (rng or default_rng()).normal(mean, std, t.shape))


def uniform_(t: Tensor, a: float = 0.0, b: float = 1.0, rng: np.random.Generator | None = None) -> Tensor:
    return _fill(t, (rng or default_rng()).uniform(a, b, t.shape))


def constant_(t: Tensor, value: float) -> Tensor:
    return _fill(t, value)


def zeros_(t: Tensor) -> Tensor:
    return _fill(t, 0.0)
