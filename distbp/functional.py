"""Activations and losses, composed from the primitives of ``distbp.autodiff.ops``.

Conventions follow PyTorch where the course notes differ: ``dropout``'s ``p`` is the drop
probability, ``multi_margin`` divides by the number of classes, and targets are class indices.
Names, arguments and formulas are torch.nn.functional's; the deprecated ``size_average`` and
``reduce`` arguments are not taken, so the arguments torch lists after them are keyword-only
here (a torch call that passes them by position fails instead of binding the wrong value).
Where torch's gradient is not the derivative of its forward (binary_cross_entropy where the
log is clamped), distbp's is the derivative of the forward.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .autodiff import ops
from .autodiff.ops import hardtanh as _hardtanh
from .autodiff.random import default_rng
from .autodiff.tensor import ShapeError, Tensor

__all__ = [
    "linear", "linear_act", "relu", "leaky_relu", "sigmoid", "tanh", "hardtanh", "softsign", "softmax", "log_softmax",
    "gelu", "silu", "elu", "softplus", "logsigmoid",
    "cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits", "l1_loss",
    "smooth_l1_loss", "huber_loss", "kl_div", "multi_margin", "multi_margin_loss", "max_margin", "mse_loss",
    "one_hot", "layer_norm", "normalize", "dropout", "embedding", "concat", "stack",
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


# -- activations ----------------------------------------------------------------------------
_SQRT_HALF = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _raw(x: Any) -> np.ndarray:
    """The values of a Tensor or array-like operand, as an array (for masks and checks)."""
    return x.data if isinstance(x, Tensor) else np.asarray(x)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """x * Phi(x), Phi the standard normal CDF: 0.5 x (1 + erf(x / sqrt 2)); with
    ``approximate='tanh'``, 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), as torch."""
    if approximate == "none":
        return x * (ops.erf(x * _SQRT_HALF) * 0.5 + 0.5)
    if approximate == "tanh":
        inner = (x + x * x * x * 0.044715) * _SQRT_2_OVER_PI
        return x * (ops.tanh(inner) * 0.5 + 0.5)
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', not {approximate!r}")


def silu(x: Tensor) -> Tensor:
    """x * sigmoid(x) (the swish)."""
    return x * ops.sigmoid(x)


def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """x for x > 0, alpha (exp(x) - 1) otherwise. The exponential is taken of min(x, 0), so
    the branch where() discards never overflows (exp(1000) would make its zero gradient nan)."""
    negative = (ops.exp(ops.clamp(x, lo=None, hi=0.0)) - 1.0) * alpha
    return ops.where(x, negative, cond=_raw(x) > 0)


def _log1p_exp_parts(z: Tensor) -> tuple[Tensor, Tensor]:
    """log(1 + exp(z)) = relu(z) + log1p(exp(-|z|)) as its two terms, neither of which
    overflows. -|z| is written z - 2 relu(z), whose gradient at 0 is 1 (abs's would be 0), so
    that the gradient at z = 0 is sigmoid(0) = 0.5 as it should be."""
    r = ops.relu(z)
    return r, ops.log1p(ops.exp(z - r * 2.0))


def _log1p_exp(z: Tensor) -> Tensor:
    r, tail = _log1p_exp_parts(z)
    return r + tail


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(beta x)) / beta, and x itself where beta x > threshold, as torch."""
    z = x if beta == 1 else x * beta
    smooth = _log1p_exp(z) if beta == 1 else _log1p_exp(z) * (1.0 / beta)
    return ops.where(x, smooth, cond=_raw(z) > threshold)


def logsigmoid(x: Tensor) -> Tensor:
    """log(sigmoid(x)) = -log(1 + exp(-x)), finite at ±1000 (no threshold: exact everywhere)."""
    return -_log1p_exp(-x)


def _dim(fn: str, dim: Any, axis: Any) -> Any:
    if dim is not None and axis is not None:
        raise TypeError(f"{fn}: give dim (torch) or axis (numpy), not both")
    d = dim if axis is None else axis
    return -1 if d is None else d


def log_softmax(x: Tensor, dim: int | None = None, *, axis: int | None = None, dtype: Any = None) -> Tensor:
    """log(softmax(x)) along ``dim`` (numpy's ``axis`` also works; the last axis when neither
    is given), computed with the max shift so that ±1000 does not overflow. ``dtype`` casts
    the input first, as torch."""
    if dtype is not None:
        x = x.to(dtype)
    return ops.log_softmax(x, axis=_dim("log_softmax", dim, axis))


def softmax(x: Tensor, dim: int | None = None, *, axis: int | None = None, dtype: Any = None) -> Tensor:
    """exp(x) / sum(exp(x)) along ``dim`` (or ``axis``; the last axis by default), stable for
    large inputs."""
    return ops.exp(log_softmax(x, _dim("softmax", dim, axis), dtype=dtype))


# -- losses: shared checks ------------------------------------------------------------------
def _check_reduction(reduction: str, fn: str = "loss", allowed: tuple[str, ...] = ("mean", "sum", "none")) -> None:
    if reduction not in allowed:
        names = ", ".join(repr(r) for r in allowed[:-1]) + f" or {allowed[-1]!r}"
        raise ValueError(f"{fn}: reduction must be {names}, not {reduction!r}")


def _reduce(losses: Tensor, reduction: str, fn: str = "loss") -> Tensor:
    _check_reduction(reduction, fn)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def _targets(scores: Tensor, targets: Any, fn: str, ignore_index: int | None = None,
             any_shape: bool = False) -> tuple[np.ndarray, bool]:
    """Class-index targets as an integer array checked against the scores they index, and
    whether any of them is ``ignore_index`` (which may lie outside the classes). Scores are
    (N, C); with ``any_shape`` also unbatched (C,) with a 0-d target, or (N, C, d1, ...) with
    targets (N, d1, ...), as torch's nll_loss."""
    t = np.asarray(targets.data if isinstance(targets, Tensor) else targets)
    if scores.ndim == 2 or not any_shape:
        if scores.ndim != 2:
            raise ShapeError(f"{fn}: scores must have shape (N, C), got {scores.shape}")
        if t.shape != (scores.shape[0],):
            raise ShapeError(f"{fn}: targets of shape {t.shape} for scores of shape {scores.shape}; "
                             f"expected ({scores.shape[0]},)")
        classes = scores.shape[1]
    else:
        if scores.ndim == 0:
            raise ShapeError(f"{fn}: scores must have shape (N, C), (N, C, d1, ...) or (C,), got ()")
        expected = () if scores.ndim == 1 else (scores.shape[0],) + scores.shape[2:]
        if t.shape != expected:
            raise ShapeError(f"{fn}: scores of shape (N, C) or (N, C, d1, ...) take targets of shape "
                             f"(N,) or (N, d1, ...), unbatched scores (C,) a 0-d target; got targets of "
                             f"shape {t.shape} for scores of shape {scores.shape}, expected {expected}")
        classes = scores.shape[0 if scores.ndim == 1 else 1]
    if t.dtype.kind not in "iu":
        if t.dtype.kind != "f" or not np.all(t == np.round(t)):
            raise TypeError(f"{fn}: targets must be integer class indices, got dtype {t.dtype}")
        t = t.astype(np.int64)
    ignored = False
    # Two reductions first; the index of the first bad target only when there is one.
    if t.size and (np.minimum.reduce(t, axis=None) < 0 or np.maximum.reduce(t, axis=None) >= classes):
        bad = (t < 0) | (t >= classes)
        if ignore_index is not None:
            bad &= t != ignore_index
            ignored = True  # some target is outside the classes, and every such one is ignore_index
        if bad.any():
            where = np.argwhere(bad)[0] if t.ndim else ()
            pos = "" if t.ndim == 0 else f" at position {where[0] if t.ndim == 1 else tuple(int(i) for i in where)}"
            raise ValueError(f"{fn}: target {t[tuple(where)]}{pos} is outside the "
                             f"{classes} classes [0, {classes - 1}]")
    elif ignore_index is not None and 0 <= ignore_index < classes:
        ignored = bool(np.any(t == ignore_index))
    return t, ignored


def _class_targets(scores: Tensor, targets: Any, fn: str) -> np.ndarray:
    """Targets as an integer vector, checked against the (N, C) scores they index."""
    return _targets(scores, targets, fn)[0]


def _class_weight(weight: Any, scores: Tensor, fn: str) -> np.ndarray | None:
    """A per-class weight as a constant array of the scores' dtype, checked to have C entries."""
    if weight is None:
        return None
    if isinstance(weight, str):
        raise TypeError(f"{fn}: weight must be C class weights, not {weight!r} (pass reduction= by keyword)")
    w = np.asarray(weight.data if isinstance(weight, Tensor) else weight)
    classes = scores.shape[0 if scores.ndim == 1 else 1] if scores.ndim else 0
    if w.shape != (classes,):
        raise ShapeError(f"{fn}: weight of shape {w.shape} for scores of shape {scores.shape}; "
                         f"expected ({classes},), one weight per class")
    return w.astype(scores.dtype if scores.dtype.kind == "f" else np.float64, copy=False)


def _element_weight(weight: Any, shape: tuple[int, ...], dtype: Any, fn: str, name: str = "weight") -> np.ndarray:
    """An elementwise weight (weight, pos_weight) as a constant array that broadcasts to ``shape``."""
    if isinstance(weight, str):
        raise TypeError(f"{fn}: {name} must be an array of weights, not {weight!r} (pass reduction= by keyword)")
    w = np.asarray(weight.data if isinstance(weight, Tensor) else weight)
    try:
        fits = np.broadcast_shapes(w.shape, shape) == shape
    except ValueError:
        fits = False
    if not fits:
        raise ShapeError(f"{fn}: {name} of shape {w.shape} does not broadcast to the input's shape {shape}")
    return w.astype(dtype if np.dtype(dtype).kind == "f" else np.float64, copy=False)


def _same_shape(input: Tensor, target: Any, fn: str) -> None:
    shape = np.shape(target.data if isinstance(target, Tensor) else target)
    if shape != input.shape:
        raise ShapeError(f"{fn}: input of shape {input.shape} and target of shape {shape} must match")


def _pick(x: Tensor, t: np.ndarray) -> Tensor:
    """x[n, t[n], d1, ...] along the class axis (1, or 0 for unbatched x): shape t.shape."""
    if x.ndim == 1:
        return x[t]
    if x.ndim == 2:
        return x[np.arange(len(t)), t]
    grid = np.indices(t.shape, sparse=True)
    return x[(grid[0], t) + tuple(grid[1:])]


def _weighted_mean(total: Tensor, denominator: float) -> Tensor:
    if denominator == 0:  # every target ignored: nan, as torch, with a zero gradient
        return total * 0.0 + float("nan")
    return total * (1.0 / denominator)


def _nll(log_probs: Tensor, t: np.ndarray, ignored: bool, w: np.ndarray | None, ignore_index: int,
         reduction: str, smoothing: float = 0.0) -> Tensor:
    """torch's nll_loss on checked targets; with ``smoothing`` its cross_entropy label
    smoothing, (1 - e) nll + e / C * (-sum_c w_c log p_c), zero for ignored targets, whose
    mean shares nll's denominator (the weights of the kept targets)."""
    keep = None
    if ignored:
        keep = t != ignore_index
        t = np.where(keep, t, 0)
    picked = _pick(log_probs, t)
    if w is None and keep is None:
        per, denominator = -picked, t.size
    else:
        wt = w[t] if w is not None else np.ones(t.shape, log_probs.dtype)
        if keep is not None:
            wt = wt * keep
        per, denominator = picked * -wt, float(np.sum(wt))
    if smoothing:
        cdim = 0 if log_probs.ndim == 1 else 1
        classes = log_probs.shape[cdim]
        terms = log_probs if w is None else log_probs * w.reshape((-1,) + (1,) * (log_probs.ndim - cdim - 1))
        smooth = terms.sum(axis=cdim) * -(smoothing / classes)
        if keep is not None:
            smooth = smooth * keep
        per = per * (1.0 - smoothing) + smooth
    if reduction == "none":
        return per
    total = per.sum()
    return total if reduction == "sum" else _weighted_mean(total, denominator)


# -- losses -----------------------------------------------------------------------------------
def cross_entropy(input: Tensor, target: Any, weight: Any = None, *, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy, as torch.nn.functional.cross_entropy.

    ``input`` holds scores (N, C), (C,) or (N, C, d1, ...). ``target`` holds class indices of
    shape (N,), () or (N, d1, ...), or class probabilities of the input's own shape (floats).
    With indices: -w[t] log softmax(input)[t] per element, zero where t == ignore_index; the
    'mean' divides by the sum of w[t] over the kept targets (their count without ``weight``).
    ``label_smoothing`` e mixes the one-hot target with the uniform distribution:
    (1 - e) nll + e / C * sum_c -w_c log p_c. With probabilities q: -sum_c w_c q_c log p_c,
    q smoothed to (1 - e) q + e / C, and the 'mean' divides by the number of samples.

    (N, C) scores, index targets, no weight, no smoothing and no ignored target take one fused
    op (ops.cross_entropy), whose VJP is the textbook softmax(s) - onehot(t).
    """
    t = target.data if isinstance(target, Tensor) else target
    if np.shape(t) == input.shape and np.asarray(t).dtype.kind == "f" and input.ndim:
        return _soft_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing)
    t, ignored = _targets(input, target, "cross_entropy", ignore_index, any_shape=True)
    _check_reduction(reduction, "cross_entropy")
    if weight is None and not label_smoothing and not ignored and input.ndim == 2:
        return ops.cross_entropy(input, targets=t, reduction=reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    w = _class_weight(weight, input, "cross_entropy")
    log_probs = ops.log_softmax(input, axis=0 if input.ndim == 1 else 1)
    return _nll(log_probs, t, ignored, w, ignore_index, reduction, label_smoothing)


def _soft_cross_entropy(input: Tensor, target: Any, weight: Any, ignore_index: int, reduction: str,
                        label_smoothing: float) -> Tensor:
    """cross_entropy with class-probability targets (torch's formula, see cross_entropy)."""
    _check_reduction(reduction, "cross_entropy")
    if ignore_index >= 0:
        raise ValueError(f"cross_entropy: ignore_index ({ignore_index}) is not supported for class-probability "
                         "targets (a float target of the input's shape)")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    cdim = 0 if input.ndim == 1 else 1
    classes = input.shape[cdim]
    q = target if isinstance(target, Tensor) else np.asarray(target, dtype=input.dtype)
    if label_smoothing:
        q = q * (1.0 - label_smoothing) + label_smoothing / classes
    terms = ops.log_softmax(input, axis=cdim) * q
    w = _class_weight(weight, input, "cross_entropy")
    if w is not None:
        terms = terms * w.reshape((-1,) + (1,) * (input.ndim - cdim - 1))
    if reduction == "none":
        return -terms.sum(axis=cdim)
    total = -terms.sum()
    return total if reduction == "sum" else _weighted_mean(total, input.data.size / classes)


def nll_loss(input: Tensor, target: Any, weight: Any = None, *, ignore_index: int = -100,
             reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of log-probabilities ``input`` (N, C), (C,) or (N, C, d1, ...)
    at class indices ``target``: -w[t] input[t] per element, zero where t == ignore_index;
    the 'mean' divides by the sum of w[t] over the kept targets, as torch (nan if none is kept)."""
    _check_reduction(reduction, "nll_loss")
    t, ignored = _targets(input, target, "nll_loss", ignore_index, any_shape=True)
    return _nll(input, t, ignored, _class_weight(weight, input, "nll_loss"), ignore_index, reduction)


def _log_clamped(p: Tensor) -> Tensor:
    """max(log p, -100) for p in [0, 1], as torch's binary_cross_entropy: finite at p = 0 (the
    inner clamp to the smallest subnormal keeps log's input positive), gradient 0 where clamped."""
    tiny = float(np.finfo(p.dtype).smallest_subnormal) if p.dtype.kind == "f" else 5e-324
    return ops.clamp(ops.log(ops.clamp(p, lo=tiny, hi=None)), lo=-100.0, hi=None)


def binary_cross_entropy(input: Tensor, target: Any, weight: Any = None, *, reduction: str = "mean") -> Tensor:
    """-w (y log x + (1 - y) log(1 - x)) for probabilities x in [0, 1], each log clamped at
    -100 as torch. The gradient is that of this forward: 0 where a log is clamped (x = 0 or
    1), where torch substitutes (x - y) / max(x (1 - x), 1e-12)."""
    fn = "binary_cross_entropy"
    _check_reduction(reduction, fn)
    _same_shape(input, target, fn)
    x = input.data
    if x.size and (np.minimum.reduce(x, axis=None) < 0 or np.maximum.reduce(x, axis=None) > 1):
        raise ValueError(f"{fn}: input values must be probabilities in [0, 1], got values in "
                         f"[{x.min()}, {x.max()}] (binary_cross_entropy_with_logits takes scores)")
    y = target if isinstance(target, Tensor) else np.asarray(target, dtype=input.dtype)
    losses = -(_log_clamped(input) * y + _log_clamped(1.0 - input) * (1.0 - y))
    if weight is not None:
        losses = losses * _element_weight(weight, input.shape, input.dtype, fn)
    return _reduce(losses, reduction, fn)


def binary_cross_entropy_with_logits(input: Tensor, target: Any, weight: Any = None, *, reduction: str = "mean",
                                     pos_weight: Any = None) -> Tensor:
    """binary_cross_entropy(sigmoid(input), target) without forming the sigmoid:
    (1 - y) x + (1 + (p - 1) y) log(1 + exp(-x)), stable at ±1000; ``pos_weight`` p weighs
    the positive term and broadcasts along the last (class) dimension, ``weight`` rescales
    each element. Both are constants (no gradient)."""
    fn = "binary_cross_entropy_with_logits"
    _check_reduction(reduction, fn)
    _same_shape(input, target, fn)
    y = target if isinstance(target, Tensor) else np.asarray(target, dtype=input.dtype)
    r, tail = _log1p_exp_parts(-input)
    if pos_weight is None:
        # torch's order: (1 - y) x + relu(-x) first, which is exactly 0 for y = 0 and x < 0,
        # so that a tiny loss keeps its relative precision.
        losses = input * (1.0 - y) + r + tail
    else:
        p = _element_weight(pos_weight, input.shape, input.dtype, fn, "pos_weight")
        losses = input * (1.0 - y) + (r + tail) * ((p - 1.0) * y + 1.0)
    if weight is not None:
        losses = losses * _element_weight(weight, input.shape, input.dtype, fn)
    return _reduce(losses, reduction, fn)


def l1_loss(input: Tensor, target: Any, *, reduction: str = "mean") -> Tensor:
    """|input - target|, averaged over all elements by default."""
    _check_reduction(reduction, "l1_loss")
    _same_shape(input, target, "l1_loss")
    return _reduce(ops.abs_(input - target), reduction, "l1_loss")


def smooth_l1_loss(input: Tensor, target: Any, *, reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """0.5 d^2 / beta where |d| < beta, |d| - 0.5 beta elsewhere (d = input - target); beta = 0
    is the L1 loss, as torch."""
    fn = "smooth_l1_loss"
    _check_reduction(reduction, fn)
    _same_shape(input, target, fn)
    if beta < 0:
        raise ValueError(f"{fn}: beta must be non-negative, got {beta}")
    d = input - target
    a = ops.abs_(d)
    if beta == 0:
        return _reduce(a, reduction, fn)
    return _reduce(ops.where(d * d * (0.5 / beta), a - 0.5 * beta, cond=a.data < beta), reduction, fn)


def huber_loss(input: Tensor, target: Any, reduction: str = "mean", delta: float = 1.0) -> Tensor:
    """0.5 d^2 where |d| < delta, delta (|d| - 0.5 delta) elsewhere (d = input - target)."""
    fn = "huber_loss"
    _check_reduction(reduction, fn)
    _same_shape(input, target, fn)
    if not delta > 0:
        raise ValueError(f"{fn}: delta must be positive, got {delta}")
    d = input - target
    a = ops.abs_(d)
    return _reduce(ops.where(d * d * 0.5, (a - 0.5 * delta) * delta, cond=a.data < delta), reduction, fn)


def kl_div(input: Tensor, target: Any, *, reduction: str = "mean", log_target: bool = False) -> Tensor:
    """Pointwise KL divergence target * (log target - input) for log-probabilities ``input``
    (0 where target = 0); with ``log_target``, exp(target) * (target - input). 'mean' averages
    over all elements (torch's default, which torch warns about), 'batchmean' divides the sum
    by the batch size input.shape[0] (the KL divergence's mathematical definition)."""
    fn = "kl_div"
    _check_reduction(reduction, fn, ("mean", "batchmean", "sum", "none"))
    _same_shape(input, target, fn)
    y = target if isinstance(target, Tensor) else np.asarray(target, dtype=input.dtype)
    if log_target:
        losses = ops.exp(y) * (y - input)
    else:
        positive = _raw(y) > 0
        # target * log(target), 0 at target = 0 (xlogy): the log of 1 there, never of 0.
        losses = y * ops.log(ops.where(y, 1.0, cond=positive)) - y * input
    if reduction == "batchmean":
        return losses.sum() * (1.0 / input.shape[0]) if input.ndim else losses.sum()
    return _reduce(losses, reduction, fn)


def _multi_margin(scores: Tensor, targets: Any, p: int, margin: float, weight: Any, reduction: str,
                  fn: str) -> Tensor:
    _check_reduction(reduction, fn)
    if p not in (1, 2):
        raise ValueError(f"{fn}: p must be 1 or 2, got {p}")
    t = _class_targets(scores, targets, fn)
    w = _class_weight(weight, scores, fn)
    n, c = scores.shape
    rows = np.arange(n)
    correct = scores[rows, t].reshape(n, 1)
    others = np.ones((n, c), dtype=scores.dtype)
    others[rows, t] = 0  # the target's own term is not part of the sum
    hinge = ops.relu(scores - correct + margin)
    if p == 2:
        hinge = hinge * hinge
    if w is not None:
        others *= w[t].reshape(n, 1)  # torch's w[y] scales every term of sample y
    per_sample = (hinge * others).sum(axis=1) * (1.0 / c)
    return _reduce(per_sample, reduction, fn)


def multi_margin(scores: Tensor, targets: Any, margin: float = 1.0, reduction: str = "mean") -> Tensor:
    """Multiclass hinge loss as torch's multi_margin_loss (p=1):
    sum over i != y of max(0, margin - s_y + s_i), divided by the number of classes C."""
    return _multi_margin(scores, targets, 1, margin, None, reduction, "multi_margin")


def multi_margin_loss(input: Tensor, target: Any, p: int = 1, margin: float = 1.0, weight: Any = None, *,
                      reduction: str = "mean") -> Tensor:
    """torch.nn.functional.multi_margin_loss for (N, C) scores:
    sum over i != y of w[y] max(0, margin - x_y + x_i)^p, divided by C, with p 1 or 2."""
    return _multi_margin(input, target, p, margin, weight, reduction, "multi_margin_loss")


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
    return _reduce(diff * diff, reduction, "mse_loss")


# -- other ------------------------------------------------------------------------------------
def one_hot(tensor: Any, num_classes: int = -1) -> Tensor:
    """int64 one-hot vectors, shape tensor.shape + (num_classes,), for integer class indices;
    ``num_classes=-1`` takes max + 1. No gradient."""
    t = np.asarray(tensor.data if isinstance(tensor, Tensor) else tensor)
    if t.dtype.kind not in "iu":
        raise TypeError(f"one_hot: needs integer class indices, got dtype {t.dtype}")
    if num_classes == -1:
        if t.size == 0:
            raise ValueError("one_hot: cannot infer the number of classes of an empty tensor; give num_classes")
        num_classes = int(t.max()) + 1
    if num_classes < 0:
        raise ValueError(f"one_hot: num_classes must be -1 or non-negative, got {num_classes}")
    if t.size and t.min() < 0:
        raise ValueError(f"one_hot: class values must be non-negative, got {t.min()}")
    if t.size and t.max() >= num_classes:
        raise ValueError(f"one_hot: class value {t.max()} is not below num_classes={num_classes}")
    out = np.zeros(t.shape + (num_classes,), dtype=np.int64)
    np.put_along_axis(out, t[..., None].astype(np.intp), 1, axis=-1)
    return Tensor._wrap(out)


def layer_norm(x: Tensor, normalized_shape: int | Sequence[int], weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last len(normalized_shape)
    dimensions, with the biased variance, as torch."""
    shape = (int(normalized_shape),) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or x.shape[x.ndim - k:] != shape or x.ndim < k:
        raise ShapeError(f"layer_norm: input of shape {x.shape} does not end in normalized_shape {shape}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(np.shape(p.data if isinstance(p, Tensor) else p)) != shape:
            raise ShapeError(f"layer_norm: {name} of shape {np.shape(_raw(p))} for normalized_shape {shape}")
    axes = tuple(range(-k, 0))
    d = x - x.mean(axis=axes, keepdims=True)
    y = d / ops.sqrt((d * d).mean(axis=axes, keepdims=True) + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def normalize(x: Tensor, p: float = 2.0, dim: Any = 1, eps: float = 1e-12) -> Tensor:
    """x / max(||x||_p, eps) along ``dim``. For p other than 1 and inf the clamp is taken on
    sum |x|^p (at eps^p), which is the same maximum but keeps the gradient of a zero vector
    finite (the p-th root's derivative at 0 is infinite)."""
    if p == float("inf"):
        norm = ops.clamp(ops.max_(ops.abs_(x), axis=dim, keepdims=True), lo=eps, hi=None)
    elif p == 1:
        norm = ops.clamp(ops.abs_(x).sum(axis=dim, keepdims=True), lo=eps, hi=None)
    elif isinstance(p, (int, float)) and p > 0:
        powered = x * x if p == 2 else ops.abs_(x) ** p
        total = ops.clamp(powered.sum(axis=dim, keepdims=True), lo=eps ** p, hi=None)
        norm = ops.sqrt(total) if p == 2 else total ** (1.0 / p)
    else:
        raise ValueError(f"normalize: p must be a positive number or inf, got {p!r}")
    return x / norm


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
