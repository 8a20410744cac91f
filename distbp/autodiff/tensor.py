"""The Tensor: a numpy array that remembers which primitive made it, and the reverse-mode walk.

A non-leaf Tensor holds one graph record, ``(primitive, parents, args, kwargs)``: the raw
arguments its primitive was called with and the Tensor arguments that need a gradient.
``backward`` orders the graph without recursion, calls each primitive's vector-Jacobian
product with ``(g, ans, *args)``, sums the gradients of values used more than once, and
drops every record as soon as it has been used so activations are freed during the walk.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import namedtuple
from typing import Any, Callable, Sequence

import numpy as np
from ..errors import DistbpError

DEFAULT_DTYPE = np.float32

# Marks a graph record that backward() has consumed, so a second backward() through the same
# graph fails loudly instead of silently treating the output as a leaf.
_FREED = ("freed",)


class ShapeError(DistbpError, ValueError):
    """An op was given operands whose shapes do not fit; the message names the op and shapes."""


class _GradMode(threading.local):
    enabled = True


_grad_mode = _GradMode()


class no_grad(contextlib.ContextDecorator):
    """Context manager and decorator: ops inside record no graph (evaluation, optimizer steps)."""

    def __enter__(self) -> "no_grad":
        self._prev = _grad_mode.enabled
        _grad_mode.enabled = False
        return self

    def __exit__(self, *exc: object) -> None:
        _grad_mode.enabled = self._prev

    def _recreate_cm(self) -> "no_grad":
        # As a decorator, a fresh instance per call: one shared ``_prev`` would be overwritten
        # by a recursive (or concurrent) call and leave grad mode off after the outer call.
        return type(self)()


def is_grad_enabled() -> bool:
    """Whether ops currently record the graph (False inside ``no_grad``)."""
    return _grad_mode.enabled


class Primitive:
    """An op with a numpy forward and one vector-Jacobian product per differentiable argument.

    ``vjps[i](g, ans, *args, **kwargs)`` returns the gradient for positional argument ``i``,
    in the shape of the broadcast result; ``backward`` undoes the broadcasting. Ops with any
    number of inputs (concat, stack) give ``vjp_argnum(i, g, ans, *args, **kwargs)`` instead.
    Keyword arguments are never differentiated (axes, indices, exponents, slopes).

    ``into[i](out, g, ans, *args, **kwargs)``, where given, writes argument i's gradient,
    already summed to the argument's shape, into ``out``: backward uses it to write a
    parameter's gradient straight into the flat gradient buffer (``np.matmul(a.T, g, out=...)``)
    instead of making it and copying it there.

    ``inplace(g, ans, *args, **kwargs)``, for one-argument elementwise ops, computes the VJP
    by overwriting ``g``: backward uses it when it owns ``g`` (no other node can see it), which
    saves an activation-sized allocation per op (relu's ``g *= ans > 0``).

    ``pre(g, owned, ans, *args, **kwargs)``, for fused ops (``linear_act``), maps the output
    gradient, once, to the gradient of an intermediate the forward did not keep (for
    activation(x W + b): g * activation'(ans)); the per-argument VJPs then receive that instead
    of g. With ``owned`` it may overwrite g; backward owns what it returns.

    A VJP returns a new array or a view of its inputs, never an array it keeps: backward
    treats a returned array that owns its memory as its own to overwrite.
    """

    __slots__ = ("name", "fwd", "vjps", "vjp_argnum", "into", "inplace", "pre")

    def __init__(self, name: str, fwd: Callable[..., np.ndarray], *vjps: Callable | None,
                 vjp_argnum: Callable | None = None, into: dict[int, Callable] | None = None,
                 inplace: Callable | None = None, pre: Callable | None = None) -> None:
        self.name, self.fwd, self.vjps, self.vjp_argnum = name, fwd, vjps, vjp_argnum
        self.into, self.inplace, self.pre = into or {}, inplace, pre

    def vjp(self, argnum: int, g: np.ndarray, ans: np.ndarray, args: Sequence, kwargs: dict) -> np.ndarray:
        if self.vjp_argnum is not None:
            return self.vjp_argnum(argnum, g, ans, *args, **kwargs)
        fn = self.vjps[argnum] if argnum < len(self.vjps) else None
        if fn is None:
            raise TypeError(f"VJP of {self.name} wrt argument {argnum} is not defined")
        return fn(g, ans, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<primitive {self.name}>"


_new_object = object.__new__


def apply(prim: Primitive, *args: Any, **kwargs: Any) -> "Tensor":
    """Run ``prim`` on the arrays inside ``args`` and, when grad mode is on, record the graph."""
    # One loop, no generator expressions: this runs once per op, and on a model of small
    # layers its Python time is comparable to the op's arithmetic (bench/deep.py).
    raw = []
    parents = []
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            raw.append(a.data)
            if a.requires_grad:
                parents.append((i, a))
        else:
            raw.append(a)
    try:
        out = prim.fwd(*raw, **kwargs)
    except (ValueError, IndexError) as e:
        shapes = " and ".join(str(np.shape(a)) for a in raw)
        raise ShapeError(f"{prim.name}: operands of shapes {shapes} do not fit: {e}") from None
    if not isinstance(out, np.ndarray):
        out = np.asarray(out)  # reductions to a scalar return numpy scalars
    result = _new_object(Tensor)  # Tensor._wrap, inlined
    result.data, result.grad = out, None
    if parents and _grad_mode.enabled:
        result.requires_grad = True
        result._record = (prim, parents, raw, kwargs)
    else:
        result.requires_grad, result._record = False, None
    return result


Primitive.__call__ = apply  # prim(*args) is apply(prim, *args), without a frame in between


def unbroadcast(g: np.ndarray, shape: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
    """Sum ``g`` down to ``shape``: the one place where numpy broadcasting is undone. With
    ``out`` (a contiguous array of ``shape``) the result is written there."""
    if g.shape == shape:
        if out is None:
            return g
        np.copyto(out, g)
        return out
    extra = g.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(extra + i for i, n in enumerate(shape) if n == 1 and g.shape[extra + i] != 1)
    if out is None:
        return g.sum(axis=axes).reshape(shape)
    np.sum(g, axis=axes, out=out.reshape([d for i, d in enumerate(g.shape) if i not in axes]))
    return out


class Tensor:
    """A numpy array with an optional gradient, with torch.Tensor's names.

    Operators and methods are the primitives of ``distbp.autodiff.ops`` (or compositions of
    them); ``backward()`` fills ``.grad`` of every leaf that requires it. Comparisons are
    elementwise and return boolean tensors without a graph, as in torch; a Tensor is hashed by
    identity, so it can still key a dict. numpy functions on a Tensor go through the primitives
    where there is one (``np.exp(t)`` is ``t.exp()``) and raise TypeError where the result
    would silently cut the graph. Reductions take torch's ``dim``/``keepdim`` and numpy's
    ``axis``/``keepdims``; ``max``/``min`` with a ``dim`` return ``(values, indices)``, as torch.
    """

    __slots__ = ("data", "grad", "requires_grad", "_record", "__weakref__")
    __array_priority__ = 1000  # so ndarray <op> Tensor defers to Tensor's reflected operators
    __hash__ = object.__hash__  # __eq__ is elementwise; identity keeps tensors usable as keys

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None) -> None:
        if isinstance(data, Tensor):
            data = data.data
        arr = np.array(data, dtype=dtype, copy=True)
        if dtype is None and (arr.dtype.kind == "f" or (requires_grad and arr.dtype.kind in "biu")):
            arr = arr.astype(DEFAULT_DTYPE, copy=False)
        elif arr.dtype.kind not in "biuf":
            raise TypeError(f"tensor: cannot hold data of dtype {arr.dtype} (numbers or booleans only)")
        if requires_grad and not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"only floating-point tensors can require gradients, not {arr.dtype}")
        self.data = arr
        self.grad: np.ndarray | None = None
        self.requires_grad = requires_grad
        self._record: tuple | None = None

    @classmethod
    def _wrap(cls, arr: np.ndarray) -> "Tensor":
        # The hot path of every op: no dtype conversion, no copy.
        t = object.__new__(Tensor)
        t.data, t.grad, t.requires_grad, t._record = arr, None, False, None
        return t

    def __reduce_ex__(self, protocol: int):
        # pickle and deepcopy keep the values, gradient and requires_grad of a leaf; a graph
        # (whose records hold the primitives' functions) is never copied: a non-leaf comes back
        # as a leaf, as torch's pickling of a detached tensor.
        return (_rebuild, (type(self), np.array(self.data), None if self.grad is None else np.array(self.grad),
                           self.requires_grad))

    # -- array-like properties ------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> "_Size":
        """The number of elements, numpy's ``size``, which can also be called as torch's
        ``size()`` (the shape) or ``size(dim)``."""
        return _Size(self.data.size, self.data.shape)

    @property
    def T(self) -> "Tensor":
        return transpose(self, axes=None)

    def numel(self) -> int:
        return self.data.size

    def dim(self) -> int:
        return self.data.ndim

    def __len__(self) -> int:
        return len(self.data)

    def __bool__(self) -> bool:
        return bool(self.data)  # numpy's rule: ambiguous (an error) for more than one element

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

    def numpy(self) -> np.ndarray:
        """The underlying array (not a copy)."""
        return self.data

    def item(self) -> float:
        """The value of a one-element tensor as a Python number."""
        return self.data.item()

    def tolist(self) -> Any:
        return self.data.tolist()

    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor._wrap(self.data)

    def clone(self) -> "Tensor":
        """A copy of the data that stays in the graph (its gradient flows to this tensor)."""
        return copy(self)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({np.array2string(self.data, separator=', ', threshold=20)}, dtype={self.dtype}{grad})"

    # -- arithmetic -----------------------------------------------------------------------
    def __add__(self, b: Any) -> "Tensor":
        return add(self, _const(b, self))

    def __radd__(self, b: Any) -> "Tensor":
        return add(_const(b, self), self)

    def __sub__(self, b: Any) -> "Tensor":
        return subtract(self, _const(b, self))

    def __rsub__(self, b: Any) -> "Tensor":
        return subtract(_const(b, self), self)

    def __mul__(self, b: Any) -> "Tensor":
        return multiply(self, _const(b, self))

    def __rmul__(self, b: Any) -> "Tensor":
        return multiply(_const(b, self), self)

    def __truediv__(self, b: Any) -> "Tensor":
        return divide(self, _const(b, self))

    def __rtruediv__(self, b: Any) -> "Tensor":
        return divide(_const(b, self), self)

    def __matmul__(self, b: Any) -> "Tensor":
        return matmul(self, _const(b, self))

    def __rmatmul__(self, b: Any) -> "Tensor":
        return matmul(_const(b, self), self)

    def __neg__(self) -> "Tensor":
        return negative(self)

    def __pos__(self) -> "Tensor":
        return self

    def __abs__(self) -> "Tensor":
        return abs_(self)

    def __pow__(self, exponent: Any) -> "Tensor":
        if isinstance(exponent, Tensor):
            raise TypeError("power: the exponent must be a number, not a Tensor (use exp(log(a) * b))")
        return power(self, exponent=float(exponent))

    def __rpow__(self, base: Any) -> "Tensor":
        return rpower(self, base=float(base))

    pow = __pow__

    # Comparisons: elementwise, boolean, no graph (torch's rule: a comparison has no gradient).
    def __eq__(self, b: Any) -> "Tensor":  # type: ignore[override]
        return Tensor._wrap(np.equal(self.data, _value(b)))

    def __ne__(self, b: Any) -> "Tensor":  # type: ignore[override]
        return Tensor._wrap(np.not_equal(self.data, _value(b)))

    def __lt__(self, b: Any) -> "Tensor":
        return Tensor._wrap(np.less(self.data, _value(b)))

    def __le__(self, b: Any) -> "Tensor":
        return Tensor._wrap(np.less_equal(self.data, _value(b)))

    def __gt__(self, b: Any) -> "Tensor":
        return Tensor._wrap(np.greater(self.data, _value(b)))

    def __ge__(self, b: Any) -> "Tensor":
        return Tensor._wrap(np.greater_equal(self.data, _value(b)))

    def __getitem__(self, index: Any) -> "Tensor":
        return getitem(self, index=_index_arg(index))

    def __iter__(self):
        # Explicit, because Python's fallback iteration stops on IndexError, which apply()
        # reports as ShapeError.
        return (self[i] for i in range(len(self)))

    # -- elementwise functions ------------------------------------------------------------
    def exp(self) -> "Tensor":
        return exp(self)

    def log(self) -> "Tensor":
        return log(self)

    def sqrt(self) -> "Tensor":
        return sqrt(self)

    def abs(self) -> "Tensor":
        return abs_(self)

    def tanh(self) -> "Tensor":
        return tanh(self)

    def sigmoid(self) -> "Tensor":
        return sigmoid(self)

    def relu(self) -> "Tensor":
        return relu(self)

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

    # -- reductions -----------------------------------------------------------------------
    def sum(self, dim: Any = None, keepdim: bool = False, *, axis: Any = None, keepdims: bool | None = None) -> "Tensor":
        if axis is None and keepdims is None:  # the common call: no keyword translation
            return sum_(self, axis=dim, keepdims=keepdim)
        return sum_(self, **_reduction("sum", dim, keepdim, axis, keepdims))

    def mean(self, dim: Any = None, keepdim: bool = False, *, axis: Any = None, keepdims: bool | None = None) -> "Tensor":
        kw = _reduction("mean", dim, keepdim, axis, keepdims)
        return sum_(self, **kw) * (1.0 / _count(self, kw["axis"]))

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
        return Tensor._wrap(_arg(np.argmax, self.data, dim, keepdim))

    def argmin(self, dim: int | None = None, keepdim: bool = False) -> "Tensor":
        return Tensor._wrap(_arg(np.argmin, self.data, dim, keepdim))

    # -- shapes ---------------------------------------------------------------------------
    def reshape(self, *shape: Any) -> "Tensor":
        return reshape(self, shape=_shape_arg(shape))

    view = reshape

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

    def expand_as(self, other: "Tensor") -> "Tensor":
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
        return Tensor._wrap(self.data.astype(dtype))

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

    # -- autograd -------------------------------------------------------------------------
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

    def retain_grad(self) -> None:
        """Keep this non-leaf tensor's gradient in ``.grad`` after backward (leaves always do)."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad() on a tensor that does not require grad")
        if self._record is not None:
            _retained[id(self)] = weakref.ref(self)

    # -- gradients ------------------------------------------------------------------------
    def _accumulate_grad(self, g: np.ndarray, final: bool = True) -> None:
        """Add one contribution to ``.grad``; ``final`` marks the last one of this backward."""
        if self.grad is None:
            # A copy: g may be another node's gradient or a read-only broadcast view.
            self.grad = np.array(g, dtype=self.data.dtype)
        else:
            self.grad += g

    def zero_grad(self) -> None:
        self.grad = None

    def _grad_into(self, into: Callable, g: np.ndarray, ans: np.ndarray, args: Sequence, kwargs: dict,
                   final: bool) -> bool:
        """Write this leaf's first gradient of the backward pass with ``into(view, g, ans, *args,
        **kwargs)`` straight into where it lives, if it has such a place (Parameters in a flat
        buffer: their gradient view); False, writing nothing, for plain tensors or when a
        gradient is already there (backward then accumulates the VJP's result instead)."""
        return False

    def backward(self, gradient: Any = None, retain_graph: bool = False) -> None:
        """Reverse-mode sweep from this tensor: fill ``.grad`` of every leaf that requires grad
        (adding to what is there, as torch) and of every non-leaf that called ``retain_grad()``.

        A one-element tensor needs no ``gradient``; otherwise it has this tensor's shape. The
        graph is freed as it is walked, unless ``retain_graph`` keeps it for another backward.
        """
        grad = self._seed(gradient)
        if self._record is None:  # backward() of a leaf: its gradient is the seed itself
            self._accumulate_grad(grad)
            return
        order, leaf_uses = _topological_order(self)
        walk = _Walk(leaf_uses, retain_graph, _stash_retained(order) if _retained else None)
        self.grad = grad
        try:
            while order:
                walk.node(order.pop())  # outputs come off first
        except BaseException:
            for node in order:  # an error mid-walk: leave no pending gradient behind
                node.grad = None
            raise

    def _seed(self, gradient: Any) -> np.ndarray:
        """The gradient backward starts from: ones for a one-element tensor, else ``gradient``."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input had requires_grad=True, or it was made under no_grad)")
        if gradient is None:
            if self.data.size != 1:
                raise ShapeError(f"backward() on a tensor of shape {self.shape} needs a gradient "
                                 "of that shape; only a one-element tensor can omit it")
            return np.ones_like(self.data)
        grad = np.asarray(gradient.data if isinstance(gradient, Tensor) else gradient, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ShapeError(f"backward(): gradient of shape {grad.shape} for a tensor of shape {self.shape}")
        return grad


class _Walk:
    """One backward pass: each node's VJPs, handed to its parents.

    A non-leaf node's pending gradient waits in its own .grad slot (None outside backward)
    rather than in a dict keyed by id(): a slot costs a fraction of a hashed lookup.
    ``owned`` holds the nodes whose pending gradient array nothing else can see: those may be
    summed into, or overwritten by an in-place VJP, instead of allocating anew."""

    __slots__ = ("leaf_uses", "retain_graph", "kept", "owned")

    def __init__(self, leaf_uses: dict[int, int], retain_graph: bool, kept: dict | None) -> None:
        self.leaf_uses, self.retain_graph, self.kept = leaf_uses, retain_graph, kept
        self.owned: set[int] = set()

    def node(self, node: Tensor) -> None:
        prim, parents, args, kwargs = node._record
        if not self.retain_graph:
            node._record = _FREED
        g, node.grad = node.grad, None
        key = id(node)
        g_owned = key in self.owned
        if g_owned:
            self.owned.discard(key)
        if self.kept is not None and key in self.kept:
            g = _retain(node, g, self.kept.pop(key))
        ans = node.data
        if prim.pre is not None:
            g = prim.pre(g, g_owned, ans, *args, **kwargs)
            g_owned = True
        if g_owned and prim.inplace is not None and parents[0][1]._record is not None:
            # The one consumer of g is this VJP: overwrite it instead of allocating anew.
            self.pending(parents[0][1], prim.inplace(g, ans, *args, **kwargs), True)
            return
        for argnum, parent in parents:
            if parent._record is None:
                self.leaf(parent, prim, argnum, g, ans, args, kwargs)
            else:
                pg = unbroadcast(prim.vjp(argnum, g, ans, args, kwargs), parent.data.shape)
                # A fresh array (not g, an input, the output, or a view of them) is ours.
                self.pending(parent, pg, pg.flags.owndata and pg is not g and pg is not ans and _is_none_of(pg, args))

    def leaf(self, leaf: Tensor, prim: Primitive, argnum: int, g: np.ndarray, ans: np.ndarray,
             args: Sequence, kwargs: dict) -> None:
        """Leaves take each contribution at once, so a parameter's gradient is final right
        after its last consumer (and the overlapped all-reduce of its bucket can start) rather
        than wherever the depth-first order put the leaf."""
        key = id(leaf)
        uses = self.leaf_uses[key] - 1
        self.leaf_uses[key] = uses
        into = prim.into.get(argnum)
        if into is None or not leaf._grad_into(into, g, ans, args, kwargs, uses == 0):
            leaf._accumulate_grad(unbroadcast(prim.vjp(argnum, g, ans, args, kwargs), leaf.data.shape),
                                  final=uses == 0)

    def pending(self, node: Tensor, pg: np.ndarray, fresh: bool) -> None:
        """Contribution ``pg`` to non-leaf ``node``'s pending gradient: the first is kept
        as it is (ours if ``fresh``); later ones are summed (``_add_pending``)."""
        if node.grad is None:
            node.grad = pg
            if fresh:
                self.owned.add(id(node))
        else:
            _add_pending(node, pg, self.owned)


# Non-leaf tensors that called retain_grad(), by id (a weak reference guards against a reused id).
_retained: dict[int, weakref.ref] = {}


def _stash_retained(order: list[Tensor]) -> dict[int, np.ndarray | None]:
    """The retained nodes of this graph with the gradient they kept from an earlier backward;
    their .grad slot is cleared, since during the walk it holds the pending gradient."""
    kept = {}
    for node in order:
        ref = _retained.get(id(node))
        if ref is not None and ref() is node:
            kept[id(node)], node.grad = node.grad, None
    return kept


def _retain(node: Tensor, g: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """Store a retained node's complete gradient (summed with an earlier backward's); the
    walk goes on with ``g``, which a VJP may overwrite, so the stored one is a copy."""
    node.grad = np.array(g) if previous is None else previous + g
    return g


def _add_pending(node: Tensor, pg: np.ndarray, owned: set[int]) -> None:
    """A second (third...) contribution ``pg`` to non-leaf ``node``'s pending gradient: summed
    in place into an array we own, else into a new one (then ours)."""
    prev = node.grad
    if id(node) in owned and prev.shape == pg.shape and prev.dtype == np.result_type(prev, pg):
        prev += pg
    else:
        node.grad = prev + pg
        owned.add(id(node))


def _topological_order(root: Tensor) -> tuple[list[Tensor], dict[int, int]]:
    """The non-leaf nodes of ``root``'s graph (``root`` is one), inputs before outputs, by an
    explicit-stack depth-first search (no recursion limit); and for each leaf the number of
    edges that reach it (its contributions to come). Leaves are counted, not visited: backward
    hands them their gradients from their consumers, so their place in the order is moot."""
    order: list[Tensor] = []
    leaf_uses: dict[int, int] = {}
    seen: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    push, pop, visit = stack.append, stack.pop, order.append
    while stack:
        node, expanded = pop()
        if expanded:
            visit(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        record = node._record
        if record is _FREED:
            raise RuntimeError("backward() through a graph that was already freed: "
                               "each forward pass supports one backward()")
        push((node, True))
        for _, parent in record[1]:
            if parent._record is None:
                key = id(parent)
                leaf_uses[key] = leaf_uses.get(key, 0) + 1
            elif id(parent) not in seen:
                push((parent, False))
    return order, leaf_uses


def _is_none_of(arr: np.ndarray, args: Sequence) -> bool:
    """Whether ``arr`` is none of ``args`` (by identity: ``in`` would compare arrays by value)."""
    for a in args:
        if a is arr:
            return False
    return True


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """A new leaf Tensor holding a copy of ``data``. Integer and boolean data keep their type
    (Python ints are int64, as torch); floating data becomes float32 unless ``dtype`` says
    otherwise. torch keeps a float64 ndarray's dtype; distbp makes it float32 too, because
    numpy's defaults are float64 and a model mixing the two would silently compute in float64."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


class _Size(int):
    """numpy's ``size`` (an int) that torch code can call: ``t.size()`` is the shape,
    ``t.size(d)`` the length of dimension d."""

    def __new__(cls, n: int, shape: tuple[int, ...]) -> "_Size":
        obj = super().__new__(cls, n)
        obj.shape = shape
        return obj

    def __call__(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]


def _rebuild(cls: type, data: np.ndarray, grad: np.ndarray | None, requires_grad: bool) -> Tensor:
    t = cls.__new__(cls)
    if hasattr(t, "_restore"):
        t._restore(data, grad, requires_grad)
    else:
        t.data, t.grad, t.requires_grad, t._record = data, grad, requires_grad, None
    return t


def _const(x: Any, like: Tensor) -> Any:
    """A non-Tensor operand: Python numbers stay weakly typed (numpy 2 never upcasts a float32
    array for them); numpy scalars become Python numbers; arrays take the tensor's dtype."""
    if isinstance(x, Tensor) or (isinstance(x, (int, float)) and not isinstance(x, np.generic)):
        return x
    arr = np.asarray(x)
    if arr.ndim == 0:
        return arr.item()
    if like.dtype.kind == "f" and arr.dtype != like.dtype:
        return arr.astype(like.dtype, copy=False)
    return arr


def _value(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


def _shape_arg(args: tuple) -> tuple:
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


def _index_arg(index: Any) -> Any:
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def _axes(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    return tuple(int(a) % ndim for a in axes) if ndim else ()


def _reduction(name: str, dim: Any, keepdim: bool, axis: Any, keepdims: bool | None) -> dict[str, Any]:
    """torch's (dim, keepdim) or numpy's (axis, keepdims), as numpy's; both at once is an error."""
    if axis is not None and dim is not None:
        raise TypeError(f"{name}: give dim (torch) or axis (numpy), not both")
    return {"axis": dim if axis is None else axis, "keepdims": keepdim if keepdims is None else keepdims}


def _count(t: Tensor, axis: Any) -> int:
    count = 1
    for ax in _axes(axis, t.ndim):
        count *= t.shape[ax]
    return count


MaxMin = namedtuple("MaxMin", ["values", "indices"])  # torch.return_types.max / min


def _extremum(t: Tensor, prim: Primitive, argfn: Callable, dim: Any, keepdim: bool, axis: Any,
              keepdims: bool | None) -> Any:
    if dim is None:  # numpy's form, or over all elements: the values only
        kw = _reduction(prim.name, dim, keepdim, axis, keepdims)
        return prim(t, **kw)
    if axis is not None or keepdims is not None:
        raise TypeError(f"{prim.name}: give dim/keepdim (torch) or axis/keepdims (numpy), not both")
    return MaxMin(prim(t, axis=dim, keepdims=keepdim), Tensor._wrap(_arg(argfn, t.data, dim, keepdim)))


def _arg(fn: Callable, data: np.ndarray, dim: int | None, keepdim: bool) -> np.ndarray:
    out = fn(data, axis=dim, keepdims=keepdim)
    return np.asarray(out, dtype=np.int64)


# numpy functions that map onto Tensor methods, so np.exp(t) is t.exp() and keeps the graph.
_NUMPY = {
    "add": lambda a, b: a + b if isinstance(a, Tensor) else b.__radd__(a),
    "subtract": lambda a, b: a - b if isinstance(a, Tensor) else b.__rsub__(a),
    "multiply": lambda a, b: a * b if isinstance(a, Tensor) else b.__rmul__(a),
    "divide": lambda a, b: a / b if isinstance(a, Tensor) else b.__rtruediv__(a),
    "true_divide": lambda a, b: a / b if isinstance(a, Tensor) else b.__rtruediv__(a),
    "matmul": lambda a, b: a @ b if isinstance(a, Tensor) else b.__rmatmul__(a),
    "power": lambda a, b: a ** b if isinstance(a, Tensor) else b.__rpow__(a),
    "negative": lambda a: -a, "absolute": lambda a: abs_(a), "abs": lambda a: abs_(a),
    "exp": lambda a: exp(a), "log": lambda a: log(a), "sqrt": lambda a: sqrt(a), "tanh": lambda a: tanh(a),
    "log1p": lambda a: log1p(a),
    "equal": lambda a, b: a == b if isinstance(a, Tensor) else b == a,
    "not_equal": lambda a, b: a != b if isinstance(a, Tensor) else b != a,
    "less": lambda a, b: a < b if isinstance(a, Tensor) else b > a,
    "less_equal": lambda a, b: a <= b if isinstance(a, Tensor) else b >= a,
    "greater": lambda a, b: a > b if isinstance(a, Tensor) else b < a,
    "greater_equal": lambda a, b: a >= b if isinstance(a, Tensor) else b <= a,
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
    if any(isinstance(a, Tensor) and a.requires_grad for a in flat + list(kwargs.values())):
        label = name or getattr(func, "__name__", repr(func))
        raise TypeError(f"numpy.{label} on a Tensor that requires grad: the result would not be part of "
                        "the graph. Use the Tensor method or distbp.functional (t.exp(), F.softmax(t)), "
                        "or t.detach().numpy() for the values")
    raw = [_raw(a) for a in args]
    return func(*raw, **{k: _raw(v) for k, v in kwargs.items()})


def _raw(a: Any) -> Any:
    if isinstance(a, Tensor):
        return a.data
    if isinstance(a, (list, tuple)):
        return type(a)(_raw(v) for v in a)
    return a


# The primitives that Tensor's methods call; imported last, because ops imports Primitive
# and unbroadcast from this module (the package imports this module first).
from .ops import (abs_, add, astype, broadcast_to, clamp, copy, divide, exp, getitem, log,  # noqa: E402
                  log1p, log_softmax, matmul, max_, min_, multiply, negative, power, relu, reshape,
                  rpower, sigmoid, sqrt, subtract, sum_, tanh, transpose)
