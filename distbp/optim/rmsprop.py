"""RMSProp: divide the gradient by a running root mean square of recent gradients."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..nn import Parameter
from .optimizer import Optimizer, _is


class RMSProp(Optimizer):
    """torch.optim.RMSprop: with g = grad + weight_decay * p (negated first if ``maximize``),

        v = alpha * v + (1 - alpha) * g^2                               (square_avg)
        centered:  g_avg = alpha * g_avg + (1 - alpha) * g;  avg = sqrt(v - g_avg^2) + eps
        else:      avg = sqrt(v) + eps
        momentum > 0:  b = momentum * b + g / avg;  p = p - lr * b      (momentum_buffer)
        else:          p = p - lr * g / avg
    """

    _flags = ("maximize", "centered")

    def __init__(self, params: Iterable[Parameter] | Iterable[Mapping[str, Any]], lr: float = 0.01,
                 alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
                 centered: bool = False, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize))

    def _state_names(self) -> Sequence[str]:
        names = ["square_avg"]
        if any(g["momentum"] > 0 for g in self.param_groups):
            names.append("momentum_buffer")
        if any(g["centered"] for g in self.param_groups):
            names.append("grad_avg")
        return names

    def _update(self, step: int) -> None:
        p, t, v = self._p(), self._scratch(), self._state("square_avg")
        g = self._grad()
        alpha = self._hp("alpha")
        rest = self._hp("1-alpha", lambda grp: 1.0 - grp["alpha"])
        v *= alpha                                   # v = alpha * v + (1 - alpha) * g^2
        np.multiply(g, g, out=t)
        t *= rest
        v += t
        if self._flag("centered"):
            g_avg = self._state("grad_avg")
            g_avg *= alpha                           # g_avg = alpha * g_avg + (1 - alpha) * g
            np.multiply(g, rest, out=t)
            g_avg += t
            np.multiply(g_avg, g_avg, out=t)         # avg = sqrt(v - g_avg^2) + eps
            np.subtract(v, t, out=t)
            np.sqrt(t, out=t)
        else:
            np.sqrt(v, out=t)                        # avg = sqrt(v) + eps
        t += self._hp("eps")
        np.divide(g, t, out=t)
        momentum = self._hp("momentum")
        if not _is(momentum, 0.0):
            buf = self._state("momentum_buffer")
            buf *= momentum                          # b = momentum * b + g / avg
            buf += t
            np.multiply(buf, self._hp("lr"), out=t)  # p = p - lr * b
        else:
            t *= self._hp("lr")                      # p = p - lr * g / avg
        p -= t


RMSprop = RMSProp  # torch's spelling
