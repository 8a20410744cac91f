"""The models of the course notes: the MLP and the CS224N window classifier."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..autodiff.tensor import ShapeError, Tensor
from .layers import Dropout, Embedding, Linear
from .layers import activation as make_activation
from .module import Module, Sequential


class MLP(Sequential):
    """Linear layers of ``sizes`` (input, hidden..., output) with ``activation`` and optional
    dropout after each hidden layer; the output layer gives raw scores (logits)."""

    def __init__(self, sizes: Sequence[int], activation: str = "relu", dropout: float = 0.0,
                 rng: np.random.Generator | None = None) -> None:
        sizes = list(sizes)
        if len(sizes) < 2 or any(int(n) != n or n < 1 for n in sizes):
            raise ValueError(f"MLP: sizes must be at least two positive integers, got {sizes}")
        layers: list[Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Linear(n_in, n_out, rng=rng))
            if i < len(sizes) - 2:
                layers.append(make_activation(activation))
                if dropout > 0:
                    layers.append(Dropout(dropout, rng=rng))
        super().__init__(*layers)
        self.sizes = sizes


class WindowClassifier(Module):
    """The CS224N window model for named-entity recognition. The input is a batch of windows
    of 2w+1 word ids (``window`` is the half-width w); their embeddings are concatenated into
    x of size (2w+1)·embed_dim, then h = f(x W + b) and scores = h U + c. With
    ``num_classes=1`` it gives the single score s used by the max-margin objective."""

    def __init__(self, vocab_size: int, embed_dim: int, window: int, hidden: int, num_classes: int,
                 activation: str = "tanh", rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if window < 0:
            raise ValueError(f"WindowClassifier: window (the half-width w) must be >= 0, got {window}")
        self.window = window
        self.width = 2 * window + 1
        self.embed = Embedding(vocab_size, embed_dim, rng=rng)
        self.hidden = Linear(self.width * embed_dim, hidden, rng=rng)
        self.act = make_activation(activation)
        self.out = Linear(hidden, num_classes, rng=rng)

    def forward(self, windows: np.ndarray) -> Tensor:
        windows = np.asarray(windows.data if isinstance(windows, Tensor) else windows)
        if windows.ndim != 2 or windows.shape[1] != self.width:
            raise ShapeError(f"WindowClassifier(window={self.window}): input of shape {windows.shape}; "
                             f"expected (batch, {self.width}) word ids")
        x = self.embed(windows).reshape(windows.shape[0], -1)
        return self.out(self.hidden.forward_activated(x, self.act))
