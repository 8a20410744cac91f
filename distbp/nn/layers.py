"""Layers: Linear, the activations, Softmax, LayerNorm, Dropout, Embedding, Flatten, Identity."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .. import functional as F
from ..autodiff.tensor import ShapeError, Tensor
from . import init
from .module import Module
from .parameter import Parameter


_inits = init  # Linear's ``init`` argument shadows the module's name inside __init__

LINEAR_INITS = ("xavier", "torch")


class Linear(Module):
    """y = x @ W + b with W of shape (in_features, out_features), as the course notes write it:
    the transpose of torch's (out_features, in_features) weight, so a torch state dict's
    weight loads as ``weight.T``.

    ``init="xavier"`` (the default, the course material's choice): W Xavier-uniform, b zero.
    ``init="torch"``: torch's default distribution, W kaiming-uniform with a = sqrt(5), i.e.
    U(-1/sqrt(in_features), 1/sqrt(in_features)), and b from the same uniform (the same
    distribution as torch, not the same numbers: the generator is numpy's)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 rng: np.random.Generator | None = None, *, init: str = "xavier") -> None:
        super().__init__()
        if init not in LINEAR_INITS:
            raise ValueError(f"Linear: init must be one of {', '.join(LINEAR_INITS)}, not {init!r}")
        self.in_features, self.out_features, self.init = in_features, out_features, init
        if init == "xavier":
            self.weight = _inits.xavier_uniform_(Parameter(np.zeros((in_features, out_features))), rng=rng)
            self.bias = Parameter(np.zeros(out_features)) if bias else None
            return
        # torch.nn.Linear.reset_parameters: fan_in is in_features in either layout; with no
        # inputs torch leaves the (empty) weight alone.
        self.weight = Parameter(np.zeros((in_features, out_features)))
        if in_features > 0:
            _inits.kaiming_uniform_(self.weight, a=math.sqrt(5), nonlinearity="leaky_relu", rng=rng)
        self.bias = None
        if bias:
            bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
            self.bias = _inits.uniform_(Parameter(np.zeros(out_features)), -bound, bound, rng=rng)

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
        tail = "" if self.init == "xavier" else f", init={self.init!r}"
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}" + tail


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
    """A table of ``num_embeddings`` vectors of size ``embedding_dim`` (torch's name; ``dim=``,
    distbp's, also works, and both are attributes), looked up by integer ids; initialized
    N(0, 1) as torch."""

    def __init__(self, num_embeddings: int, embedding_dim: int | None = None,
                 rng: np.random.Generator | None = None, *, dim: int | None = None) -> None:
        super().__init__()
        if embedding_dim is None and dim is None:
            raise TypeError("Embedding: missing the vector size, embedding_dim (or dim)")
        if embedding_dim is not None and dim is not None and embedding_dim != dim:
            raise TypeError(f"Embedding: embedding_dim={embedding_dim} and dim={dim} disagree; give one")
        size = embedding_dim if embedding_dim is not None else dim
        self.num_embeddings, self.dim, self.embedding_dim = num_embeddings, size, size
        self.weight = init.normal_(Parameter(np.zeros((num_embeddings, size))), rng=rng)

    def forward(self, indices: np.ndarray) -> Tensor:
        return F.embedding(self.weight, indices)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.dim}"


class Flatten(Module):
    """Dimensions start_dim..end_dim (inclusive) merged into one, as torch.nn.Flatten; by
    default each sample flattened to one vector: (n, d1, d2, ...) -> (n, d1*d2*...)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        if self.start_dim == 1 and self.end_dim == -1:
            return x.reshape(x.shape[0], -1)
        n = max(x.ndim, 1)
        if not (-n <= self.start_dim < n and -n <= self.end_dim < n):
            raise ShapeError(f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}): dimensions out of "
                             f"range for an input of shape {x.shape}")
        if self.start_dim % n > self.end_dim % n:
            raise ShapeError(f"Flatten: start_dim={self.start_dim} comes after end_dim={self.end_dim} for an "
                             f"input of shape {x.shape}")
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """The input, unchanged; any constructor arguments are ignored, as torch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return x


class Softmax(Module):
    """softmax along ``dim`` (the last dimension when None; torch guesses one, with a
    deprecation warning)."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """log_softmax along ``dim`` (the last dimension when None)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.log_softmax(x, self.dim)


class GELU(Module):
    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', not {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x)


class ELU(Module):
    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class Softplus(Module):
    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        super().__init__()
        self.beta, self.threshold = beta, threshold

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x, self.beta, self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


class LayerNorm(Module):
    """Normalization over the last len(normalized_shape) dimensions (biased variance, as
    torch), then ``weight`` (ones) and ``bias`` (zeros) when ``elementwise_affine``."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True) -> None:
        super().__init__()
        shape = ((int(normalized_shape),) if isinstance(normalized_shape, (int, np.integer))
                 else tuple(int(n) for n in normalized_shape))
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        self.weight = Parameter(np.ones(shape)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(shape)) if elementwise_affine and bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
