"""AdaGrad: per-coordinate learning rates from the running sum of squared gradients."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..nn import Parameter
from .optimizer import Optimizer, _scale_


class AdaGrad(Optimizer):
    """torch.optim.Adagrad: with g = grad + weight_decay * p (negated first if ``maximize``),

        clr = lr / (1 + (t - 1) * lr_decay)       (t counts steps from 1)
        sum = sum + g * g            (sum starts at initial_accumulator_value)
        p = p - clr * g / (sqrt(sum) + eps)
    """

    def __init__(self, params: Iterable[Parameter] | Iterable[Mapping[str, Any]], lr: float = 0.01,
                 lr_decay: float = 0.0, weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize))
        np.copyto(self.state["sum"], self._hp("initial_accumulator_value"))

    def _state_names(self) -> Sequence[str]:
        return ("sum",)

    def _update(self, step: int) -> None:
        p, t, acc = self._p(), self._scratch(), self._state("sum")
        g = self._grad()
        decay = self._hp("1/(1+(t-1)*lr_decay)", lambda grp: 1.0 / (1.0 + (step - 1) * grp["lr_decay"]))
        np.multiply(g, g, out=t)                     # sum = sum + g * g
        acc += t
        np.sqrt(acc, out=t)                          # std = sqrt(sum) + eps
        t += self._hp("eps")
        np.divide(g, t, out=t)                       # p = p - clr * g / std,
        _scale_(t, self._hp("lr"), decay)            # clr = lr / (1 + (t - 1) * lr_decay)
        p -= t


Adagrad = AdaGrad  # torch's spelling
