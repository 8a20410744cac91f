"""Gradient check: analytic VJPs against central differences (J(x+h) - J(x-h)) / 2h in float64."""

from __future__ import annotations

from typing import Any, Callable

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
        numeric = np.empty_like(x.data)
        flat = x.data.reshape(-1)  # a view: perturbing it perturbs the input
        for i in range(flat.size):
            orig = flat[i]
            flat[i] = orig + eps
            f_plus = objective()
            flat[i] = orig - eps
            f_minus = objective()
            flat[i] = orig
            numeric.reshape(-1)[i] = (f_plus - f_minus) / (2 * eps)
        excess = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
        if excess.size and (excess.max() > 0 or not np.all(np.isfinite(analytic))):
            worst = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(analytic), excess, np.inf))),
                                     x.shape)
            raise GradcheckError(
                f"gradcheck: input {k} (shape {x.shape}) at index {tuple(int(i) for i in worst)}: "
                f"analytic {analytic[worst]:.8g} vs numeric {numeric[worst]:.8g} "
                f"(tolerance atol={atol} + rtol={rtol} * |numeric|)")
    return True
