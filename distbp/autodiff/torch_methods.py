"""Tensor's torch-style conveniences, composed from the primitives of ``ops``: the methods a
PyTorch user reaches for (comparisons, ``var``/``std``/``norm``, ``max(dim)`` with indices,
``unsqueeze``/``squeeze``/``flatten``/``expand``, dtype conversions, in-place updates, numpy
dispatch). ``Tensor`` (tensor.py) inherits them; its own class holds the graph, the
operators and the reverse-mode walk. Nothing here adds a primitive or a VJP."""

from __future__ import annotations

from collections import namedtuple
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .tensor import _FREED, ShapeError, _count, _grad_mode, _reduction, _shape_arg

if TYPE_CHECKING:
    from .tensor import Primitive, Tensor


class TorchMethods:
    """Mixed into Tensor (which has the ``data``, ``_record`` and ``requires_grad`` slots)."""

    __slots__ = ()

    def __reduce_ex__(self, protocol: int):
        # pickle and deepcopy keep the values, gradient and requires_grad of a leaf; a graph
        # (whose records hold the primitives' functions) is never copied: a non-leaf comes back
        # as a leaf, as torch's pickling of a detached tensor.
        return (_rebuild, (type(self), np.array(self.data), None if self.grad is None else np.array(self.grad),
                           self.requires_grad))

    @property
    def size(self) -> "_Size":
        """The number of elements, numpy's ``size``, which can also be called as torch's
        ``size()`` (the shape) or ``size(dim)``."""
        return _Size(self.data.size, self.data.shape)

    def numel(self) -> int:
        return self.data.size

    def dim(self) -> int:
        return self.data.ndim

    def tolist(self) -> Any:
        return self.data.tolist()

    def clone(self) -> "Tensor":
        """A copy of the data that stays in the graph (its gradient flows to this tensor)."""
        return copy(self)

    # Comparisons: elementwise, boolean, no graph (torch's rule: a comparison has no gradient).
    def __eq__(self, b: Any) -> "Tensor":  # type: ignore[override]
        return self._wrap(np.equal(self.data, _value(b)))

    def __ne__(self, b: Any) -> "Tensor":  # type: ignore[override]
        return self._wrap(np.not_equal(self.data, _value(b)))

    def __lt__(self, b: Any) -> "Tensor":
        return self._wrap(np.less(self.data, _value(b)))

    def __le__(self, b: Any) -> "Tensor":
        return self._wrap(np.less_equal(self.data, _value(b)))

    def __gt__(self, b: Any) -> "Tensor":
        return self._wrap(np.greater(self.data, _value(b)))

    def __ge__(self, b: Any) -> "Tensor":
        return self._wrap(np.greater_equal(self.data, _value(b)))

    def clamp(self, min: float | None = None, max: float | None = None) -> "Tensor":
        """Values limited to [min, max] (either may be None); the gradient passes where
        min <= x <= max, as torch.clamp."""
        if min is None and max is None:
            raise ValueError("clamp: at least one of min and max must be given")
        return clamp(self, lo=min, hi=max)

    clip = clamp

    def softmax(self, dim: int = -1) -> "Tensor":
        return exp(log_softmax(self, axis=dim))

    def log_softmax(self, dim: int = -1) -> "Tensor":
        return log_softmax(self, axis=dim)

    def var(self, dim: Any = None, unbiased: bool = True, keepdim: bool = False, *, correction: int | None = None,
            axis: Any = None, keepdims: bool | None = None) -> "Tensor":
        """The variance, with Bessel's correction by default (torch's, not numpy's ddof=0)."""
        kw = _reduction("var", dim, keepdim, axis, keepdims)
        ddof = (1 if unbiased else 0) if correction is None else correction
        d = self - self.mean(axis=kw["axis"], keepdims=True)
        return sum_(d * d, **kw) * (1.0 / max(_count(self, kw["axis"]) - ddof, 0))

    def std(self, dim: Any = None, unbiased: bool = True, keepdim: bool = False, *, correction: int | None = None,
            axis: Any = None, keepdims: bool | None = None) -> "Tensor":
        return sqrt(self.var(dim, unbiased, keepdim, correction=correction, axis=axis, keepdims=keepdims))

    def norm(self, p: float | str = 2, dim: Any = None, keepdim: bool = False) -> "Tensor":
        """The vector p-norm over ``dim`` (all elements by default): p = 2 ("fro"), 1, inf or any p > 0."""
        if p in ("fro", 2, 2.0):
            return sqrt(sum_(self * self, axis=dim, keepdims=keepdim))
        if p == 1:
            return sum_(abs_(self), axis=dim, keepdims=keepdim)
        if p == float("inf"):
            return max_(abs_(self), axis=dim, keepdims=keepdim)
        if not isinstance(p, (int, float)) or p <= 0:
            raise ValueError(f"norm: p must be a positive number, inf or 'fro', not {p!r}")
        return sum_(abs_(self) ** p, axis=dim, keepdims=keepdim) ** (1.0 / p)

    def max(self, dim: Any = None, keepdim: bool = False, *, axis: Any = None, keepdims: bool | None = None):
        """The maximum; with ``dim`` (torch's form) the pair ``(values, indices)``."""
        return _extremum(self, max_, np.argmax, dim, keepdim, axis, keepdims)

    def min(self, dim: Any = None, keepdim: bool = False, *, axis: Any = None, keepdims: bool | None = None):
        """The minimum; with ``dim`` (torch's form) the pair ``(values, indices)``."""
        return _extremum(self, min_, np.argmin, dim, keepdim, axis, keepdims)

    def argmax(self, dim: int | None = None, keepdim: bool = False) -> "Tensor":
        return self._wrap(_arg(np.argmax, self.data, dim, keepdim))

    def argmin(self, dim: int | None = None, keepdim: bool = False) -> "Tensor":
        return self._wrap(_arg(np.argmin, self.data, dim, keepdim))

    def permute(self, *dims: Any) -> "Tensor":
        return transpose(self, axes=_shape_arg(dims))

    def unsqueeze(self, dim: int) -> "Tensor":
        if not -self.ndim - 1 <= dim <= self.ndim:
            raise ShapeError(f"unsqueeze: dim {dim} is out of range for a tensor of {self.ndim} dimensions")
        shape = list(self.shape)
        shape.insert(dim % (self.ndim + 1), 1)
        return reshape(self, shape=tuple(shape))

    def squeeze(self, dim: int | None = None) -> "Tensor":
        """Dimensions of size 1 removed (only ``dim``, and only if it has size 1, as torch)."""
        if dim is None:
            shape = tuple(n for n in self.shape if n != 1)
        else:
            d = dim % self.ndim if self.ndim else 0
            shape = self.shape[:d] + self.shape[d + 1:] if self.ndim and self.shape[d] == 1 else self.shape
        return reshape(self, shape=shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> "Tensor":
        if self.ndim == 0:
            return reshape(self, shape=(1,))
        s, e = start_dim % self.ndim, end_dim % self.ndim
        return reshape(self, shape=self.shape[:s] + (-1,) + self.shape[e + 1:])

    def expand(self, *sizes: Any) -> "Tensor":
        """A broadcast view to ``sizes`` (-1 keeps a dimension); its gradient sums back."""
        sizes = _shape_arg(sizes)
        lead = len(sizes) - self.ndim
        shape = tuple(self.shape[i - lead] if n == -1 else n for i, n in enumerate(sizes))
        return broadcast_to(self, shape=shape)

    def expand_as(self, other: "TorchMethods") -> "Tensor":
        return broadcast_to(self, shape=other.shape)

    # -- dtypes ---------------------------------------------------------------------------
    def to(self, dtype: Any = None, *args: Any, **kwargs: Any) -> "Tensor":
        """A tensor of ``dtype`` (differentiable between floating types); "cpu" is accepted
        and changes nothing, the only device distbp has."""
        dtype = kwargs.pop("dtype", dtype)
        if isinstance(dtype, str) and dtype == "cpu" or dtype is None:
            return self
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        if dtype.kind == "f" and self.requires_grad:
            return astype(self, dtype=dtype)
        return self._wrap(self.data.astype(dtype))

    def float(self) -> "Tensor":
        return self.to(np.float32)

    def double(self) -> "Tensor":
        return self.to(np.float64)

    def long(self) -> "Tensor":
        return self.to(np.int64)

    def int(self) -> "Tensor":
        return self.to(np.int32)

    def bool(self) -> "Tensor":
        return self.to(np.bool_)

    # -- numpy functions ------------------------------------------------------------------
    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        return _numpy_call(ufunc, inputs, kwargs, ufunc.__name__ if method == "__call__" else None)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        return _numpy_call(func, args, kwargs, func.__name__)

    # -- in place (for init code and optimizers: no graph is recorded) ----------------------
    def _inplace(self, name: str) -> np.ndarray:
        if self._record is not None and _grad_mode.enabled:
            raise RuntimeError(f"{name}: in-place change of a tensor computed in a recorded graph; "
                               "backward would read the changed values. Use the out-of-place op, or "
                               "change a leaf (a parameter) or work under no_grad()")
        return self.data

    def add_(self, other: Any, alpha: float = 1.0) -> "Tensor":
        data = self._inplace("add_")
        value = _value(other)
        np.add(data, value if alpha == 1 else np.multiply(value, alpha), out=data, casting="unsafe")
        return self

    def sub_(self, other: Any, alpha: float = 1.0) -> "Tensor":
        return self.add_(other, -alpha)

    def mul_(self, other: Any) -> "Tensor":
        data = self._inplace("mul_")
        np.multiply(data, _value(other), out=data, casting="unsafe")
        return self

    def div_(self, other: Any) -> "Tensor":
        data = self._inplace("div_")
        np.divide(data, _value(other), out=data, casting="unsafe")
        return self

    def clamp_(self, min: float | None = None, max: float | None = None) -> "Tensor":
        data = self._inplace("clamp_")
        np.clip(data, min, max, out=data)
        return self

    def fill_(self, value: Any) -> "Tensor":
        self._inplace("fill_")[...] = _value(value)
        return self

    def zero_(self) -> "Tensor":
        return self.fill_(0)

    def copy_(self, src: Any) -> "Tensor":
        data = self._inplace("copy_")
        np.copyto(data, np.broadcast_to(_value(src), data.shape), casting="unsafe")
        return self

    # -- conversions and torch's transpose ------------------------------------------------
    def __float__(self) -> float:
        return float(self.data.item())  # any one-element tensor, as torch (numpy wants 0-d)

    def __int__(self) -> int:
        return int(self.data.item())

    def __index__(self) -> int:
        if self.data.dtype.kind not in "iu":
            raise TypeError(f"only integer tensors can be used as an index, not {self.dtype}")
        return int(self.data.item())

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        # np.asarray(t): the values, as torch's __array__ (the graph is not part of an ndarray).
        arr = self.data if dtype is None else self.data.astype(dtype, copy=False)
        return arr.copy() if copy else arr

    def transpose(self, *dims: Any) -> "Tensor":
        """torch's ``transpose(dim0, dim1)`` swaps two dimensions; with no argument, all are
        reversed (``.T``), and a full permutation permutes (numpy's form)."""
        dims = _shape_arg(dims)
        if len(dims) == 2 and self.ndim != 2 or tuple(dims) == (0, 1) and self.ndim == 2:
            order = list(range(self.ndim))
            i, j = (d % self.ndim for d in dims)
            order[i], order[j] = order[j], order[i]
            dims = tuple(order)
        return transpose(self, axes=dims or None)

    # -- autograd flags ---------------------------------------------------------------------
    @property
    def is_leaf(self) -> bool:
        """Whether no recorded op made this tensor (user-created tensors and parameters)."""
        return self._record is None

    @property
    def grad_fn(self) -> "Primitive | None":
        """The primitive that made this tensor (None for a leaf or once backward freed it)."""
        record = self._record
        return None if record is None or record is _FREED else record[0]

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        if requires_grad and self.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, not {self.dtype}")
        if not requires_grad and self._record is not None:
            raise RuntimeError("requires_grad_(False) on a non-leaf tensor; use detach()")
        self.requires_grad = bool(requires_grad)
        return self


class _Size(int):
    """numpy's ``size`` (an int) that torch code can call: ``t.size()`` is the shape,
    ``t.size(d)`` the length of dimension d."""

    def __new__(cls, n: int, shape: tuple[int, ...]) -> "_Size":
        obj = super().__new__(cls, n)
        obj.shape = shape
        return obj

    def __call__(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]


def _value(x: Any) -> Any:
    return x.data if isinstance(x, TorchMethods) else x


def _rebuild(cls: type, data: np.ndarray, grad: np.ndarray | None, requires_grad: bool) -> Tensor:
    t = cls.__new__(cls)
    if hasattr(t, "_restore"):
        t._restore(data, grad, requires_grad)
    else:
        t.data, t.grad, t.requires_grad, t._record = data, grad, requires_grad, None
    return t


MaxMin = namedtuple("MaxMin", ["values", "indices"])  # torch.return_types.max / min


def _extremum(t: Any, prim: Any, argfn: Callable, dim: Any, keepdim: bool, axis: Any,
              keepdims: bool | None) -> Any:
    if dim is None:  # numpy's form, or over all elements: the values only
        kw = _reduction(prim.name, dim, keepdim, axis, keepdims)
        return prim(t, **kw)
    if axis is not None or keepdims is not None:
        raise TypeError(f"{prim.name}: give dim/keepdim (torch) or axis/keepdims (numpy), not both")
    return MaxMin(prim(t, axis=dim, keepdims=keepdim), t._wrap(_arg(argfn, t.data, dim, keepdim)))


def _arg(fn: Callable, data: np.ndarray, dim: int | None, keepdim: bool) -> np.ndarray:
    out = fn(data, axis=dim, keepdims=keepdim)
    return np.asarray(out, dtype=np.int64)


# numpy functions that map onto Tensor methods, so np.exp(t) is t.exp() and keeps the graph.
_NUMPY = {
    "add": lambda a, b: a + b if isinstance(a, TorchMethods) else b.__radd__(a),
    "subtract": lambda a, b: a - b if isinstance(a, TorchMethods) else b.__rsub__(a),
    "multiply": lambda a, b: a * b if isinstance(a, TorchMethods) else b.__rmul__(a),
    "divide": lambda a, b: a / b if isinstance(a, TorchMethods) else b.__rtruediv__(a),
    "true_divide": lambda a, b: a / b if isinstance(a, TorchMethods) else b.__rtruediv__(a),
    "matmul": lambda a, b: a @ b if isinstance(a, TorchMethods) else b.__rmatmul__(a),
    "power": lambda a, b: a ** b if isinstance(a, TorchMethods) else b.__rpow__(a),
    "negative": lambda a: -a, "absolute": lambda a: abs_(a), "abs": lambda a: abs_(a),
    "exp": lambda a: exp(a), "log": lambda a: log(a), "sqrt": lambda a: sqrt(a), "tanh": lambda a: tanh(a),
    "log1p": lambda a: log1p(a),
    "equal": lambda a, b: a == b if isinstance(a, TorchMethods) else b == a,
    "not_equal": lambda a, b: a != b if isinstance(a, TorchMethods) else b != a,
    "less": lambda a, b: a < b if isinstance(a, TorchMethods) else b > a,
    "less_equal": lambda a, b: a <= b if isinstance(a, TorchMethods) else b >= a,
    "greater": lambda a, b: a > b if isinstance(a, TorchMethods) else b < a,
    "greater_equal": lambda a, b: a >= b if isinstance(a, TorchMethods) else b <= a,
    "sum": lambda a, axis=None, keepdims=False: a.sum(axis=axis, keepdims=keepdims),
    "mean": lambda a, axis=None, keepdims=False: a.mean(axis=axis, keepdims=keepdims),
    "max": lambda a, axis=None, keepdims=False: a.max(axis=axis, keepdims=keepdims),
    "amax": lambda a, axis=None, keepdims=False: a.max(axis=axis, keepdims=keepdims),
    "min": lambda a, axis=None, keepdims=False: a.min(axis=axis, keepdims=keepdims),
    "amin": lambda a, axis=None, keepdims=False: a.min(axis=axis, keepdims=keepdims),
    "reshape": lambda a, shape: a.reshape(shape), "transpose": lambda a, axes=None: transpose(a, axes=axes),
    "clip": lambda a, a_min=None, a_max=None: a.clamp(a_min, a_max),
    "shape": lambda a: a.shape, "ndim": lambda a: a.ndim, "size": lambda a: a.data.size,
}


def _numpy_call(func: Any, args: Any, kwargs: dict, name: str | None) -> Any:
    """A numpy function or ufunc called on a Tensor: the Tensor method where there is one;
    otherwise numpy on the arrays, unless a Tensor in the call requires grad (the result
    would silently leave the graph: a TypeError says what to use instead)."""
    fn = _NUMPY.get(name) if name is not None and not kwargs.get("out") else None
    if fn is not None:
        try:
            return fn(*args, **kwargs)
        except TypeError:
            pass  # a signature the method does not take: numpy's own below
    flat = list(args) + [v for a in args if isinstance(a, (list, tuple)) for v in a]
    if any(isinstance(a, TorchMethods) and a.requires_grad for a in flat + list(kwargs.values())):
        label = name or getattr(func, "__name__", repr(func))
        raise TypeError(f"numpy.{label} on a Tensor that requires grad: the result would not be part of "
                        "the graph. Use the Tensor method or distbp.functional (t.exp(), F.softmax(t)), "
                        "or t.detach().numpy() for the values")
    raw = [_raw(a) for a in args]
    return func(*raw, **{k: _raw(v) for k, v in kwargs.items()})


def _raw(a: Any) -> Any:
    if isinstance(a, TorchMethods):
        return a.data
    if isinstance(a, (list, tuple)):
        return type(a)(_raw(v) for v in a)
    return a


# Imported last: ops imports tensor.py, which imports this module before defining Tensor.
from .ops import (abs_, astype, broadcast_to, clamp, copy, exp, log1p, log_softmax, max_, min_,  # noqa: E402
                  reshape, sqrt, sum_, tanh, transpose, log)
