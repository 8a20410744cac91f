"""Activations and losses, composed from the primitives of ``distbp.autodiff.ops``.

Conventions follow PyTorch where the course notes differ: ``dropout``'s ``p`` is the drop
probability, ``multi_margin`` divides by the number of classes, and targets are class indices.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .autodiff import ops
from .autodiff.ops import hardtanh as _hardtanh
from .autodiff.random import default_rng
from .autodiff.tensor import ShapeError, Tensor

__all__ = [
    "linear", "linear_act", "relu", "leaky_relu", "sigmoid", "tanh", "hardtanh", "softsign", "softmax", "log_softmax",
    "cross_entropy", "multi_margin", "max_margin", "mse_loss", "dropout", "embedding", "concat",
    "stack",
]

relu = ops.relu
sigmoid = ops.sigmoid
tanh = ops.tanh


def leaky_relu(x: Tensor, slope: float = 0.01) -> Tensor:
    """max(x, slope * x) for slope < 1."""
    return ops.leaky_relu(x, slope=slope)


def hardtanh(x: Tensor, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    """x clipped to [min_val, max_val]; the gradient is 1 strictly inside, 0 outside."""
    return _hardtanh(x, lo=min_val, hi=max_val)


def softsign(x: Tensor) -> Tensor:
    """x / (1 + |x|)."""
    return x / (ops.abs_(x) + 1.0)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight + bias with weight of shape (in, out), as one op (the bias added in place)."""
    return ops.linear(x, weight, bias) if bias is not None else x @ weight


def linear_act(x: Tensor, weight: Tensor, bias: Tensor, activation: str) -> Tensor:
    """activation(x @ weight + bias) as one op, for ``activation`` relu, tanh or sigmoid: the
    same values and gradients as the three ops, without keeping the pre-activation."""
    if activation not in ops.FUSED_ACTIVATIONS:
        raise ValueError(f"linear_act: activation must be one of {', '.join(ops.FUSED_ACTIVATIONS)}, "
                         f"not {activation!r}")
    return ops.linear_act(x, weight, bias, act=activation)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """log(softmax(x)), computed with the max shift so that ±1000 does not overflow."""
    return ops.log_softmax(x, axis=axis)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along ``axis``, stable for large inputs."""
    return ops.exp(log_softmax(x, axis))


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")


def _reduce(losses: Tensor, reduction: str) -> Tensor:
    _check_reduction(reduction)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def _class_targets(scores: Tensor, targets: Any, fn: str) -> np.ndarray:
    """Targets as an integer vector, checked against the (N, C) scores they index."""
    t = np.asarray(targets.data if isinstance(targets, Tensor) else targets)
    if scores.ndim != 2:
        raise ShapeError(f"{fn}: scores must have shape (N, C), got {scores.shape}")
    if t.shape != (scores.shape[0],):
        raise ShapeError(f"{fn}: targets of shape {t.shape} for scores of shape {scores.shape}; "
                         f"expected ({scores.shape[0]},)")
    if t.dtype.kind not in "iu":
        if t.dtype.kind != "f" or not np.all(t == np.round(t)):
            raise TypeError(f"{fn}: targets must be integer class indices, got dtype {t.dtype}")
        t = t.astype(np.int64)
    # Two reductions first; the index of the first bad target only when there is one.
    if t.size and (np.minimum.reduce(t) < 0 or np.maximum.reduce(t) >= scores.shape[1]):
        bad = np.flatnonzero((t < 0) | (t >= scores.shape[1]))
        raise ValueError(f"{fn}: target {t[bad[0]]} at position {bad[0]} is outside the "
                         f"{scores.shape[1]} classes [0, {scores.shape[1] - 1}]")
    return t


def cross_entropy(logits: Tensor, targets: Any, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy: -log softmax(logits)[target], for (N, C) logits and N indices."""
    t = _class_targets(logits, targets, "cross_entropy")
    _check_reduction(reduction)
    return ops.cross_entropy(logits, targets=t, reduction=reduction)


def multi_margin(scores: Tensor, targets: Any, margin: float = 1.0, reduction: str = "mean") -> Tensor:
    """Multiclass hinge loss as torch's multi_margin_loss (p=1):
    sum over i != y of max(0, margin - s_y + s_i), divided by the number of classes C."""
    t = _class_targets(scores, targets, "multi_margin")
    n, c = scores.shape
    rows = np.arange(n)
    correct = scores[rows, t].reshape(n, 1)
    others = np.ones((n, c), dtype=scores.dtype)
    others[rows, t] = 0  # the target's own term is not part of the sum
    per_sample = (ops.relu(scores - correct + margin) * others).sum(axis=1) * (1.0 / c)
    return _reduce(per_sample, reduction)


def max_margin(s_true: Tensor, s_corrupt: Tensor, margin: float = 1.0) -> Tensor:
    """The CS224N window objective J = mean(max(0, margin + s_c - s)): the true window's
    score s should beat the corrupted window's s_c by at least ``margin``."""
    if s_true.shape != s_corrupt.shape:
        raise ShapeError(f"max_margin: s_true of shape {s_true.shape} and s_corrupt of shape "
                         f"{s_corrupt.shape} must match")
    return ops.relu(s_corrupt - s_true + margin).mean()


def mse_loss(pred: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Squared error (pred - target)^2, averaged over all elements by default (as torch)."""
    shape = np.shape(target.data if isinstance(target, Tensor) else target)
    if shape != pred.shape:
        raise ShapeError(f"mse_loss: pred of shape {pred.shape} and target of shape {shape} must match")
    diff = pred - target
    return _reduce(diff * diff, reduction)


def dropout(x: Tensor, p: float = 0.5, training: bool = True,
            rng: np.random.Generator | None = None, rows: tuple[int, int] | None = None) -> Tensor:
    """Inverted dropout as PyTorch: drop each unit with probability ``p`` and scale the kept
    ones by 1 / (1 - p), so evaluation (``training=False``) is the identity.

    ``rows=(start, total)`` says that ``x`` holds rows start..start+len(x) of a batch of
    ``total`` rows: the mask is drawn for the whole batch and sliced, so a batch split over
    workers is masked exactly as the unsplit batch would be (N-invariance).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    shape = x.shape if rows is None else (rows[1],) + x.shape[1:]
    keep = (rng or default_rng()).random(shape, dtype=np.float32) >= p
    if rows is not None:
        keep = keep[rows[0]:rows[0] + len(x)]
    return x * (keep.astype(x.dtype) * (1.0 / (1.0 - p)))


def embedding(weight: Tensor, indices: Any) -> Tensor:
    """Rows of ``weight`` (num_embeddings, dim) for integer ``indices`` of any shape; the
    gradient of a row used several times in a batch is the sum of its uses."""
    idx = np.asarray(indices.data if isinstance(indices, Tensor) else indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers, got dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= weight.shape[0]):
        bad = idx.min() if idx.min() < 0 else idx.max()
        raise ValueError(f"embedding: index {bad} is outside the table of {weight.shape[0]} rows")
    return weight[idx]


def concat(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join tensors along an existing axis."""
    return ops.concat(*tensors, axis=axis)


def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join tensors along a new axis."""
    return ops.stack(*tensors, axis=axis)
