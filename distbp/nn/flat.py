"""Flat buffers (docs/ARCHITECTURE.md, invariant 4): every parameter is a view into one contiguous buffer and
every gradient a view into a second, so communication and the optimizer touch all of them
with a constant number of numpy calls per step, however many layers the model has."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from .parameter import Parameter


class FlatParameters:
    """The parameters ``params`` packed, in the given order, into ``data``; gradients in ``grad``.

    ``offsets[i]`` is where parameter i starts. ``generation`` advances on every ``zero_grad``;
    a parameter's gradient view is valid only if backward wrote it in the current generation.
    """

    def __init__(self, params: Iterable[Parameter]) -> None:
        params = list(params)
        if not params:
            raise ValueError("flatten_parameters: no parameters given")
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise TypeError(f"flatten_parameters: parameters of several dtypes {sorted(map(str, dtypes))}; "
                            "a flat buffer holds one dtype")
        sizes = [p.size for p in params]
        self.params = params
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.data = np.empty(int(self.offsets[-1]), dtype=dtypes.pop())
        self.grad = np.zeros_like(self.data)
        self.generation = 0
        self.written = 0  # parameters whose gradient view holds this generation's gradient
        # Called with a parameter's index when backward has written its final gradient (the
        # walk accumulates each leaf once); the overlapped all-reduce starts buckets from it.
        self.on_grad_ready: Callable[[int], None] | None = None
        # The buffer these parameters were repacked into (an optimizer over more of the model
        # was created); optimizers over this one follow it (Optimizer._follow).
        self.moved_to: FlatParameters | None = None
        self.frozen = 0  # parameters with requires_grad=False (Parameter keeps the count)
        for i, (p, start, n) in enumerate(zip(params, self.offsets, sizes)):
            p._bind(self, i, self.data[start:start + n].reshape(p.shape),
                    self.grad[start:start + n].reshape(p.shape))
        self.frozen = sum(not p.requires_grad for p in params)

    def __reduce__(self):
        # deepcopy / pickle: the copied parameters (unbound copies) are packed again into a new
        # buffer; a callback into a communicator is not copied.
        return (_repack, (self.params,))

    @property
    def numel(self) -> int:
        return self.data.size

    def zero_grad(self) -> None:
        """Forget all gradients in O(1): views not rewritten since read as None (and as 0 in
        ``flat_grad``)."""
        self.generation += 1
        self.written = 0

    def _claim(self, p: Parameter) -> bool:
        """Mark ``p``'s gradient view as written in this generation; whether it already was."""
        if p._grad_gen == self.generation:
            return True
        p._grad_gen = self.generation
        self.written += 1
        return False

    def _release(self, p: Parameter) -> None:
        if p._grad_gen == self.generation:
            self.written -= 1
        p._grad_gen = -1

    def flat_grad(self) -> np.ndarray:
        """The gradient buffer for this generation, zero where backward wrote nothing (parameters
        unused by the loss). O(1) when every parameter got a gradient, the usual case."""
        if self.written < len(self.params):
            for p in self.params:
                if not self._claim(p):
                    p._grad_view.fill(0)
        return self.grad


def _repack(params: list[Parameter]) -> FlatParameters:
    return FlatParameters(params)


def flatten_parameters(params: Iterable[Parameter], subset: bool = False) -> FlatParameters:
    """Pack ``params`` into one flat buffer, or return the buffer that already holds exactly
    them. Values are preserved; afterwards each ``p.data`` and ``p.grad`` is a view.

    With ``subset`` (what optimizers ask for), parameters that are all in one buffer get that
    buffer, and parameters spread over buffers (or partly unpacked) are packed into a new one,
    together with every other parameter of those buffers, which record ``moved_to``: an
    optimizer over part of a model, then one over all of it (freeze, then unfreeze), each
    work; the first follows its parameters to the new buffer."""
    params = list(params)
    unique = {id(p): p for p in params}
    if len(unique) != len(params):
        raise ValueError("flatten_parameters: a parameter is listed twice")
    for p in params:
        if not isinstance(p, Parameter):
            raise TypeError(f"flatten_parameters: expected Parameters, got {type(p).__name__}")
    owner = params[0]._flat if params else None
    if owner is not None and all(p._flat is owner for p in params) and (subset or len(owner.params) == len(params)):
        return owner
    taken = [i for i, p in enumerate(params) if p._flat is not None]
    if taken and not subset:
        raise ValueError(f"flatten_parameters: parameter {taken[0]} (shape {params[taken[0]].shape}) "
                         "already belongs to another flat buffer; flatten the whole model once")
    old = list({id(p._flat): p._flat for p in params if p._flat is not None}.values())
    given = set(unique)
    extra = [q for f in old for q in f.params if id(q) not in given]
    flat = FlatParameters(params + extra)
    for f in old:
        f.moved_to = flat
    return flat
