"""A model of your own for ``distbp-train``: ``model.type: custom`` with
``model.factory: "gated:build"`` (see gated.yaml). distbp imports this module from the
working directory or PYTHONPATH and calls ``build(data_info, **model.options)``."""

from __future__ import annotations

import numpy as np

import distbp.functional as F
from distbp import nn


class Gated(nn.Module):
    """h = relu(x W1) * sigmoid(x Wg); scores = h W2: a gated hidden layer."""

    def __init__(self, features: int, width: int, classes: int, seed: int) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.value = nn.Linear(features, width, rng=rng)
        self.gate = nn.Linear(features, width, rng=rng)
        self.out = nn.Linear(width, classes, rng=rng)

    def forward(self, x):
        return self.out(F.relu(self.value(x)) * F.sigmoid(self.gate(x)))


def build(data_info, width: int = 64, seed: int = 0) -> nn.Module:
    """``data_info`` has .features, .classes (a count) and .vocab_size."""
    return Gated(data_info.features, width, data_info.classes, seed)


def penalized_cross_entropy(output, target):
    """A loss of your own (``model.loss: "gated:penalized_cross_entropy"``): one value per
    sample, here cross-entropy plus a small penalty on the logits' size."""
    return F.cross_entropy(output, target, reduction="none") + 1e-3 * (output * output).sum(axis=1)
