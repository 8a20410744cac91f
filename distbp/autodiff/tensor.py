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
from typing import Any, Callable

import numpy as np

DEFAULT_DTYPE = np.float32

# Marks a graph record that backward() has consumed, so a second backward() through the same
# graph fails loudly instead of silently treating the output as a leaf.
_FREED = ("freed",)


class ShapeError(ValueError):
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

    A VJP returns a new array or a view of its inputs, never an array it keeps: backward
    treats a returned array that owns its memory as its own to overwrite.
    """

    __slots__ = ("name", "fwd", "vjps", "vjp_argnum", "into", "inplace")

    def __init__(self, name: str, fwd: Callable[..., np.ndarray], *vjps: Callable | None,
                 vjp_argnum: Callable | None = None, into: dict[int, Callable] | None = None,
                 inplace: Callable | None = None) -> None:
        self.name, self.fwd, self.vjps, self.vjp_argnum = name, fwd, vjps, vjp_argnum
        self.into, self.inplace = into or {}, inplace

    def __call__(self, *args: Any, **kwargs: Any) -> "Tensor":
        return apply(self, *args, **kwargs)

    def vjp(self, argnum: int, g: np.ndarray, ans: np.ndarray, args: tuple, kwargs: dict) -> np.ndarray:
        if self.vjp_argnum is not None:
            return self.vjp_argnum(argnum, g, ans, *args, **kwargs)
        fn = self.vjps[argnum] if argnum < len(self.vjps) else None
        if fn is None:
            raise TypeError(f"VJP of {self.name} wrt argument {argnum} is not defined")
        return fn(g, ans, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<primitive {self.name}>"


def apply(prim: Primitive, *args: Any, **kwargs: Any) -> "Tensor":
    """Run ``prim`` on the arrays inside ``args`` and, when grad mode is on, record the graph."""
    raw = tuple(a.data if isinstance(a, Tensor) else a for a in args)
    try:
        out = prim.fwd(*raw, **kwargs)
    except (ValueError, IndexError) as e:
        shapes = " and ".join(str(np.shape(a)) for a in raw)
        raise ShapeError(f"{prim.name}: operands of shapes {shapes} do not fit: {e}") from None
    if not isinstance(out, np.ndarray):
        out = np.asarray(out)  # reductions to a scalar return numpy scalars
    result = Tensor._wrap(out)
    if _grad_mode.enabled:
        parents = tuple((i, a) for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad)
        if parents:
            result.requires_grad = True
            result._record = (prim, parents, raw, kwargs)
    return result


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
    """A numpy array with an optional gradient. Operators and methods are the primitives of
    ``distbp.autodiff.ops``; ``backward()`` fills ``.grad`` of every leaf that requires it."""

    __slots__ = ("data", "grad", "requires_grad", "_record", "__weakref__")
    __array_priority__ = 1000  # so ndarray <op> Tensor defers to Tensor's reflected operators

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None) -> None:
        if isinstance(data, Tensor):
            data = data.data
        arr = np.array(data, dtype=dtype if dtype is not None else DEFAULT_DTYPE, copy=True)
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
    def size(self) -> int:
        return self.data.size

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

    def _grad_slot(self) -> np.ndarray | None:
        """An array backward may write this leaf's first gradient into directly (Parameters in a
        flat buffer give their gradient view); None for plain tensors."""
        return None

    def _grad_slot_written(self, final: bool) -> None:
        """Backward wrote the first contribution into ``_grad_slot()``."""

    def backward(self, grad: Any = None) -> None:
        """Reverse-mode sweep from this tensor: fill ``.grad`` of every leaf that requires grad.

        A scalar needs no ``grad``; otherwise ``grad`` has this tensor's shape. The graph is
        freed as it is walked, so call ``backward`` once per forward pass.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input had requires_grad=True, or it was made under no_grad)")
        if grad is None:
            if self.data.size != 1:
                raise ShapeError(f"backward() on a tensor of shape {self.shape} needs a gradient "
                                 "of that shape; only a one-element tensor can omit it")
            grad = np.ones_like(self.data)
        else:
            grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ShapeError(f"backward(): gradient of shape {grad.shape} for a tensor of shape {self.shape}")

        order, leaf_uses = _topological_order(self)
        if self._record is None:  # backward() of a leaf: its gradient is the seed itself
            self._accumulate_grad(grad)
            return
        grads: dict[int, np.ndarray] = {id(self): grad}
        owned: set[int] = set()  # nodes whose gradient array nothing else can see
        while order:
            node = order.pop()  # outputs come off first
            record = node._record
            if record is None:
                continue  # a leaf: its consumers already handed it its gradient
            node._record = _FREED
            g = grads.pop(id(node))
            g_owned = id(node) in owned
            owned.discard(id(node))
            prim, parents, args, kwargs = record
            if prim.inplace is not None and g_owned and parents[0][1]._record is not None:
                # The one consumer of g is this VJP: overwrite it instead of allocating anew.
                key = id(parents[0][1])
                pg = prim.inplace(g, node.data, *args, **kwargs)
                prev = grads.get(key)
                if prev is None:
                    grads[key] = pg
                    owned.add(key)
                else:
                    self._add_contribution(grads, owned, key, prev, pg)
                continue
            for argnum, parent in parents:
                key = id(parent)
                if parent._record is None:
                    # Leaves take each contribution at once, so a parameter's gradient is final
                    # right after its last consumer (and the overlapped all-reduce of its bucket
                    # can start) rather than wherever the depth-first order put the leaf.
                    leaf_uses[key] -= 1
                    final = leaf_uses[key] == 0
                    into = prim.into.get(argnum)
                    slot = parent._grad_slot() if into is not None else None
                    if slot is not None:
                        into(slot, g, node.data, *args, **kwargs)
                        parent._grad_slot_written(final)
                    else:
                        parent._accumulate_grad(unbroadcast(prim.vjp(argnum, g, node.data, args, kwargs),
                                                            parent.data.shape), final=final)
                else:
                    pg = unbroadcast(prim.vjp(argnum, g, node.data, args, kwargs), parent.data.shape)
                    prev = grads.get(key)
                    if prev is None:
                        grads[key] = pg
                        # A fresh array (not g, an input, the output, or a view of them) is ours.
                        if pg.flags.owndata and pg is not g and pg is not node.data and \
                                not any(pg is a for a in args):
                            owned.add(key)
                    else:
                        self._add_contribution(grads, owned, key, prev, pg)

    @staticmethod
    def _add_contribution(grads: dict[int, np.ndarray], owned: set[int], key: int, prev: np.ndarray,
                          pg: np.ndarray) -> None:
        """A second (third...) gradient for a node used several times: summed in place into
        an array we own, else into a new one (then ours)."""
        if key in owned and prev.shape == pg.shape and prev.dtype == np.result_type(prev, pg):
            prev += pg
        else:
            grads[key] = prev + pg
            owned.add(key)


def _topological_order(root: Tensor) -> tuple[list[Tensor], dict[int, int]]:
    """Inputs before outputs, by an explicit-stack depth-first search (no recursion limit),
    and for each leaf the number of edges that reach it (its contributions to come)."""
    if root._record is _FREED:
        raise RuntimeError("backward() through a graph that was already freed: "
                           "each forward pass supports one backward()")
    order: list[Tensor] = []
    leaf_uses: dict[int, int] = {}
    seen: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        record = node._record
        if record is _FREED:
            raise RuntimeError("backward() through a graph that was already freed: "
                               "each forward pass supports one backward()")
        if record is not None:
            for _, parent in record[1]:
                if parent._record is None:
                    leaf_uses[id(parent)] = leaf_uses.get(id(parent), 0) + 1
                if id(parent) not in seen:
                    stack.append((parent, False))
    return order, leaf_uses


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """A new leaf Tensor holding a copy of ``data``; float32 unless ``dtype`` says otherwise."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)

