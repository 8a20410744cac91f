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


# -- argument helpers (the methods' and torch-style methods' shared rules) ------------------
def _const(x: Any, like: "Tensor") -> Any:
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


def _count(t: "Tensor", axis: Any) -> int:
    count = 1
    for ax in _axes(axis, t.ndim):
        count *= t.shape[ax]
    return count


# The torch-style conveniences (torch_methods.py) need the helpers above and ops, which needs
# Primitive: both are defined by now.
from .torch_methods import TorchMethods  # noqa: E402


class Tensor(TorchMethods):
    """A numpy array with an optional gradient, with torch.Tensor's names.

    Operators and methods are the primitives of ``distbp.autodiff.ops`` (or compositions of
    them); ``backward()`` fills ``.grad`` of every leaf that requires it. The torch-style
    conveniences (comparisons, ``max(dim)``, ``unsqueeze``, ``to``, in-place ops, numpy
    dispatch) come from ``TorchMethods`` (torch_methods.py).
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
    def T(self) -> "Tensor":
        return transpose(self, axes=None)

    def __len__(self) -> int:
        return len(self.data)

    def __bool__(self) -> bool:
        return bool(self.data)  # numpy's rule: ambiguous (an error) for more than one element

    def numpy(self) -> np.ndarray:
        """The underlying array (not a copy)."""
        return self.data

    def item(self) -> float:
        """The value of a one-element tensor as a Python number."""
        return self.data.item()

    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor._wrap(self.data)

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

    # -- reductions -----------------------------------------------------------------------
    def sum(self, dim: Any = None, keepdim: bool = False, *, axis: Any = None, keepdims: bool | None = None) -> "Tensor":
        if axis is None and keepdims is None:  # the common call: no keyword translation
            return sum_(self, axis=dim, keepdims=keepdim)
        return sum_(self, **_reduction("sum", dim, keepdim, axis, keepdims))

    def mean(self, dim: Any = None, keepdim: bool = False, *, axis: Any = None, keepdims: bool | None = None) -> "Tensor":
        kw = _reduction("mean", dim, keepdim, axis, keepdims)
        return sum_(self, **kw) * (1.0 / _count(self, kw["axis"]))

    # -- shapes ---------------------------------------------------------------------------
    def reshape(self, *shape: Any) -> "Tensor":
        return reshape(self, shape=_shape_arg(shape))

    view = reshape

    # -- autograd -------------------------------------------------------------------------
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


# The primitives that Tensor's methods call; imported last, because ops imports Primitive
# and unbroadcast from this module (the package imports this module first).
from .ops import (abs_, add, divide, exp, getitem, log, matmul, multiply, negative, power, relu,  # noqa: E402
                  reshape, rpower, sigmoid, sqrt, subtract, sum_, tanh, transpose)
