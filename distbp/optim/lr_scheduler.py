"""Learning-rate schedules: each sets every param group's lr to a function of its initial lr
and of t, the number of ``scheduler.step()`` calls so far (the constructor applies t = 0).

Call ``scheduler.step()`` once per optimizer step, after ``optimizer.step()``, as with torch.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Mapping

from .optimizer import Optimizer


class LRScheduler:
    """Base class: lr = base_lr * factor(t). Subclasses override ``factor`` (or ``lr`` when the
    schedule is not a pure factor, as cosine's eta_min)."""

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lrs = self._initial_lrs()
        self.t = 0
        self._apply()

    def _initial_lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def factor(self, t: int) -> float:
        """The multiplier of the initial learning rate after t steps."""
        return 1.0

    def lr(self, base_lr: float, t: int) -> float:
        """The learning rate of a group whose initial learning rate is ``base_lr``, after t steps."""
        return base_lr * self.factor(t)

    def step(self) -> None:
        """Advance t by one and set the groups' learning rates."""
        self.t += 1
        self._apply()

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr(base, self.t)

    def get_last_lr(self) -> list[float]:
        """The learning rate of each param group, as last set."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """``{"t": steps so far, "base_lrs": initial lr per group}``."""
        return {"t": self.t, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore t and the initial learning rates, and set the groups' learning rates."""
        name = type(self).__name__
        if not isinstance(state, Mapping) or set(state) != {"t", "base_lrs"}:
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"{name}.load_state_dict: expected keys 't' and 'base_lrs', got {got}")
        if len(state["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(f"{name}.load_state_dict: {len(state['base_lrs'])} base_lrs in the state dict, "
                             f"{len(self.optimizer.param_groups)} param groups in the optimizer")
        if int(state["t"]) != state["t"] or state["t"] < 0:
            raise ValueError(f"{name}.load_state_dict: t must be a non-negative integer, got {state['t']!r}")
        self.t, self.base_lrs = int(state["t"]), [float(b) for b in state["base_lrs"]]
        self._apply()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t={self.t}, lr={self.get_last_lr()})"


def _positive(name: str, value: float, integer: bool = False) -> None:
    if integer and (isinstance(value, bool) or int(value) != value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


class Constant(LRScheduler):
    """lr = lr0 for every t."""


class StepLR(LRScheduler):
    """lr = lr0 * gamma ** (t // step_size)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        _positive("StepLR: step_size", step_size, integer=True)
        _positive("StepLR: gamma", gamma)
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer)

    def factor(self, t: int) -> float:
        return self.gamma ** (t // self.step_size)


class Annealing(LRScheduler):
    """lr = lr0 * tau / max(t, tau): constant for tau steps, then decaying as 1/t."""

    def __init__(self, optimizer: Optimizer, tau: float) -> None:
        _positive("Annealing: tau", tau)
        self.tau = float(tau)
        super().__init__(optimizer)

    def factor(self, t: int) -> float:
        return self.tau / max(t, self.tau)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (lr0 - eta_min) * (1 + cos(pi * t / T_max)) / 2 for t <= T_max, then
    eta_min (torch's closed form, held at its minimum instead of rising again)."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        _positive("CosineAnnealingLR: T_max", T_max, integer=True)
        if eta_min < 0:
            raise ValueError(f"CosineAnnealingLR: eta_min must be >= 0, got {eta_min!r}")
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer)

    def lr(self, base_lr: float, t: int) -> float:
        if t >= self.T_max:
            return self.eta_min
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class LinearWarmup(LRScheduler):
    """lr = min(1, (t + 1) / warmup_steps) * after's lr at t (or lr0 without ``after``).

    ``after`` is another scheduler on the same optimizer (warmup then cosine, say); it is
    used only as a function of t: step this one, not ``after``."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int, after: LRScheduler | None = None) -> None:
        _positive("LinearWarmup: warmup_steps", warmup_steps, integer=True)
        if after is not None and after.optimizer is not optimizer:
            raise ValueError("LinearWarmup: `after` must schedule the same optimizer")
        self.warmup_steps, self.after = int(warmup_steps), after
        super().__init__(optimizer)

    def _initial_lrs(self) -> list[float]:
        # after's constructor already scheduled the groups' lr: start from its base instead.
        return super()._initial_lrs() if self.after is None else list(self.after.base_lrs)

    def lr(self, base_lr: float, t: int) -> float:
        ramp = min(1.0, (t + 1) / self.warmup_steps)
        return ramp * (base_lr if self.after is None else self.after.lr(base_lr, t))


SCHEDULERS: dict[str, type[LRScheduler]] = {
    "constant": Constant, "step": StepLR, "annealing": Annealing,
    "cosine": CosineAnnealingLR, "warmup": LinearWarmup,
}


def build_scheduler(name: str, optimizer: Optimizer, **kwargs: Any) -> LRScheduler:
    """The scheduler a config names, e.g. ``build_scheduler("step", opt, step_size=10)``.
    For "warmup", ``after`` may be a dict ``{"name": ..., **options}`` of another schedule.
    Unknown names and options raise ValueError listing the valid ones."""
    cls = SCHEDULERS.get(name)
    if cls is None:
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULERS)}")
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # after self, optimizer
    allowed = [p.name for p in params]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ValueError(f"schedule {name!r}: unknown option(s) {', '.join(unknown)}; "
                         f"expected {', '.join(allowed) or 'none'}")
    missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in kwargs]
    if missing:
        raise ValueError(f"schedule {name!r}: missing option(s) {', '.join(missing)}")
    after = kwargs.get("after")
    if isinstance(after, Mapping):
        after = dict(after)
        if "name" not in after:
            raise ValueError(f"schedule {name!r}: option 'after' needs a 'name'")
        kwargs["after"] = build_scheduler(after.pop("name"), optimizer, **after)
    return cls(optimizer, **kwargs)
