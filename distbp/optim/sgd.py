"""Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..nn import Parameter
from .optimizer import Optimizer, _invalid, _is


class SGD(Optimizer):
    """torch.optim.SGD: with g = grad + weight_decay * p (negated first if ``maximize``),

        b_1 = g;  b_t = momentum * b_{t-1} + (1 - dampening) * g      (if momentum != 0)
        g = g + momentum * b_t  (nesterov)   or   g = b_t
        p = p - lr * g
    """

    _flags = ("maximize", "nesterov")

    def __init__(self, params: Iterable[Parameter] | Iterable[Mapping[str, Any]], lr: float,
                 momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                                      weight_decay=weight_decay, maximize=maximize))

    def _check(self, group: Mapping[str, Any]) -> None:
        super()._check(group)
        _invalid(bool(group["nesterov"]) and (group["momentum"] <= 0 or group["dampening"] != 0),
                 "Nesterov momentum requires a momentum and zero dampening")

    def _state_names(self) -> Sequence[str]:
        return ("momentum_buffer",) if any(g["momentum"] != 0 for g in self.param_groups) else ()

    def _update(self, step: int) -> None:
        p, t = self._p(), self._scratch()
        g = self._grad()
        lr, mu = self._hp("lr"), self._hp("momentum")
        if not _is(mu, 0.0):
            buf = self._state("momentum_buffer")
            if step == 1:
                np.copyto(buf, g)                                   # b_1 = g
            else:
                # A group without momentum gets b = g, its plain gradient: no dampening there.
                keep = self._hp("1-dampening", lambda grp: 1.0 - grp["dampening"] if grp["momentum"] else 1.0)
                buf *= mu                                           # b = mu * b + (1 - dampening) * g
                if _is(keep, 1.0):
                    buf += g
                else:
                    np.multiply(g, keep, out=t)
                    buf += t
            if self._flag("nesterov"):
                np.multiply(buf, mu, out=t)                         # g = g + mu * b
                g = np.add(t, g, out=t)
            else:
                g = buf                                             # g = b
        np.multiply(g, lr, out=t)                                   # p = p - lr * g
        p -= t
