"""Gradient check: analytic VJPs against central differences (J(x+h) - J(x-h)) / 2h in float64."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """Analytic and numeric gradients disagree; the message names the input and the index."""


def _as_input(x: Any) -> tuple[Any, bool]:
    """float64 copy of a checked input, and whether to check it. Integer arrays (indices,
    targets) and Tensors with requires_grad=False pass through as constants."""
    if isinstance(x, Tensor):
        if not x.requires_grad:
            return x, False
        arr = x.data
    elif isinstance(x, np.ndarray) and x.dtype.kind == "f":
        arr = x
    else:
        return x, False
    return Tensor(arr, requires_grad=True, dtype=np.float64), True


def numeric_grad(objective: Callable[[], float], array: np.ndarray, eps: float,
                 indices: Sequence[int] | None = None) -> np.ndarray:
    """Central differences (f(x + eps) - f(x - eps)) / 2eps of ``objective`` with respect to the
    elements of ``array`` at flat ``indices`` (all by default). ``array`` is perturbed in place
    and restored, so it must be the very array ``objective`` reads."""
    flat = array.reshape(-1)
    if not np.shares_memory(flat, array):
        raise ValueError("numeric_grad: the array must be contiguous so it can be perturbed in place")
    positions = range(flat.size) if indices is None else indices
    out = np.empty(len(positions))
    for j, i in enumerate(positions):
        orig = flat[i]
        flat[i] = orig + eps
        f_plus = objective()
        flat[i] = orig - eps
        f_minus = objective()
        flat[i] = orig
        out[j] = (f_plus - f_minus) / (2 * eps)
    return out


def gradcheck(fn: Callable[..., Tensor], *inputs: Any, eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3, seed: int = 0) -> bool:
    """Check ``fn``'s gradients with respect to its floating-point inputs.

    A non-scalar output is reduced to sum(out * w) with a fixed random ``w``, so every VJP is
    checked against a generic cotangent rather than against ones. Each element of each
    checked input is perturbed by ±eps in float64. Raises ``GradcheckError`` naming the
    input, the worst index and both values; returns True when every element satisfies
    |analytic - numeric| <= atol + rtol * |numeric|.
    """
    pairs = [_as_input(x) for x in inputs]
    args = [x for x, _ in pairs]
    out = fn(*args)
    if not isinstance(out, Tensor) or out.dtype != np.float64:
        got = out.dtype if isinstance(out, Tensor) else type(out).__name__
        raise TypeError(f"gradcheck: fn must return a float64 Tensor, got {got}; "
                        "central differences are meaningless in float32")
    w = np.random.default_rng(seed).standard_normal(out.shape) if out.size > 1 else np.ones(out.shape)
    (out * w).sum().backward()

    def objective() -> float:
        with no_grad():
            return float(np.sum(fn(*args).data * w))

    for k, (x, checked) in enumerate(pairs):
        if not checked:
            continue
        analytic = x.grad if x.grad is not None else np.zeros_like(x.data)
        numeric = numeric_grad(objective, x.data, eps).reshape(x.shape)
        # A non-finite value on either side is the worst error (a nan excess would compare False).
        with np.errstate(invalid="ignore"):  # inf - inf, discarded by the where
            excess = np.where(np.isfinite(analytic) & np.isfinite(numeric),
                              np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric)), np.inf)
        if excess.size and excess.max() > 0:
            worst = np.unravel_index(int(np.argmax(excess)), x.shape)
            raise GradcheckError(
                f"gradcheck: input {k} (shape {x.shape}) at index {tuple(int(i) for i in worst)}: "
                f"analytic {analytic[worst]:.8g} vs numeric {numeric[worst]:.8g} "
                f"(tolerance atol={atol} + rtol={rtol} * |numeric|)")
    return True


@dataclass
class ParameterCheck:
    """The result of checking one parameter: the worst relative error
    |analytic - numeric| / max(|analytic|, |numeric|) over the checked elements."""

    name: str
    shape: tuple[int, ...]
    checked: int
    worst_rel_error: float
    worst_index: tuple[int, ...]
    analytic: float
    numeric: float


def check_parameters(loss: Callable[[], Tensor], params: Sequence[tuple[str, Tensor]], eps: float = 1e-6,
                     max_elements: int | None = None, seed: int = 0) -> list[ParameterCheck]:
    """Check the gradient of the scalar ``loss()`` with respect to each named float64 parameter
    (all elements, or ``max_elements`` chosen at random from larger ones). Used by
    ``distbp-gradcheck`` on a whole model; ``loss`` must be deterministic (dropout off)."""
    for name, p in params:
        if p.dtype != np.float64:
            raise TypeError(f"check_parameters: {name} is {p.dtype}; cast the model to float64 first")
        p.grad = None
    loss().backward()
    analytic = {name: (p.grad.copy() if p.grad is not None else np.zeros_like(p.data)) for name, p in params}

    def objective() -> float:
        with no_grad():
            return float(loss().data)

    rng = np.random.default_rng(seed)
    results = []
    for name, p in params:
        n = p.size
        idx = np.arange(n) if max_elements is None or n <= max_elements else np.sort(
            rng.choice(n, max_elements, replace=False))
        numeric = numeric_grad(objective, p.data, eps, idx)
        a = analytic[name].reshape(-1)[idx]
        # Gradients below 1e-8 count as zero: -9e-15 against 0 is rounding, not a 100% error.
        rel = np.abs(a - numeric) / np.maximum(np.maximum(np.abs(a), np.abs(numeric)), 1e-8)
        j = int(np.argmax(rel))
        results.append(ParameterCheck(name, p.shape, len(idx), float(rel[j]),
                                      tuple(int(i) for i in np.unravel_index(idx[j], p.shape)),
                                      float(a[j]), float(numeric[j])))
    return results
