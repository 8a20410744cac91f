"""Learning-rate schedules against their closed forms, composition, state_dict, the factory."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distbp import nn, optim
from distbp.optim import lr_scheduler as S

BASE = (0.1, 0.03)  # two param groups with different initial learning rates


def make_optimizer():
    a, b = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))
    return optim.SGD([{"params": [a], "lr": BASE[0]}, {"params": [b], "lr": BASE[1]}], lr=1.0)


def trace(scheduler, steps=12):
    """Learning rates of both groups for t = 0..steps-1."""
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr())
        scheduler.step()
    return np.array(out)


def closed_form(fn, steps=12):
    return np.array([[fn(lr0, t) for lr0 in BASE] for t in range(steps)])


def cosine(lr0, t, T=8, eta_min=0.001):
    return eta_min if t >= T else eta_min + (lr0 - eta_min) * (1 + math.cos(math.pi * t / T)) / 2


@pytest.mark.parametrize("make,expected", [
    (lambda o: S.Constant(o), lambda lr0, t: lr0),
    (lambda o: S.StepLR(o, step_size=3, gamma=0.5), lambda lr0, t: lr0 * 0.5 ** (t // 3)),
    (lambda o: S.Annealing(o, tau=4), lambda lr0, t: lr0 * 4 / max(t, 4)),
    (lambda o: S.CosineAnnealingLR(o, T_max=8, eta_min=0.001), cosine),
    (lambda o: S.LinearWarmup(o, warmup_steps=5), lambda lr0, t: lr0 * min(1.0, (t + 1) / 5)),
], ids=["constant", "step", "annealing", "cosine", "warmup"])
def test_schedules_follow_their_closed_forms(make, expected):
    np.testing.assert_allclose(trace(make(make_optimizer())), closed_form(expected), rtol=1e-15, atol=0)


def test_some_reference_values():
    """Hand-computed values, independent of the closed forms written above."""
    opt = make_optimizer()
    assert trace(S.Annealing(opt, tau=2), 5)[:, 0].tolist() == pytest.approx([0.1, 0.1, 0.1, 0.2 / 3, 0.05])
    opt = make_optimizer()
    assert trace(S.CosineAnnealingLR(opt, T_max=4), 6)[:, 0].tolist() == pytest.approx(
        [0.1, 0.1 * (1 + math.sqrt(0.5)) / 2, 0.05, 0.1 * (1 - math.sqrt(0.5)) / 2, 0.0, 0.0])


def test_warmup_composes_with_cosine():
    opt = make_optimizer()
    sched = S.LinearWarmup(opt, warmup_steps=4, after=S.CosineAnnealingLR(opt, T_max=8, eta_min=0.001))
    expected = closed_form(lambda lr0, t: min(1.0, (t + 1) / 4) * cosine(lr0, t))
    np.testing.assert_allclose(trace(sched), expected, rtol=1e-15)
    assert sched.get_last_lr()[0] == pytest.approx(0.001)  # after T_max: eta_min


def test_the_optimizer_steps_with_the_scheduled_lr():
    p = nn.Parameter(np.zeros(2), dtype=np.float64)
    opt = optim.SGD([p], lr=0.1)
    sched = S.Annealing(opt, tau=1)
    for _ in range(4):
        p.grad = np.ones(2)
        opt.step()
        sched.step()
    # lr at t = 0, 1, 2, 3 is 0.1 * 1 / max(t, 1)
    np.testing.assert_allclose(p.data, -0.1 * (1 + 1 + 1 / 2 + 1 / 3), rtol=1e-15)


def test_state_dict_round_trip():
    opt = make_optimizer()
    sched = S.StepLR(opt, step_size=2, gamma=0.1)
    for _ in range(5):
        sched.step()
    state = sched.state_dict()
    assert state == {"t": 5, "base_lrs": list(BASE)}
    rest = trace(sched, 4)

    fresh_opt = make_optimizer()
    fresh = S.StepLR(fresh_opt, step_size=2, gamma=0.1)
    fresh.load_state_dict(state)
    assert fresh.get_last_lr() == pytest.approx([BASE[0] * 0.01, BASE[1] * 0.01])
    np.testing.assert_array_equal(trace(fresh, 4), rest)


def test_state_dict_survives_a_changed_optimizer_lr():
    """base_lrs come from the state dict, not from the (already scheduled) optimizer."""
    opt = make_optimizer()
    sched = S.Annealing(opt, tau=1)
    for _ in range(3):
        sched.step()
    state = sched.state_dict()
    other = make_optimizer()
    for g in other.param_groups:
        g["lr"] = 123.0
    resumed = S.Annealing(other, tau=1)
    resumed.load_state_dict(state)
    assert resumed.get_last_lr() == pytest.approx([BASE[0] / 3, BASE[1] / 3])


@pytest.mark.parametrize("state,message", [
    ({"t": 1}, "expected keys 't' and 'base_lrs'"),
    ({"t": 1, "base_lrs": [0.1]}, "1 base_lrs in the state dict, 2 param groups"),
    ({"t": -1, "base_lrs": [0.1, 0.1]}, "non-negative integer"),
    ({"t": 1.5, "base_lrs": [0.1, 0.1]}, "non-negative integer"),
])
def test_load_state_dict_rejects_mismatches(state, message):
    with pytest.raises(ValueError, match=message):
        S.Constant(make_optimizer()).load_state_dict(state)


@pytest.mark.parametrize("name,kwargs,cls", [
    ("constant", {}, S.Constant),
    ("step", {"step_size": 3}, S.StepLR),
    ("annealing", {"tau": 10}, S.Annealing),
    ("cosine", {"T_max": 10, "eta_min": 0.0}, S.CosineAnnealingLR),
    ("warmup", {"warmup_steps": 3}, S.LinearWarmup),
])
def test_build_scheduler_names(name, kwargs, cls):
    assert type(S.build_scheduler(name, make_optimizer(), **kwargs)) is cls


def test_build_scheduler_warmup_after_a_config_dict():
    opt = make_optimizer()
    sched = S.build_scheduler("warmup", opt, warmup_steps=4, after={"name": "cosine", "T_max": 8, "eta_min": 0.001})
    assert isinstance(sched.after, S.CosineAnnealingLR)
    expected = closed_form(lambda lr0, t: min(1.0, (t + 1) / 4) * cosine(lr0, t))
    np.testing.assert_allclose(trace(sched), expected, rtol=1e-15)


@pytest.mark.parametrize("name,kwargs,message", [
    ("linear", {}, "unknown schedule 'linear'; expected one of constant, step, annealing, cosine, warmup"),
    ("step", {"stepsize": 3}, "schedule 'step': unknown option.* stepsize; expected step_size, gamma"),
    ("step", {}, "schedule 'step': missing option.* step_size"),
    ("constant", {"tau": 1}, "unknown option.* tau; expected none"),
    ("warmup", {"warmup_steps": 2, "after": {"T_max": 3}}, "'after' needs a 'name'"),
    ("step", {"step_size": 0}, "step_size must be positive, got 0"),
    ("step", {"step_size": 2.5}, "step_size must be an integer, got 2.5"),
    ("step", {"step_size": 2, "gamma": -0.1}, "gamma must be positive"),
    ("annealing", {"tau": 0}, "tau must be positive"),
    ("cosine", {"T_max": 0}, "T_max must be positive"),
    ("cosine", {"T_max": 5, "eta_min": -1}, "eta_min must be >= 0"),
    ("warmup", {"warmup_steps": 0}, "warmup_steps must be positive"),
])
def test_build_scheduler_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        S.build_scheduler(name, make_optimizer(), **kwargs)


def test_warmup_after_must_share_the_optimizer():
    with pytest.raises(ValueError, match="same optimizer"):
        S.LinearWarmup(make_optimizer(), 3, after=S.Constant(make_optimizer()))


def test_scheduler_needs_an_optimizer():
    with pytest.raises(TypeError, match="expected an Optimizer"):
        S.Constant([0.1])
