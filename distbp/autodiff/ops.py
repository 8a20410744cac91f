"""Every primitive of distbp: its numpy forward and its vector-Jacobian products, side by side.

A VJP maps the output gradient ``g`` to the gradient of one input, given the forward result
``ans`` and the forward's own arguments. VJPs never build a Jacobian: an elementwise op's
Jacobian is diagonal, so its VJP is an elementwise product. They return gradients in the
broadcast shape and let ``tensor.unbroadcast`` sum them back to each input's shape.
Everything else (mean, softmax, the losses) is composed from these in ``distbp.functional``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .tensor import Primitive, _axes, unbroadcast


def _expand(g: np.ndarray, shape: tuple[int, ...], axis: Any, keepdims: bool) -> np.ndarray:
    """Broadcast a reduction's gradient back over the axes it reduced."""
    if not keepdims:
        # reshape, not np.expand_dims: the same view, without a microsecond of axis checks.
        axes = _axes(axis, len(shape))
        g = g.reshape(tuple(1 if i in axes else n for i, n in enumerate(shape)))
    return np.broadcast_to(g, shape)


# -- arithmetic ---------------------------------------------------------------------------
add = Primitive("add", np.add, lambda g, ans, a, b: g, lambda g, ans, a, b: g,
                into={0: lambda out, g, ans, a, b: unbroadcast(g, out.shape, out),
                      1: lambda out, g, ans, a, b: unbroadcast(g, out.shape, out)})
subtract = Primitive("subtract", np.subtract, lambda g, ans, a, b: g, lambda g, ans, a, b: -g)
multiply = Primitive("multiply", np.multiply, lambda g, ans, a, b: g * b, lambda g, ans, a, b: g * a)
divide = Primitive("divide", np.true_divide,
                   lambda g, ans, a, b: g / b, lambda g, ans, a, b: -g * ans / b)
negative = Primitive("negative", np.negative, lambda g, ans, a: -g)
power = Primitive("power", lambda a, exponent: np.power(a, exponent),
                  # a ** 0 is constant: its gradient is 0, also at a = 0 where 0 * a ** -1 is nan.
                  lambda g, ans, a, exponent: (g * (exponent * np.power(a, exponent - 1)) if exponent != 0
                                               else np.zeros_like(g)))
rpower = Primitive("rpower", lambda a, base: np.power(base, a),  # base ** a, for 2 ** t
                   lambda g, ans, a, base: g * ans * np.log(base))
where = Primitive("where", lambda a, b, cond: np.where(cond, a, b),
                  lambda g, ans, a, b, cond: np.where(cond, g, 0), lambda g, ans, a, b, cond: np.where(cond, 0, g))


# -- matrix product -----------------------------------------------------------------------
# numpy's rule for 1-D operands: a left vector gains a leading axis and a right vector a
# trailing one, both removed from the result. The VJPs redo that promotion, then undo it.
def _promote(g: np.ndarray, a: np.ndarray, b: np.ndarray):
    # The right vector first: for vector @ vector g is 0-d and needs its trailing axis
    # before it can take one at -2.
    if b.ndim == 1:
        b, g = b[:, None], np.expand_dims(g, -1)
    if a.ndim == 1:
        a, g = a[None, :], np.expand_dims(g, -2)
    return g, a, b


def _matmul_vjp_a(g, ans, a, b):
    if a.ndim == 2 and b.ndim == 2:
        return g @ b.T
    g2, _, b2 = _promote(g, a, b)
    ga = g2 @ np.swapaxes(b2, -1, -2)
    return ga[..., 0, :] if a.ndim == 1 else ga


def _matmul_vjp_b(g, ans, a, b):
    if a.ndim == 2 and b.ndim == 2:
        return a.T @ g
    g2, a2, _ = _promote(g, a, b)
    gb = np.swapaxes(a2, -1, -2) @ g2
    return gb[..., 0] if b.ndim == 1 else gb


def _matmul_into_b(out, g, ans, a, b):
    if a.ndim == 2 and b.ndim == 2:
        np.matmul(a.T, g, out=out)  # the weight gradient of a Linear layer, straight into place
    else:
        unbroadcast(_matmul_vjp_b(g, ans, a, b), out.shape, out)


matmul = Primitive("matmul", np.matmul, _matmul_vjp_a, _matmul_vjp_b, into={1: _matmul_into_b})


# x @ w + b in one op: the bias is added in place to the product's fresh array, and the
# weight and bias gradients go straight into the flat gradient buffer. Inputs with more than
# two dimensions are treated as a batch of rows.
def _linear(x, w, b):
    y = np.matmul(x, w)
    y += b
    return y


def _rows(g, x):
    return g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])


def _linear_into_w(out, g, ans, x, w, b):
    if x.ndim != 2:
        g, x = _rows(g, x)
    np.matmul(x.T, g, out=out)


def _linear_into_b(out, g, ans, x, w, b):
    # The ufunc's own reduce: np.sum's Python wrapper costs as much as summing 64 x 64 floats.
    np.add.reduce(g if g.ndim == 2 else g.reshape(-1, g.shape[-1]), axis=0, out=out)


linear = Primitive("linear", _linear,
                   lambda g, ans, x, w, b: g @ w.T,
                   lambda g, ans, x, w, b: _rows(g, x)[1].T @ _rows(g, x)[0],
                   lambda g, ans, x, w, b: g.reshape(-1, g.shape[-1]).sum(axis=0),
                   into={1: _linear_into_w, 2: _linear_into_b})


# -- elementwise functions ----------------------------------------------------------------
def _sigmoid_half_(h):
    # tanh form: never overflows, unlike 1 / (1 + exp(-a)) at a = -1000. In place on h = a / 2,
    # an array the caller owns, so the fused op below gets the same bits as this one.
    np.tanh(h, out=h)
    h *= 0.5
    h += 0.5
    return h


def _sigmoid(a):
    return _sigmoid_half_(a * 0.5)


def _sigmoid_(y):
    y *= 0.5
    return _sigmoid_half_(y)


exp = Primitive("exp", np.exp, lambda g, ans, a: g * ans,
                inplace=lambda g, ans, a: np.multiply(g, ans, out=g))
log = Primitive("log", np.log, lambda g, ans, a: g / a)
log1p = Primitive("log1p", np.log1p, lambda g, ans, a: g / (1 + a))
_erf = np.frompyfunc(math.erf, 1, 1)  # numpy has no erf; math.erf is exact (and scalar)
erf = Primitive("erf", lambda a: np.asarray(_erf(a), dtype=a.dtype),
                lambda g, ans, a: g * ((2 / math.sqrt(math.pi)) * np.exp(-a * a)))
sqrt = Primitive("sqrt", np.sqrt, lambda g, ans, a: g / (2 * ans))
abs_ = Primitive("abs", np.abs, lambda g, ans, a: g * np.sign(a))
tanh = Primitive("tanh", np.tanh, lambda g, ans, a: g * (1 - ans * ans),
                 inplace=lambda g, ans, a: np.multiply(g, 1 - ans * ans, out=g))
sigmoid = Primitive("sigmoid", _sigmoid, lambda g, ans, a: g * (ans * (1 - ans)),
                    inplace=lambda g, ans, a: np.multiply(g, ans * (1 - ans), out=g))
relu = Primitive("relu", lambda a: np.maximum(a, 0), lambda g, ans, a: g * (ans > 0),
                 inplace=lambda g, ans, a: np.multiply(g, ans > 0, out=g))
leaky_relu = Primitive("leaky_relu", lambda a, slope: np.where(a > 0, a, a * slope),
                       lambda g, ans, a, slope: np.where(a > 0, g, g * slope))
hardtanh = Primitive("hardtanh", lambda a, lo, hi: np.clip(a, lo, hi),
                     lambda g, ans, a, lo, hi: g * ((a > lo) & (a < hi)))


def _inside(a, lo, hi):
    mask = np.ones(a.shape, bool) if lo is None else a >= lo
    return mask if hi is None else mask & (a <= hi)


# torch.clamp: the gradient passes where lo <= a <= hi (bounds included, unlike hardtanh's).
clamp = Primitive("clamp", lambda a, lo, hi: np.clip(a, lo, hi), lambda g, ans, a, lo, hi: g * _inside(a, lo, hi))


# activation(x @ w + b) as one op, for the activations whose VJP reads only their output: the
# activation overwrites the product's fresh array, so the pre-activation, which no VJP reads,
# does not outlive the forward, and the graph keeps one array per layer (the output, which the
# next layer's VJP reads anyway) instead of two. ``pre`` applies the activation's own VJP once
# (its in-place form when backward owns g); linear's VJPs then take that gradient.
_ACTIVATE_ = {"relu": lambda y: np.maximum(y, 0, out=y), "tanh": lambda y: np.tanh(y, out=y),
              "sigmoid": _sigmoid_}
_FUSABLE = {"relu": relu, "tanh": tanh, "sigmoid": sigmoid}
FUSED_ACTIVATIONS = tuple(_ACTIVATE_)


def _linear_act_pre(g, owned, ans, x, w, b, act):
    prim = _FUSABLE[act]
    return prim.inplace(g, ans, None) if owned else prim.vjps[0](g, ans, None)


def _without_act(fn):
    """One of linear's VJPs (or into-writers), taking and ignoring linear_act's ``act``."""
    return lambda *args, act: fn(*args)


linear_act = Primitive("linear_act", lambda x, w, b, act: _ACTIVATE_[act](_linear(x, w, b)),
                       *map(_without_act, linear.vjps),
                       into={i: _without_act(f) for i, f in linear.into.items()}, pre=_linear_act_pre)


def _log_softmax(a, axis):
    # The ufuncs' own reduce, not a.max() / a.sum(): the same result without their Python wrappers.
    shifted = a - np.maximum.reduce(a, axis=axis, keepdims=True)  # the max shift keeps exp() finite
    shifted -= np.log(np.add.reduce(np.exp(shifted), axis=axis, keepdims=True))
    return shifted


log_softmax = Primitive("log_softmax", _log_softmax,
                        lambda g, ans, a, axis: g - np.exp(ans) * g.sum(axis=axis, keepdims=True))


# Softmax cross-entropy, -log softmax(s)[t], for (N, C) scores and N class indices, per sample
# or already reduced (mean or sum over the batch): one op whose VJP is the textbook
# (softmax(s) - onehot(t)) * g, scaled by 1/N for the mean. The reduction is part of the op,
# not a sum and a multiply after it: on a model of small layers the two extra graph nodes cost
# more than the whole loss's arithmetic (bench/deep.py).
def _cross_entropy(s, targets, reduction):
    losses = -_log_softmax(s, 1)[np.arange(len(targets)), targets]
    if reduction == "none":
        return losses
    total = losses.sum()
    return total * (1.0 / len(targets)) if reduction == "mean" else total


def _cross_entropy_vjp(g, ans, s, targets, reduction):
    grad = s - np.maximum.reduce(s, axis=1, keepdims=True)
    np.exp(grad, out=grad)
    grad /= np.add.reduce(grad, axis=1, keepdims=True)
    grad[np.arange(len(targets)), targets] -= 1
    if reduction == "none":
        grad *= g[:, None]
    else:  # g is 0-d: scaled as a 0-d array, so float32 stays float32
        grad *= g * (1.0 / len(targets)) if reduction == "mean" else g
    return grad


cross_entropy = Primitive("cross_entropy", _cross_entropy, _cross_entropy_vjp)


# -- reductions ---------------------------------------------------------------------------
def _max_vjp(g, ans, a, axis, keepdims):
    # For max and min alike. Ties share the gradient equally, so the VJP is the same whichever maximum is picked.
    mask = a == _expand(ans, a.shape, axis, keepdims)
    count = mask.sum(axis=axis, keepdims=True, dtype=g.dtype)
    return _expand(g, a.shape, axis, keepdims) * mask / count


sum_ = Primitive("sum", lambda a, axis, keepdims: np.sum(a, axis=axis, keepdims=keepdims),
                 lambda g, ans, a, axis, keepdims: _expand(g, a.shape, axis, keepdims))
max_ = Primitive("max", lambda a, axis, keepdims: np.max(a, axis=axis, keepdims=keepdims), _max_vjp)
min_ = Primitive("min", lambda a, axis, keepdims: np.min(a, axis=axis, keepdims=keepdims), _max_vjp)


# -- shapes and indexing ------------------------------------------------------------------
def _is_basic_index(index: Any) -> bool:
    # Basic indexing (ints, slices, None, ...) never repeats an element; arrays may.
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, np.integer, slice)) for i in items)


def _scatter(out, g, ans, a, index):
    out.fill(0)
    if _is_basic_index(index):
        out[index] = g
    else:
        np.add.at(out, index, g)  # repeated indices accumulate
    return out


reshape = Primitive("reshape", lambda a, shape: np.reshape(a, shape),
                    lambda g, ans, a, shape: np.reshape(g, a.shape))
transpose = Primitive("transpose", lambda a, axes: np.transpose(a, axes),
                      # axes modulo ndim: argsort of negative axes would not invert the permutation.
                      lambda g, ans, a, axes: np.transpose(g, None if axes is None
                                                           else np.argsort(np.mod(axes, a.ndim))))
broadcast_to = Primitive("broadcast_to", lambda a, shape: np.broadcast_to(a, shape),
                         lambda g, ans, a, shape: g)  # backward's unbroadcast sums g back to a's shape
copy = Primitive("copy", np.array, lambda g, ans, a: g)
astype = Primitive("astype", lambda a, dtype: a.astype(dtype), lambda g, ans, a, dtype: g.astype(a.dtype))
getitem = Primitive("getitem", lambda a, index: a[index],
                    lambda g, ans, a, index: _scatter(np.empty(a.shape, g.dtype), g, ans, a, index),
                    into={0: _scatter})


def _concat_vjp(argnum, g, ans, *arrays, axis):
    start = sum(arrays[i].shape[axis] for i in range(argnum))
    index = [slice(None)] * g.ndim
    index[axis] = slice(start, start + arrays[argnum].shape[axis])
    return g[tuple(index)]


concat = Primitive("concat", lambda *arrays, axis: np.concatenate(arrays, axis=axis),
                   vjp_argnum=_concat_vjp)
stack = Primitive("stack", lambda *arrays, axis: np.stack(arrays, axis=axis),
                  vjp_argnum=lambda argnum, g, ans, *arrays, axis: np.take(g, argnum, axis=axis))
