"""Parameter: a leaf Tensor that requires grad and can live as a view in a flat buffer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..autodiff.tensor import ShapeError, Tensor

if TYPE_CHECKING:
    from .flat import FlatParameters

# Tensor keeps data and grad in slots; Parameter's properties reach them through these.
_DATA_SLOT = Tensor.data
_GRAD_SLOT = Tensor.grad
_REQUIRES_GRAD_SLOT = Tensor.requires_grad


class Parameter(Tensor):
    """A trainable tensor. Once packed by ``flatten_parameters`` its ``data`` is a view into
    the flat parameter buffer and its gradient a view into the flat gradient buffer; assigning
    ``p.data = x`` then copies into the view, so the buffer stays the single source of truth.

    ``p.grad`` is None until backward writes it after the last ``zero_grad`` (as torch's
    ``set_to_none``); zero_grad costs O(1) because it only advances the buffer's generation.
    """

    def __init__(self, data: Any, dtype: Any = None) -> None:
        self._flat: FlatParameters | None = None
        self._grad_view: np.ndarray | None = None
        self._grad_gen = -1
        super().__init__(data, requires_grad=True, dtype=dtype)

    def _restore(self, data: np.ndarray, grad: np.ndarray | None, requires_grad: bool) -> None:
        """Unpickling and deepcopy (Tensor.__reduce_ex__): a parameter with its own arrays,
        outside any flat buffer (an optimizer's copy packs it again)."""
        self._flat, self._grad_view, self._grad_gen = None, None, -1
        _DATA_SLOT.__set__(self, data)
        _GRAD_SLOT.__set__(self, grad)
        self.requires_grad, self._record = requires_grad, None

    def _set_data(self, value: np.ndarray) -> None:
        if self._flat is None:
            _DATA_SLOT.__set__(self, value)
            return
        view = _DATA_SLOT.__get__(self, Parameter)
        if np.shape(value) != view.shape:
            raise ShapeError(f"cannot assign an array of shape {np.shape(value)} to a parameter "
                             f"of shape {view.shape}")
        np.copyto(view, value)

    # The getter is the slot's own (C) __get__: ops read p.data on every call, the setter is rare.
    data = property(_DATA_SLOT.__get__, _set_data, doc="The values: a view into the flat buffer once packed.")

    def _set_requires_grad(self, value: bool) -> None:
        flat = self.__dict__.get("_flat")
        if flat is not None and bool(value) != _REQUIRES_GRAD_SLOT.__get__(self, Parameter):
            flat.frozen += -1 if value else 1  # so optimizers see a frozen parameter in O(1)
        _REQUIRES_GRAD_SLOT.__set__(self, bool(value))

    requires_grad = property(_REQUIRES_GRAD_SLOT.__get__, _set_requires_grad,
                             doc="False freezes the parameter: no gradient, and optimizers skip it.")

    @property
    def grad(self) -> np.ndarray | None:
        flat = self._flat
        if flat is None:
            return _GRAD_SLOT.__get__(self, Parameter)
        return self._grad_view if self._grad_gen == flat.generation else None

    @grad.setter
    def grad(self, value: np.ndarray | None) -> None:
        flat = self._flat
        if flat is None:
            _GRAD_SLOT.__set__(self, value)
        elif value is None:
            flat._release(self)
        else:
            if np.shape(value) != self._grad_view.shape:
                raise ShapeError(f"cannot assign a gradient of shape {np.shape(value)} to a parameter "
                                 f"of shape {self._grad_view.shape}")
            np.copyto(self._grad_view, value)
            flat._claim(self)

    def _accumulate_grad(self, g: np.ndarray, final: bool = True) -> None:
        flat = self._flat
        if flat is None:
            Tensor._accumulate_grad(self, g)
            return
        if flat._claim(self):
            self._grad_view += g
        else:
            # First gradient since zero_grad: a copy, so the buffer never needs zeroing.
            np.copyto(self._grad_view, g)
        if final and flat.on_grad_ready is not None:
            flat.on_grad_ready(self._index)

    def _grad_into(self, into: Callable, g: np.ndarray, ans: np.ndarray, args: Sequence, kwargs: dict,
                   final: bool) -> bool:
        flat = self._flat
        if flat is None or self._grad_gen == flat.generation:
            return False  # no gradient view, or it already holds a gradient of this generation
        into(self._grad_view, g, ans, *args, **kwargs)
        flat._claim(self)
        if final and flat.on_grad_ready is not None:
            flat.on_grad_ready(self._index)
        return True

    def _bind(self, flat: FlatParameters, index: int, data_view: np.ndarray, grad_view: np.ndarray) -> None:
        np.copyto(data_view, _DATA_SLOT.__get__(self, Parameter))
        old_grad = self.grad
        self._flat = None
        _DATA_SLOT.__set__(self, data_view)
        _GRAD_SLOT.__set__(self, None)
        self._flat, self._grad_view, self._grad_gen, self._index = flat, grad_view, -1, index
        if old_grad is not None:
            self.grad = old_grad

    def __repr__(self) -> str:
        return "Parameter(" + super().__repr__() + ")"
