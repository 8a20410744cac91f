"""Layers: Linear, the six activations, Dropout, Embedding, Flatten."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..autodiff.tensor import ShapeError, Tensor
from . import init
from .module import Module
from .parameter import Parameter


class Linear(Module):
    """y = x @ W + b with W of shape (in_features, out_features), as the course notes write it
    (torch stores the transpose). W is Xavier-uniform, b zero."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 rng: np.random.Generator | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = init.xavier_uniform_(Parameter(np.zeros((in_features, out_features))), rng=rng)
        self.bias = Parameter(np.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_activated(x, None)

    def forward_activated(self, x: Tensor, activation: Module | None) -> Tensor:
        """``activation(self(x))``; as one op (``F.linear_act``) when the activation has a
        ``fused`` name, so that the graph does not keep the pre-activation (which no VJP of
        relu, tanh or sigmoid reads: they differentiate from their output)."""
        name = getattr(activation, "fused", None)
        try:
            if name is not None and self.bias is not None:
                return F.linear_act(x, self.weight, self.bias, name)
            y = F.linear(x, self.weight, self.bias)
        except ShapeError:
            # Checked once the product failed, which it does exactly when the number of
            # features is wrong: a check before it would cost every call.
            raise ShapeError(f"Linear({self.in_features}, {self.out_features}): input of shape "
                             f"{x.shape} has {x.shape[-1] if x.ndim else 0} features, "
                             f"expected {self.in_features}") from None
        return y if activation is None else activation(y)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class ReLU(Module):
    fused = "relu"  # Linear.forward_activated runs Linear + this as one op (F.linear_act)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class Tanh(Module):
    fused = "tanh"  # Linear.forward_activated runs Linear + this as one op (F.linear_act)

    def forward(self, x: Tensor) -> Tensor:
        return F.tanh(x)


class Sigmoid(Module):
    fused = "sigmoid"  # Linear.forward_activated runs Linear + this as one op (F.linear_act)

    def forward(self, x: Tensor) -> Tensor:
        return F.sigmoid(x)


class Softsign(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.softsign(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Hardtanh(Module):
    def __init__(self, min_val: float = -1.0, max_val: float = 1.0) -> None:
        super().__init__()
        if min_val >= max_val:
            raise ValueError(f"Hardtanh: min_val {min_val} must be below max_val {max_val}")
        self.min_val, self.max_val = min_val, max_val

    def forward(self, x: Tensor) -> Tensor:
        return F.hardtanh(x, self.min_val, self.max_val)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"


ACTIVATIONS: dict[str, type[Module]] = {
    "relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid, "leaky_relu": LeakyReLU,
    "hardtanh": Hardtanh, "softsign": Softsign,
}


def activation(name: str) -> Module:
    """The activation module for a config name ("relu", "tanh", ...)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class Dropout(Module):
    """Inverted dropout with drop probability ``p`` (PyTorch's convention); identity in eval."""

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p, self.rng = p, rng
        # (start, total) when the input is a slice of a larger batch; see F.dropout.
        self.rows: tuple[int, int] | None = None

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training, self.rng, self.rows)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Embedding(Module):
    """A table of ``num_embeddings`` vectors of size ``dim``, looked up by integer ids;
    initialized N(0, 1) as torch."""

    def __init__(self, num_embeddings: int, dim: int, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        self.weight = init.normal_(Parameter(np.zeros((num_embeddings, dim))), rng=rng)

    def forward(self, indices: np.ndarray) -> Tensor:
        return F.embedding(self.weight, indices)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.dim}"


class Flatten(Module):
    """Each sample flattened to one vector: (n, d1, d2, ...) -> (n, d1*d2*...), as
    torch.nn.Flatten with its default start_dim=1."""

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)
