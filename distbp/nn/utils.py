"""torch.nn.utils's gradient clipping and parameter/vector conversions.

``parameters`` is an iterable of Parameters (or of Tensors that require grad), or a single
one, as in torch. When they are exactly the parameters of one flat buffer (those of a model
an optimizer was made for, ``model.parameters()``), and each has a gradient, the clipping
functions work on the whole gradient buffer in a fixed number of numpy calls, whatever the
number of layers (invariant 4 of docs/ARCHITECTURE.md); otherwise they go parameter by
parameter. A parameter whose ``.grad`` is None is skipped, as torch.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from .. import functional as F
from ..autodiff.tensor import ShapeError, Tensor
from .flat import FlatParameters

__all__ = ["clip_grad_norm_", "clip_grad_value_", "parameters_to_vector", "vector_to_parameters"]


def _as_list(parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    return [parameters] if isinstance(parameters, Tensor) else list(parameters)


def _whole_flat(params: list[Tensor]) -> FlatParameters | None:
    """The flat buffer whose parameters are exactly ``params`` (in any order, none twice),
    if every one of them has a gradient of this generation: then ``flat.grad`` is all their
    gradients, and nothing else."""
    flat = getattr(params[0], "_flat", None) if params else None
    if flat is None or len(params) != len(flat.params) or flat.written != len(flat.params):
        return None
    seen = set()
    for p in params:
        if getattr(p, "_flat", None) is not flat or id(p) in seen:
            return None
        seen.add(id(p))
    return flat


def _grads(params: list[Tensor]) -> list[np.ndarray]:
    """The gradient arrays to work on, in place: the flat gradient buffer (one array), or
    each parameter's gradient (a parameter listed twice counts once)."""
    flat = _whole_flat(params)
    if flat is not None:
        return [flat.flat_grad()]
    grads, seen = [], set()
    for p in params:
        g = p.grad
        if g is not None and id(p) not in seen:
            seen.add(id(p))
            grads.append(g)
    return grads


def _total_norm(grads: list[np.ndarray], norm_type: float) -> float:
    """The ``norm_type``-norm of all gradients together, as one vector."""
    grads = [g for g in grads if g.size]
    if not grads:
        return 0.0
    if norm_type == math.inf:
        return float(np.max([np.maximum(g.max(), -g.min()) for g in grads]))
    if norm_type == 2.0:
        flat = [g.reshape(-1) for g in grads]
        return math.sqrt(math.fsum(float(np.dot(g, g)) for g in flat))
    if norm_type == 1.0:
        return math.fsum(float(np.abs(g).sum()) for g in grads)
    return math.fsum(float((np.abs(g) ** norm_type).sum()) for g in grads) ** (1.0 / norm_type)


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach: bool | None = None) -> Tensor:
    """Scale the gradients in place so that their total norm (all gradients as one vector) is
    at most ``max_norm``: by ``max_norm / (total_norm + 1e-6)`` when that is below 1, as
    torch. Returns the total norm before clipping as a 0-d Tensor in the gradients' dtype (as
    torch; ``float(norm)`` or ``norm.item()`` is the number). ``norm_type`` is any p > 0 or
    ``inf`` ("inf"); ``foreach`` is accepted and changes nothing."""
    params = _as_list(parameters)
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"clip_grad_norm_: norm_type must be positive (or inf), got {norm_type}")
    grads = _grads(params)
    if not grads:
        return Tensor(0.0)
    total = _total_norm(grads, norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, "
                           "so it cannot be clipped. To disable this error and scale the gradients by the "
                           "non-finite norm anyway, set `error_if_nonfinite=False`")
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:  # torch clamps the coefficient to 1; a NaN coefficient (NaN norm) still scales
        for g in grads:
            g *= coef
    return Tensor(total, dtype=np.result_type(*grads))


def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every gradient, in place, to [-clip_value, clip_value]."""
    clip_value = float(clip_value)
    for g in _grads(_as_list(parameters)):
        np.clip(g, -clip_value, clip_value, out=g)


def parameters_to_vector(parameters: Tensor | Iterable[Tensor]) -> Tensor:
    """The parameters' values flattened and joined into one new 1-D Tensor, in the graph as
    torch's (a loss of it differentiates to the parameters)."""
    params = _as_list(parameters)
    if not params:
        raise ValueError("parameters_to_vector: no parameters given")
    return F.concat([p.reshape(-1) for p in params])


def vector_to_parameters(vec: Tensor | np.ndarray, parameters: Tensor | Iterable[Tensor]) -> None:
    """Copy the consecutive pieces of the 1-D ``vec`` into the parameters, in place (flat
    views stay valid; the parameters never alias ``vec``, a deviation from torch, whose
    parameters become views of it). One copy when they are a flat buffer's, in its order."""
    if not isinstance(vec, (Tensor, np.ndarray)):
        raise TypeError(f"vector_to_parameters: expected a Tensor or a numpy array, but got: {type(vec).__name__}")
    data = vec.data if isinstance(vec, Tensor) else vec
    if data.ndim != 1:
        raise ShapeError(f"vector_to_parameters: the vector must be 1-D, got shape {data.shape}")
    params = _as_list(parameters)
    total = sum(p.data.size for p in params)
    if data.size != total:
        raise ShapeError(f"vector_to_parameters: the vector has {data.size} elements, the parameters {total}")
    flat = getattr(params[0], "_flat", None) if params else None
    if (flat is not None and len(params) == len(flat.params)
            and all(q is p for q, p in zip(flat.params, params))):
        np.copyto(flat.data, data, casting="same_kind")
        return
    offset = 0
    for p in params:
        n = p.data.size
        np.copyto(p.data, data[offset:offset + n].reshape(p.data.shape), casting="same_kind")
        offset += n
