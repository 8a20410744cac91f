"""The names a config may choose, each bound to what it builds: one entry per optimizer, loss,
schedule and initializer. The schema (config.py) takes its choices, and which keys apply to
which choice, from here; build.py builds from here. Adding an optimizer, a loss or a schedule
is one entry (plus a Field in config.SCHEMA for a key no entry used before).

Each entry names the keys of its config section that it reads (``keys``); the schema refuses
those keys, set to anything but their default, for the other choices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .. import functional as F
from .. import nn, optim
from ..autodiff.tensor import Tensor

Section = Mapping[str, Any]
# A loss maps (outputs, targets, scale) to scale * (sum of per-sample losses): every worker
# scales by 1/global_batch, so summing workers' gradients gives the global mean's gradient.
LossFn = Callable[[Tensor, np.ndarray, float], Tensor]


@dataclass(frozen=True)
class OptimizerEntry:
    """``build(params, section)``; ``state_slots(section)``: buffers of the parameters' size the
    optimizer keeps (for the memory check before a model is built); ``fill(section)``: defaults
    that depend on the choice, and errors (a list of messages) for rules across its keys."""

    build: Callable[[Any, Section], optim.Optimizer]
    keys: tuple[str, ...] = ()
    state_slots: Callable[[Section], int] = lambda o: 1
    fill: Callable[[dict[str, Any]], list[str]] = lambda o: []


def _eps(o: Section, default: float) -> float:
    return default if o["eps"] is None else o["eps"]


def _sgd(params: Any, o: Section) -> optim.Optimizer:
    return optim.SGD(params, lr=o["lr"], momentum=o["momentum"], dampening=o["dampening"], nesterov=o["nesterov"],
                     weight_decay=o["weight_decay"])


def _sgd_fill(default_momentum: float) -> Callable[[dict[str, Any]], list[str]]:
    def fill(o: dict[str, Any]) -> list[str]:
        if o["momentum"] is None:
            o["momentum"] = default_momentum  # torch.optim.SGD's default is 0; "momentum" is SGD with 0.9
        if o["nesterov"] and (o["momentum"] <= 0 or o["dampening"] != 0):
            return [f"optimizer.nesterov: Nesterov momentum needs optimizer.momentum > 0 and optimizer.dampening 0 "
                    f"(as torch.optim.SGD), got momentum {o['momentum']} and dampening {o['dampening']}"]
        return []
    return fill


def _sgd_slots(default_momentum: float) -> Callable[[Section], int]:
    return lambda o: 1 if (o["momentum"] if o["momentum"] is not None else default_momentum) else 0


def _adam(cls: type) -> Callable[[Any, Section], optim.Optimizer]:
    return lambda params, o: cls(params, lr=o["lr"], betas=tuple(o["betas"]), eps=_eps(o, 1e-8),
                                 weight_decay=o["weight_decay"])


_SGD_KEYS = ("momentum", "dampening", "nesterov")
OPTIMIZERS: dict[str, OptimizerEntry] = {
    "sgd": OptimizerEntry(_sgd, _SGD_KEYS, _sgd_slots(0.0), _sgd_fill(0.0)),
    "momentum": OptimizerEntry(_sgd, _SGD_KEYS, _sgd_slots(0.9), _sgd_fill(0.9)),
    "adagrad": OptimizerEntry(lambda params, o: optim.AdaGrad(params, lr=o["lr"], eps=_eps(o, 1e-10),
                                                              weight_decay=o["weight_decay"]), ("eps",)),
    "rmsprop": OptimizerEntry(lambda params, o: optim.RMSProp(params, lr=o["lr"], alpha=o["alpha"], eps=_eps(o, 1e-8),
                                                              weight_decay=o["weight_decay"]), ("eps", "alpha")),
    "adam": OptimizerEntry(_adam(optim.Adam), ("betas", "eps"), lambda o: 2),
    "adamw": OptimizerEntry(_adam(optim.AdamW), ("betas", "eps"), lambda o: 2),
}


@dataclass(frozen=True)
class LossEntry:
    """``build(model_section, num_outputs)`` gives the LossFn."""

    build: Callable[[Section, int], LossFn]
    keys: tuple[str, ...] = ()


def _one_hot(y: np.ndarray, k: int, dtype: Any) -> np.ndarray:
    out = np.zeros((len(y), k), dtype=dtype)
    out[np.arange(len(y)), y] = 1
    return out


def _mse(m: Section, num_outputs: int) -> LossFn:
    # Squared error, averaged over outputs as torch's MSELoss; class labels become one-hot
    # targets (the course notes' sigmoid network).
    def mse(out: Tensor, y: np.ndarray, scale: float) -> Tensor:
        target = y if y.ndim == 2 else _one_hot(y, num_outputs, out.dtype)
        return F.mse_loss(out, target, reduction="sum") * (scale / num_outputs)
    return mse


LOSSES: dict[str, LossEntry] = {
    "cross_entropy": LossEntry(lambda m, k: lambda out, y, scale: F.cross_entropy(out, y, reduction="sum") * scale),
    "multi_margin": LossEntry(lambda m, k: lambda out, y, scale: F.multi_margin(out, y, m["margin"], reduction="sum")
                              * scale, ("margin",)),
    "mse": LossEntry(_mse),
}


@dataclass(frozen=True)
class ScheduleEntry:
    """``build(optimizer, section, total_steps)`` gives the LRScheduler. ``nests``: it wraps
    another schedule (``schedule.after``), so it cannot be that other schedule itself."""

    build: Callable[[optim.Optimizer, Section, int], Any]
    keys: tuple[str, ...] = ()
    nests: bool = False


_lr = optim.lr_scheduler


def _warmup(opt: optim.Optimizer, s: Section, total: int) -> Any:
    return _lr.LinearWarmup(opt, warmup_steps=s["warmup_steps"], after=SCHEDULES[s["after"]].build(opt, s, total))


SCHEDULES: dict[str, ScheduleEntry] = {
    "constant": ScheduleEntry(lambda opt, s, total: _lr.Constant(opt)),
    "step": ScheduleEntry(lambda opt, s, total: _lr.StepLR(opt, step_size=s["step_size"], gamma=s["gamma"]),
                          ("step_size", "gamma")),
    "annealing": ScheduleEntry(lambda opt, s, total: _lr.Annealing(opt, tau=s["tau"]), ("tau",)),
    # cosine's horizon defaults to the run's length
    "cosine": ScheduleEntry(lambda opt, s, total: _lr.CosineAnnealingLR(opt, T_max=s["t_max"] or total,
                                                                        eta_min=s["eta_min"]), ("t_max", "eta_min")),
    "warmup": ScheduleEntry(_warmup, ("warmup_steps", "after"), nests=True),
}

AFTER_WARMUP = tuple(name for name, entry in SCHEDULES.items() if not entry.nests)

INITS: dict[str, Callable[..., Any]] = {"xavier_uniform": nn.init.xavier_uniform_,
                                        "xavier_normal": nn.init.xavier_normal_,
                                        "kaiming_normal": nn.init.kaiming_normal_}


@dataclass(frozen=True)
class Users:
    """For one key of a section: the choices that read it."""

    key: str
    choices: tuple[str, ...] = field(default_factory=tuple)


def users(entries: Mapping[str, Any]) -> list[Users]:
    """Every key some entry reads, with the choices that read it, in first-use order."""
    found: dict[str, list[str]] = {}
    for name, entry in entries.items():
        for key in entry.keys:
            found.setdefault(key, []).append(name)
    return [Users(k, tuple(v)) for k, v in found.items()]
