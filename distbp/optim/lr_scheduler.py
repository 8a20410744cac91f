"""Learning-rate schedules with torch.optim.lr_scheduler's names, signatures and formulas.

Each scheduler sets every param group's lr to a function of the group's initial lr and of
``last_epoch`` (alias ``t``), the number of ``scheduler.step()`` calls so far; the
constructor applies t = 0. Call ``scheduler.step()`` once per optimizer step, after
``optimizer.step()``, as with torch.

As torch, a constructor sets ``group.setdefault("initial_lr", group["lr"])`` and takes
``base_lrs`` from ``initial_lr``: a second scheduler on the same optimizer starts from the lr
the first one started from, not from wherever the first one left it. (OneCycleLR, as torch,
overwrites ``initial_lr`` with ``max_lr / div_factor``; ReduceLROnPlateau leaves it alone.)

Deliberate deviations from torch:

* Closed forms only. torch's StepLR, MultiStepLR, ExponentialLR, LinearLR and
  CosineAnnealingLR update recursively (they multiply the group's current lr): the same
  values up to float rounding (about 1e-15 relative), but two torch schedulers stepping one
  optimizer compose, and one of these built after another schedule starts from the current
  lr, not from initial_lr. Here a schedule is a pure function of t that overwrites the lr
  (every one starts from initial_lr, as torch's closed-form LambdaLR, OneCycleLR and
  CosineAnnealingWarmRestarts do), so a run resumed from ``state_dict()`` gives bitwise the
  lrs of an uninterrupted one; compose with ``SequentialLR`` or ``LinearWarmup(after=...)``
  (there is no ChainedScheduler).
* ``step()`` takes no epoch (torch deprecated it) and constructors take no ``last_epoch``:
  resume with ``load_state_dict``, which checks the whole state dict before it changes
  anything (a mismatch raises ValueError, as the trainer expects of a checkpoint).
* ``state_dict()`` holds the schedule's state ("t", "base_lrs" and whatever else the
  schedule needs), not its hyperparameters, which come from the constructor.
* CosineAnnealingLR holds eta_min after T_max (torch's rises again); OneCycleLR cycles no
  momentum and keeps max_lr and min_lr in the scheduler instead of the param groups.
"""

from __future__ import annotations

import bisect
import inspect
import math
import numbers
import types
from typing import Any, Callable, Iterable, Mapping, Sequence

from .optimizer import Optimizer

# -- argument checks: messages name the scheduler and the argument ---------------------------


def _check_optimizer(owner: str, optimizer: Any) -> Optimizer:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{owner}: expected an Optimizer, got {type(optimizer).__name__}")
    return optimizer


def _number(name: str, value: Any) -> None:
    # bool is an int to Python, but True as a step size is a config mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")


def _integer(name: str, value: Any) -> None:
    _number(name, value)
    if not isinstance(value, numbers.Integral) and not float(value).is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")


def _positive(name: str, value: Any, integer: bool = False) -> None:
    (_integer if integer else _number)(name, value)
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


def _non_negative(name: str, value: Any, integer: bool = False) -> None:
    (_integer if integer else _number)(name, value)
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _between(name: str, value: Any, low: float, high: float, low_open: bool = False,
             high_open: bool = False) -> None:
    _number(name, value)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


def _one_of(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be {' or '.join(map(repr, choices))}, got {value!r}")


def _per_group(name: str, value: Any, optimizer: Optimizer) -> list[Any]:
    """torch's rule for a hyperparameter that may differ between groups: one value for all
    groups, or a list or tuple of one per group."""
    n = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: expected {n} values (one per param group), got {len(value)}")
        return list(value)
    return [value] * n


def _keys_phrase(keys: Sequence[str]) -> str:
    quoted = [repr(k) for k in keys]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


# -- the base class -------------------------------------------------------------------------


class LRScheduler:
    """Base class. ``lrs_at(t)`` is the lr of every param group after t steps, a closed form
    in t; ``step()`` advances ``last_epoch`` (alias ``t``) and sets the groups' lr to it.

    Subclasses override ``factor(t)`` (lr = base_lr * factor(t)), ``lr(base_lr, t)`` (a
    schedule that is not a pure factor, as cosine's eta_min) or ``lrs_at(t)`` (groups that
    differ in more than their base_lr). A schedule with state beyond t and base_lrs names
    its keys in ``_state_keys`` and saves and loads them in ``_extra_state``/``_load_extra``.
    """

    _state_keys: tuple[str, ...] = ("t", "base_lrs")  # a state dict must hold all of these
    _optional_state_keys: tuple[str, ...] = ()  # and may hold these (added after a release)

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = _check_optimizer(type(self).__name__, optimizer)
        self.base_lrs = self._initial_lrs()
        self.last_epoch = 0
        self._last_lr: list[float] = []
        self._go_to(0)

    def _initial_lrs(self) -> list[float]:
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        return [float(group["initial_lr"]) for group in self.optimizer.param_groups]

    @property
    def t(self) -> int:
        """The number of ``step()`` calls so far: torch's ``last_epoch``."""
        return self.last_epoch

    @t.setter
    def t(self, value: int) -> None:
        self.last_epoch = value

    # -- the schedule ---------------------------------------------------------------------
    def factor(self, t: int) -> float:
        """The multiplier of the initial learning rate after t steps."""
        return 1.0

    def lr(self, base_lr: float, t: int) -> float:
        """The learning rate of a group whose initial learning rate is ``base_lr``, after t steps."""
        return base_lr * self.factor(t)

    def lrs_at(self, t: int) -> list[float]:
        """The learning rate of every param group after t steps."""
        return [self.lr(base_lr, t) for base_lr in self.base_lrs]

    def step(self) -> None:
        """Advance t by one and set the groups' learning rates."""
        self._go_to(self.last_epoch + 1)

    def _go_to(self, t: int) -> None:
        lrs = self.lrs_at(t)  # first: a schedule past its end raises before anything changes
        self.last_epoch = t
        self._set_lrs(lrs)

    def _set_lrs(self, lrs: Sequence[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = list(lrs)

    def get_last_lr(self) -> list[float]:
        """The learning rate of each param group, as this scheduler last set it."""
        return list(self._last_lr)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"t": steps so far, "base_lrs": initial lr per group}``, plus the keys of any
        further state the schedule has."""
        return {"t": self.last_epoch, "base_lrs": list(self.base_lrs), **self._extra_state()}

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore t, the initial learning rates and any further state, and set the groups'
        learning rates. A state dict that does not fit raises ValueError naming the mismatch."""
        self._check_state_keys(state)
        t = self._state_t(state["t"])
        base_lrs = self._state_lrs("base_lrs", state["base_lrs"])
        self._load_extra(state)
        self.last_epoch, self.base_lrs = t, base_lrs
        self._go_to(t)

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        """Check and restore the keys beyond t and base_lrs (checked before anything is set)."""

    def _check_state_keys(self, state: Any) -> None:
        required, allowed = set(self._state_keys), set(self._state_keys) | set(self._optional_state_keys)
        if isinstance(state, Mapping) and required <= set(state) <= allowed:
            return
        optional = f" (and optionally {_keys_phrase(self._optional_state_keys)})" if self._optional_state_keys else ""
        got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{type(self).__name__}.load_state_dict: expected keys "
                         f"{_keys_phrase(self._state_keys)}{optional}, got {got}")

    def _state_t(self, t: Any, key: str = "t") -> int:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not float(t).is_integer() or t < 0:
            raise ValueError(f"{type(self).__name__}.load_state_dict: {key} must be a non-negative integer, "
                             f"got {t!r}")
        return int(t)

    def _state_number(self, key: str, value: Any) -> float:
        # ValueError, not TypeError: a state dict that does not fit is a bad checkpoint.
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{type(self).__name__}.load_state_dict: {key} must be a number, got {value!r}")
        return float(value)

    def _state_lrs(self, key: str, values: Any) -> list[float]:
        name, groups = type(self).__name__, len(self.optimizer.param_groups)
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"{name}.load_state_dict: {key} must be a list, got {type(values).__name__}")
        if len(values) != groups:
            raise ValueError(f"{name}.load_state_dict: {len(values)} {key} in the state dict, "
                             f"{groups} param groups in the optimizer")
        return [self._state_number(f"each of {key}", v) for v in values]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t={self.last_epoch}, lr={self.get_last_lr()})"


# -- schedules of t ---------------------------------------------------------------------------


class Constant(LRScheduler):
    """lr = lr0 for every t."""


def _keeps_attributes(fn: Callable[[int], float]) -> bool:
    """Whether LambdaLR saves ``fn``'s attributes: a callable object's, not a function's."""
    return not isinstance(fn, types.FunctionType) and hasattr(fn, "__dict__")


class LambdaLR(LRScheduler):
    """lr = base_lr * lr_lambda(t): one function for every group, or a list of one per group.

    As torch, a plain function is not saved in the state dict (it comes from the
    constructor); a callable object's attributes are."""

    _state_keys = ("t", "base_lrs", "lr_lambdas")

    def __init__(self, optimizer: Optimizer,
                 lr_lambda: Callable[[int], float] | Sequence[Callable[[int], float]]) -> None:
        groups = len(_check_optimizer("LambdaLR", optimizer).param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != groups:
                raise ValueError(f"LambdaLR: expected {groups} lr_lambdas (one per param group), got {len(lr_lambda)}")
            lambdas = list(lr_lambda)
        else:
            lambdas = [lr_lambda] * groups
        for fn in lambdas:
            if not callable(fn):
                raise TypeError(f"LambdaLR: lr_lambda must be a function or a list of them, got {type(fn).__name__}")
        self.lr_lambdas = lambdas
        super().__init__(optimizer)

    def lrs_at(self, t: int) -> list[float]:
        return [base_lr * fn(t) for fn, base_lr in zip(self.lr_lambdas, self.base_lrs)]

    def _extra_state(self) -> dict[str, Any]:
        return {"lr_lambdas": [dict(fn.__dict__) if _keeps_attributes(fn) else None for fn in self.lr_lambdas]}

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        saved = state["lr_lambdas"]
        if not isinstance(saved, (list, tuple)) or len(saved) != len(self.lr_lambdas):
            raise ValueError(f"LambdaLR.load_state_dict: lr_lambdas must be a list of {len(self.lr_lambdas)} "
                             f"entries, got {saved!r}")
        for i, (fn, attrs) in enumerate(zip(self.lr_lambdas, saved)):
            if attrs is not None and not (isinstance(attrs, Mapping) and _keeps_attributes(fn)):
                raise ValueError(f"LambdaLR.load_state_dict: lr_lambdas[{i}] holds {attrs!r}; this lr_lambda "
                                 f"({type(fn).__name__}) keeps no attributes")
        for fn, attrs in zip(self.lr_lambdas, saved):
            if attrs is not None:
                fn.__dict__.update(attrs)


class StepLR(LRScheduler):
    """lr = lr0 * gamma ** (t // step_size)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        _positive("StepLR: step_size", step_size, integer=True)
        _positive("StepLR: gamma", gamma)
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer)

    def factor(self, t: int) -> float:
        return self.gamma ** (t // self.step_size)


class MultiStepLR(LRScheduler):
    """lr = lr0 * gamma ** (the number of milestones m with m <= t).

    As torch, a milestone listed twice decays twice; ``milestones`` is kept sorted."""

    def __init__(self, optimizer: Optimizer, milestones: Iterable[int], gamma: float = 0.1) -> None:
        if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Iterable):
            raise TypeError(f"MultiStepLR: milestones must be a list of step counts, got {milestones!r}")
        milestones = list(milestones)
        for m in milestones:
            _non_negative("MultiStepLR: each of milestones", m, integer=True)
        _positive("MultiStepLR: gamma", gamma)
        self.milestones, self.gamma = sorted(int(m) for m in milestones), float(gamma)
        super().__init__(optimizer)

    def factor(self, t: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, t)


class ExponentialLR(LRScheduler):
    """lr = lr0 * gamma ** t."""

    def __init__(self, optimizer: Optimizer, gamma: float) -> None:
        _positive("ExponentialLR: gamma", gamma)
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def factor(self, t: int) -> float:
        return self.gamma ** t


class LinearLR(LRScheduler):
    """lr = lr0 * (start_factor + (end_factor - start_factor) * min(t, total_iters) / total_iters):
    from start_factor * lr0 to end_factor * lr0 in total_iters steps, then held."""

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5) -> None:
        _between("LinearLR: start_factor", start_factor, 0.0, 1.0, low_open=True)
        _between("LinearLR: end_factor", end_factor, 0.0, 1.0)
        _positive("LinearLR: total_iters", total_iters, integer=True)
        self.start_factor, self.end_factor, self.total_iters = float(start_factor), float(end_factor), int(total_iters)
        super().__init__(optimizer)

    def factor(self, t: int) -> float:
        return self.start_factor + (self.end_factor - self.start_factor) * min(self.total_iters, t) / self.total_iters


class Annealing(LRScheduler):
    """lr = lr0 * tau / max(t, tau): constant for tau steps, then decaying as 1/t."""

    def __init__(self, optimizer: Optimizer, tau: float) -> None:
        _positive("Annealing: tau", tau)
        self.tau = float(tau)
        super().__init__(optimizer)

    def factor(self, t: int) -> float:
        return self.tau / max(t, self.tau)


def _cosine(base_lr: float, eta_min: float, t_cur: int, t_i: int) -> float:
    # torch's expression, operation for operation, so that the values agree bitwise.
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (lr0 - eta_min) * (1 + cos(pi * t / T_max)) / 2 for t <= T_max, then
    eta_min (torch's closed form, held at its minimum instead of rising again)."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        _positive("CosineAnnealingLR: T_max", T_max, integer=True)
        _non_negative("CosineAnnealingLR: eta_min", eta_min)
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer)

    def lr(self, base_lr: float, t: int) -> float:
        return self.eta_min if t >= self.T_max else _cosine(base_lr, self.eta_min, t, self.T_max)


class CosineAnnealingWarmRestarts(LRScheduler):
    """lr = eta_min + (lr0 - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2, where T_cur counts
    the steps since the last restart and T_i is the length of the current cycle: T_0 at
    first, T_mult times longer after each restart (SGDR; T_cur = t mod T_0 when T_mult = 1)."""

    def __init__(self, optimizer: Optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0) -> None:
        _positive("CosineAnnealingWarmRestarts: T_0", T_0, integer=True)
        _positive("CosineAnnealingWarmRestarts: T_mult", T_mult, integer=True)
        _non_negative("CosineAnnealingWarmRestarts: eta_min", eta_min)
        self.T_0, self.T_mult, self.eta_min = int(T_0), int(T_mult), float(eta_min)
        super().__init__(optimizer)

    def cycle(self, t: int) -> tuple[int, int]:
        """(T_cur, T_i) after t steps, in exact integers (torch's step(epoch) takes a float log)."""
        if self.T_mult == 1:
            return t % self.T_0, self.T_0
        t_cur, t_i = t, self.T_0
        while t_cur >= t_i:  # one pass per restart: O(log t)
            t_cur, t_i = t_cur - t_i, t_i * self.T_mult
        return t_cur, t_i

    @property
    def T_cur(self) -> int:
        """Steps since the last restart."""
        return self.cycle(self.last_epoch)[0]

    @property
    def T_i(self) -> int:
        """The length of the current cycle."""
        return self.cycle(self.last_epoch)[1]

    def lr(self, base_lr: float, t: int) -> float:
        t_cur, t_i = self.cycle(t)
        return _cosine(base_lr, self.eta_min, t_cur, t_i)


class OneCycleLR(LRScheduler):
    """The 1cycle policy (torch's OneCycleLR, lr only): with initial_lr = max_lr / div_factor
    and min_lr = initial_lr / final_div_factor, the lr anneals from initial_lr up to max_lr
    over the first pct_start of total_steps (ending at step pct_start * total_steps - 1),
    then down to min_lr at step total_steps - 1. With ``three_phase`` it goes back to
    initial_lr first (ending at step 2 * pct_start * total_steps - 2), then to min_lr.
    Within a phase from a to b, at fraction p of it, the lr is
    b + (a - b) / 2 * (1 + cos(pi * p)) ('cos') or a + (b - a) * p ('linear').

    total_steps, or else epochs * steps_per_epoch, is the length of the cycle; as torch,
    stepping past it raises ValueError. ``max_lr`` is one value or one per param group.

    Deviation: momentum is not cycled. ``cycle_momentum`` defaults to False (torch: True) and
    True raises ValueError; ``base_momentum`` and ``max_momentum`` are accepted for torch's
    signature and unused. max_lr and min_lr live in the scheduler (``max_lrs``, saved in the
    state dict), not in the param groups."""

    _state_keys = ("t", "base_lrs", "max_lrs")

    def __init__(self, optimizer: Optimizer, max_lr: float | Sequence[float], total_steps: int | None = None,
                 epochs: int | None = None, steps_per_epoch: int | None = None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", cycle_momentum: bool = False,
                 base_momentum: float | Sequence[float] = 0.85, max_momentum: float | Sequence[float] = 0.95,
                 div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False) -> None:
        _check_optimizer("OneCycleLR", optimizer)
        self.total_steps = self._total_steps(total_steps, epochs, steps_per_epoch)
        _between("OneCycleLR: pct_start", pct_start, 0.0, 1.0)
        _one_of("OneCycleLR: anneal_strategy", anneal_strategy, ("cos", "linear"))
        if cycle_momentum:
            raise ValueError("OneCycleLR: cycle_momentum=True is not supported (the lr is cycled, momentum "
                             "and Adam's beta1 are not); pass cycle_momentum=False")
        _positive("OneCycleLR: div_factor", div_factor)
        _positive("OneCycleLR: final_div_factor", final_div_factor)
        self.max_lrs = [float(v) for v in _per_group("OneCycleLR: max_lr", max_lr, optimizer)]
        for v in self.max_lrs:
            _positive("OneCycleLR: max_lr", v)
        self.pct_start, self.anneal_strategy, self.three_phase = float(pct_start), anneal_strategy, bool(three_phase)
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)
        self.cycle_momentum = False
        self._phases = self._make_phases()
        super().__init__(optimizer)

    @staticmethod
    def _total_steps(total_steps: int | None, epochs: int | None, steps_per_epoch: int | None) -> int:
        if total_steps is not None:
            _positive("OneCycleLR: total_steps", total_steps, integer=True)
            return int(total_steps)
        if epochs is None or steps_per_epoch is None:
            raise ValueError("OneCycleLR: give total_steps, or epochs and steps_per_epoch")
        _positive("OneCycleLR: epochs", epochs, integer=True)
        _positive("OneCycleLR: steps_per_epoch", steps_per_epoch, integer=True)
        return int(epochs) * int(steps_per_epoch)

    def _make_phases(self) -> list[tuple[float, str, str]]:
        """(last step, start lr, end lr) of each phase, with torch's float end steps."""
        up = float(self.pct_start * self.total_steps) - 1
        end = self.total_steps - 1
        if self.three_phase:
            return [(up, "initial", "max"), (float(2 * self.pct_start * self.total_steps) - 2, "max", "initial"),
                    (end, "initial", "min")]
        return [(up, "initial", "max"), (end, "max", "min")]

    def _initial_lrs(self) -> list[float]:
        # As torch: initial_lr is overwritten, not set by default, so max_lr decides it.
        for group, max_lr in zip(self.optimizer.param_groups, self.max_lrs):
            group["initial_lr"] = max_lr / self.div_factor
        return super()._initial_lrs()

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def lrs_at(self, t: int) -> list[float]:
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {t} times; the cycle has total_steps={self.total_steps}")
        return [self._lr_at(t, {"initial": base_lr, "max": max_lr, "min": base_lr / self.final_div_factor})
                for base_lr, max_lr in zip(self.base_lrs, self.max_lrs)]

    def _lr_at(self, t: int, lrs: Mapping[str, float]) -> float:
        start_step = 0.0
        for i, (end_step, start, end) in enumerate(self._phases):
            if t <= end_step or i == len(self._phases) - 1:
                # A phase of no length (pct_start 1, say) is reached only at its end.
                pct = 1.0 if end_step == start_step else (t - start_step) / (end_step - start_step)
                return self._anneal(lrs[start], lrs[end], pct)
            start_step = end_step
        raise AssertionError("unreachable: the last phase always matches")

    def _extra_state(self) -> dict[str, Any]:
        return {"max_lrs": list(self.max_lrs)}

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        max_lrs = self._state_lrs("max_lrs", state["max_lrs"])
        if self._state_t(state["t"]) > self.total_steps:
            raise ValueError(f"OneCycleLR.load_state_dict: t={state['t']} is past the cycle's "
                             f"total_steps={self.total_steps}")
        self.max_lrs = max_lrs


# -- compositions -----------------------------------------------------------------------------


def _check_child(owner: str, scheduler: Any, optimizer: Optimizer) -> None:
    if not isinstance(scheduler, LRScheduler):
        raise TypeError(f"{owner} must be a scheduler, got {type(scheduler).__name__}")
    if isinstance(scheduler, ReduceLROnPlateau):
        raise ValueError(f"{owner} cannot be a ReduceLROnPlateau: its lr follows a metric, not t")
    if scheduler.optimizer is not optimizer:
        raise ValueError(f"{owner} must schedule the same optimizer")


class LinearWarmup(LRScheduler):
    """lr = min(1, (t + 1) / warmup_steps) * after's lr at t (or lr0 without ``after``).

    ``after`` is another scheduler on the same optimizer (warmup then cosine, say); it is
    used only as a function of t: step this one, not ``after``."""

    _optional_state_keys = ("after",)  # saved since after could be any schedule; older states lack it

    def __init__(self, optimizer: Optimizer, warmup_steps: int, after: LRScheduler | None = None) -> None:
        _positive("LinearWarmup: warmup_steps", warmup_steps, integer=True)
        if after is not None:
            _check_child("LinearWarmup: `after`", after, optimizer)
        self.warmup_steps, self.after = int(warmup_steps), after
        super().__init__(optimizer)

    def lrs_at(self, t: int) -> list[float]:
        ramp = min(1.0, (t + 1) / self.warmup_steps)
        return [ramp * lr for lr in (self.base_lrs if self.after is None else self.after.lrs_at(t))]

    def _extra_state(self) -> dict[str, Any]:
        return {} if self.after is None else {"after": self.after.state_dict()}

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        if self.after is None:
            if state.get("after") is not None:
                raise ValueError("LinearWarmup.load_state_dict: the state dict has an 'after' schedule, "
                                 "this LinearWarmup has none")
        elif "after" in state:
            self.after.load_state_dict(state["after"])
        else:  # a state dict from before "after" was saved: its base_lrs are after's too
            self.after.base_lrs = self._state_lrs("base_lrs", state["base_lrs"])


class SequentialLR(LRScheduler):
    """Runs ``schedulers[i]`` from step milestones[i-1] (0 for the first) until milestones[i],
    each restarted at its own t = 0: lr(t) = schedulers[i].lr at t - milestones[i-1], with i
    the number of milestones <= t. The schedulers share this one's optimizer; step this one."""

    _state_keys = ("t", "base_lrs", "schedulers")

    def __init__(self, optimizer: Optimizer, schedulers: Sequence[LRScheduler], milestones: Sequence[int]) -> None:
        _check_optimizer("SequentialLR", optimizer)
        schedulers, milestones = self._checked(optimizer, schedulers, milestones)
        self._schedulers, self._milestones = schedulers, milestones
        super().__init__(optimizer)

    @staticmethod
    def _checked(optimizer: Optimizer, schedulers: Any, milestones: Any) -> tuple[list[LRScheduler], list[int]]:
        if not isinstance(schedulers, (list, tuple)) or not schedulers:
            raise ValueError(f"SequentialLR: schedulers must be a non-empty list, got {schedulers!r}")
        for i, s in enumerate(schedulers):
            _check_child(f"SequentialLR: schedulers[{i}]", s, optimizer)
        if not isinstance(milestones, (list, tuple)) or len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR: milestones must be a list of one fewer step counts than the "
                             f"{len(schedulers)} schedulers, got {milestones!r}")
        for m in milestones:
            _non_negative("SequentialLR: each of milestones", m, integer=True)
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"SequentialLR: milestones must be increasing, got {list(milestones)}")
        return list(schedulers), [int(m) for m in milestones]

    def _locate(self, t: int) -> tuple[LRScheduler, int]:
        """The scheduler in charge at step t, and its own step count there."""
        i = bisect.bisect_right(self._milestones, t)
        return self._schedulers[i], t - (self._milestones[i - 1] if i else 0)

    def lrs_at(self, t: int) -> list[float]:
        scheduler, local = self._locate(t)
        return scheduler.lrs_at(local)

    def _go_to(self, t: int) -> None:
        scheduler, local = self._locate(t)
        scheduler._go_to(local)  # sets the groups' lr and the scheduler's own last_epoch
        self.last_epoch, self._last_lr = t, scheduler.get_last_lr()

    def _extra_state(self) -> dict[str, Any]:
        return {"schedulers": [s.state_dict() for s in self._schedulers]}

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        saved = state["schedulers"]
        if not isinstance(saved, (list, tuple)) or len(saved) != len(self._schedulers):
            got = f"{len(saved)} of them" if isinstance(saved, (list, tuple)) else type(saved).__name__
            raise ValueError(f"SequentialLR.load_state_dict: schedulers must be a list of {len(self._schedulers)} "
                             f"state dicts, got {got}")
        before = [s.state_dict() for s in self._schedulers]
        try:
            for scheduler, s in zip(self._schedulers, saved):
                scheduler.load_state_dict(s)
        except ValueError:  # all or nothing: put back the ones already loaded
            for scheduler, s in zip(self._schedulers, before):
                scheduler.load_state_dict(s)
            self._go_to(self.last_epoch)  # the groups' lrs are this schedule's again
            raise


# -- a schedule of a metric -------------------------------------------------------------------


class ReduceLROnPlateau(LRScheduler):
    """Multiplies each group's lr by ``factor`` (not below its ``min_lr``; a change smaller
    than ``eps`` is skipped) once the metric passed to ``step(metrics)`` has not improved for
    more than ``patience`` steps, then waits ``cooldown`` steps before counting again.

    Improvement: in 'min' mode, metric < best * (1 - threshold) ('rel') or metric < best -
    threshold ('abs'); in 'max' mode, metric > best * (1 + threshold) or > best + threshold.

    As torch, it neither sets ``initial_lr`` nor changes the lr at construction. Its state
    dict also holds the groups' current lrs ("lrs"), which loading restores: they are the
    schedule's state, not a function of t."""

    _state_keys = ("t", "best", "num_bad_epochs", "cooldown_counter", "lrs")

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: float | Sequence[float] = 0, eps: float = 1e-8) -> None:
        self.optimizer = _check_optimizer("ReduceLROnPlateau", optimizer)
        _one_of("ReduceLROnPlateau: mode", mode, ("min", "max"))
        _one_of("ReduceLROnPlateau: threshold_mode", threshold_mode, ("rel", "abs"))
        _between("ReduceLROnPlateau: factor", factor, 0.0, 1.0, high_open=True)
        _non_negative("ReduceLROnPlateau: patience", patience, integer=True)
        _non_negative("ReduceLROnPlateau: threshold", threshold)
        _non_negative("ReduceLROnPlateau: cooldown", cooldown, integer=True)
        _non_negative("ReduceLROnPlateau: eps", eps)
        min_lrs = _per_group("ReduceLROnPlateau: min_lr", min_lr, optimizer)
        for v in min_lrs:
            _non_negative("ReduceLROnPlateau: min_lr", v)
        self.mode, self.threshold_mode, self.factor = mode, threshold_mode, float(factor)
        self.patience, self.threshold, self.cooldown = int(patience), float(threshold), int(cooldown)
        self.eps, self.min_lrs = float(eps), [float(v) for v in min_lrs]
        self.last_epoch = 0
        self.best, self.num_bad_epochs, self.cooldown_counter = self.mode_worse, 0, 0
        self._last_lr = [group["lr"] for group in optimizer.param_groups]

    @property
    def mode_worse(self) -> float:
        """The metric every real one improves on."""
        return math.inf if self.mode == "min" else -math.inf

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def is_better(self, metric: float, best: float) -> bool:
        """Whether ``metric`` improves on ``best`` by more than the threshold."""
        if self.mode == "min":
            return metric < (best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return metric > (best * (self.threshold + 1.0) if self.threshold_mode == "rel" else best + self.threshold)

    def step(self, metrics: float) -> None:  # type: ignore[override]
        """Count one more step with the metric ``metrics``, reducing the lrs if it has stalled."""
        try:
            current = float(metrics)
        except (TypeError, ValueError):
            raise TypeError(f"ReduceLROnPlateau.step: metrics must be a number, got {metrics!r}") from None
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad steps in the cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _reduce_lr(self) -> None:
        for group, min_lr in zip(self.optimizer.param_groups, self.min_lrs):
            old = float(group["lr"])
            new = max(old * self.factor, min_lr)
            if old - new > self.eps:
                group["lr"] = new

    def lrs_at(self, t: int) -> list[float]:
        raise TypeError("ReduceLROnPlateau: its lr follows the metrics passed to step(), not t alone")

    def state_dict(self) -> dict[str, Any]:
        """``{"t", "best", "num_bad_epochs", "cooldown_counter", "lrs": the groups' lrs}``."""
        return {"t": self.last_epoch, "best": self.best, "num_bad_epochs": self.num_bad_epochs,
                "cooldown_counter": self.cooldown_counter, "lrs": self.get_last_lr()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the counters and the best metric, and set the groups' lrs to the saved ones."""
        self._check_state_keys(state)
        t, lrs = self._state_t(state["t"]), self._state_lrs("lrs", state["lrs"])
        best = self._state_number("best", state["best"])
        bad, cooldown = (self._state_t(state[k], k) for k in ("num_bad_epochs", "cooldown_counter"))
        self.last_epoch, self.best, self.num_bad_epochs, self.cooldown_counter = t, best, bad, cooldown
        self._set_lrs(lrs)


# -- the config layer's names -------------------------------------------------------------------

# Schedules a YAML config can name: their options are numbers and lists (nested schedules as
# {"name": ..., **options} dicts). LambdaLR needs a function and ReduceLROnPlateau a metric.
SCHEDULERS: dict[str, type[LRScheduler]] = {
    "constant": Constant, "step": StepLR, "annealing": Annealing,
    "cosine": CosineAnnealingLR, "warmup": LinearWarmup,
    "multistep": MultiStepLR, "exponential": ExponentialLR, "linear": LinearLR,
    "onecycle": OneCycleLR, "cosine_restarts": CosineAnnealingWarmRestarts, "sequential": SequentialLR,
}


def _nested(name: str, option: str, spec: Any, optimizer: Optimizer) -> Any:
    """A nested schedule given as a config dict, built; anything else as it is."""
    if not isinstance(spec, Mapping):
        return spec
    spec = dict(spec)
    if "name" not in spec:
        raise ValueError(f"schedule {name!r}: option {option!r} needs a 'name'")
    return build_scheduler(spec.pop("name"), optimizer, **spec)


def build_scheduler(name: str, optimizer: Optimizer, **kwargs: Any) -> LRScheduler:
    """The scheduler a config names, e.g. ``build_scheduler("step", opt, step_size=10)``.
    For "warmup", ``after`` may be a dict ``{"name": ..., **options}`` of another schedule;
    for "sequential", ``schedulers`` may be a list of such dicts. Unknown names and options
    raise ValueError listing the valid ones."""
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
    if "after" in kwargs:
        kwargs["after"] = _nested(name, "after", kwargs["after"], optimizer)
    if isinstance(kwargs.get("schedulers"), (list, tuple)):
        kwargs["schedulers"] = [_nested(name, f"schedulers[{i}]", s, optimizer)
                                for i, s in enumerate(kwargs["schedulers"])]
    return cls(optimizer, **kwargs)
