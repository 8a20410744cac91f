"""Adam and AdamW: bias-corrected running moments of the gradient and of its square."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..nn import Parameter
from .optimizer import Optimizer, _invalid, _is, _scale_


class Adam(Optimizer):
    """torch.optim.Adam: with g = grad + weight_decay * p (negated first if ``maximize``),

        m = beta1 * m + (1 - beta1) * g                         (exp_avg)
        v = beta2 * v + (1 - beta2) * g^2                       (exp_avg_sq)
        amsgrad: v_max = max(v_max, v), used below instead of v (max_exp_avg_sq)
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    The last line is computed as ``lr * c2 / c1 * m / (sqrt(v) + eps * c2)`` with
    c1 = 1 - beta1^t, c2 = sqrt(1 - beta2^t): the same value up to float32 rounding, one
    pass over the buffer fewer (the bias corrections are scalars).
    """

    _flags = ("maximize", "amsgrad")
    _decoupled = False  # AdamW: weight decay shrinks p instead of joining the gradient

    def __init__(self, params: Iterable[Parameter] | Iterable[Mapping[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize))

    def _check(self, group: Mapping[str, Any]) -> None:
        super()._check(group)
        betas = group["betas"]
        _invalid(len(betas) != 2, f"Invalid betas: {betas}; expected two values")
        for i, beta in enumerate(betas):
            _invalid(not 0.0 <= beta < 1.0, f"Invalid beta parameter at index {i}: {beta}")

    def _state_names(self) -> Sequence[str]:
        amsgrad = any(g["amsgrad"] for g in self.param_groups)
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())

    def _update(self, step: int) -> None:
        p, t = self._p(), self._scratch()
        m, v = self._state("exp_avg"), self._state("exp_avg_sq")
        g = self._grad(l2=not self._decoupled)
        if self._decoupled:
            shrink = self._hp("1-lr*wd", lambda grp: 1.0 - grp["lr"] * grp["weight_decay"])
            if not _is(shrink, 1.0):
                p *= shrink                                      # p = p * (1 - lr * weight_decay)
        beta1 = self._hp("beta1", lambda grp: grp["betas"][0])
        beta2 = self._hp("beta2", lambda grp: grp["betas"][1])
        m *= beta1                                               # m = beta1 * m + (1 - beta1) * g
        np.multiply(g, self._hp("1-beta1", lambda grp: 1.0 - grp["betas"][0]), out=t)
        m += t
        v *= beta2                                               # v = beta2 * v + (1 - beta2) * g^2
        np.multiply(g, g, out=t)
        t *= self._hp("1-beta2", lambda grp: 1.0 - grp["betas"][1])
        v += t
        if self._flag("amsgrad"):
            v_max = self._state("max_exp_avg_sq")
            v = np.maximum(v_max, v, out=v_max)                  # v_max = max(v_max, v)
        # p = p - lr / c1 * m / (sqrt(v) / c2 + eps)  ==  p - (lr * c2 / c1) * m / (sqrt(v) + eps * c2)
        np.sqrt(v, out=t)
        t += self._hp("eps*c2", lambda grp: grp["eps"] * math.sqrt(1.0 - grp["betas"][1] ** step))
        np.divide(m, t, out=t)
        _scale_(t, self._hp("lr"), self._hp("c2/c1", lambda grp: math.sqrt(1.0 - grp["betas"][1] ** step)
                                            / (1.0 - grp["betas"][0] ** step)))
        p -= t


class AdamW(Adam):
    """torch.optim.AdamW: decoupled weight decay, p = p * (1 - lr * weight_decay) first, then
    the Adam update with the plain gradient (no L2 term)."""

    _decoupled = True

    def __init__(self, params: Iterable[Parameter] | Iterable[Mapping[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
                 amsgrad: bool = False, maximize: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize)
