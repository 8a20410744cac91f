"""Learning-rate schedules against their closed forms (torch's documented formulas, written out
here independently), initial_lr, composition, state_dict and resuming, bad arguments, the factory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from distbp import nn, optim
from distbp.optim import lr_scheduler as S

BASE = (0.1, 0.03)  # two param groups with different initial learning rates


def make_optimizer(lrs=BASE):
    a, b = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))
    return optim.SGD([{"params": [a], "lr": lrs[0]}, {"params": [b], "lr": lrs[1]}], lr=1.0)


def trace(scheduler, steps=12):
    """Learning rates of both groups for t = 0..steps-1."""
    out = []
    for t in range(steps):
        if t:
            scheduler.step()
        out.append(scheduler.get_last_lr())
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
    ("plateau", {}, "unknown schedule 'plateau'; expected one of constant, step, annealing, cosine, warmup, "
                    "multistep, exponential, linear, onecycle, cosine_restarts, sequential"),
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


# -- the schedules torch has, against its documented formulas ---------------------------------

def one_cycle(max_lr, t, total, pct=0.3, div=25.0, final=1e4, strategy="cos", three_phase=False):
    """torch's OneCycleLR: phases (last step, from, to) annealed by cosine or linearly."""
    low, high = max_lr / div, max_lr
    phases = [(pct * total - 1, low, high), (total - 1, high, low / final)]
    if three_phase:
        phases = [(pct * total - 1, low, high), (2 * pct * total - 2, high, low), (total - 1, low, low / final)]
    start = 0.0
    for i, (end, a, b) in enumerate(phases):
        if t <= end or i == len(phases) - 1:
            p = (t - start) / (end - start)
            return b + (a - b) / 2 * (1 + math.cos(math.pi * p)) if strategy == "cos" else a + (b - a) * p
        start = end


def restarts(lr0, t, T_0, T_mult, eta_min):
    """SGDR: cycles of T_0, T_0 * T_mult, T_0 * T_mult^2, ... steps."""
    T_i = T_0
    while t >= T_i:
        t, T_i = t - T_i, T_i * T_mult
    return eta_min + (lr0 - eta_min) * (1 + math.cos(math.pi * t / T_i)) / 2


CLOSED_FORMS = [
    ("lambda", lambda o: S.LambdaLR(o, lambda t: 0.9 ** t + 1 / (t + 1)),
     lambda lr0, t: lr0 * (0.9 ** t + 1 / (t + 1))),
    ("multistep", lambda o: S.MultiStepLR(o, milestones=[5, 2, 5, 9], gamma=0.5),  # 5 twice: two decays
     lambda lr0, t: lr0 * 0.5 ** sum(m <= t for m in (2, 5, 5, 9))),
    ("exponential", lambda o: S.ExponentialLR(o, gamma=0.8), lambda lr0, t: lr0 * 0.8 ** t),
    ("linear", lambda o: S.LinearLR(o, start_factor=0.25, end_factor=0.75, total_iters=6),
     lambda lr0, t: lr0 * (0.25 + 0.5 * min(t, 6) / 6)),
    ("linear-defaults", lambda o: S.LinearLR(o), lambda lr0, t: lr0 * (1 / 3 + (2 / 3) * min(t, 5) / 5)),
    ("restarts", lambda o: S.CosineAnnealingWarmRestarts(o, T_0=4, eta_min=0.001),
     lambda lr0, t: restarts(lr0, t, 4, 1, 0.001)),
    ("restarts-mult", lambda o: S.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2),
     lambda lr0, t: restarts(lr0, t, 2, 2, 0.0)),
    ("onecycle", lambda o: S.OneCycleLR(o, max_lr=list(BASE), total_steps=12),
     lambda lr0, t: one_cycle(lr0, t, 12)),
    ("onecycle-linear", lambda o: S.OneCycleLR(o, max_lr=list(BASE), epochs=3, steps_per_epoch=4, pct_start=0.25,
                                               anneal_strategy="linear", div_factor=10, final_div_factor=100),
     lambda lr0, t: one_cycle(lr0, t, 12, pct=0.25, div=10, final=100, strategy="linear")),
    ("onecycle-3phase", lambda o: S.OneCycleLR(o, max_lr=list(BASE), total_steps=12, three_phase=True),
     lambda lr0, t: one_cycle(lr0, t, 12, three_phase=True)),
    ("sequential", lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=0.5, total_iters=2),
                                                S.ExponentialLR(o, gamma=0.5), S.StepLR(o, step_size=2)],
                                            milestones=[3, 7]),
     lambda lr0, t: lr0 * (0.5 + 0.25 * min(t, 2) if t < 3 else 0.5 ** (t - 3) if t < 7 else 0.1 ** ((t - 7) // 2))),
]


@pytest.mark.parametrize("make,expected", [c[1:] for c in CLOSED_FORMS], ids=[c[0] for c in CLOSED_FORMS])
def test_torch_schedules_follow_their_formulas(make, expected):
    np.testing.assert_allclose(trace(make(make_optimizer()), 13), closed_form(expected, 13), rtol=1e-12, atol=0)


def test_hand_computed_values_of_the_new_schedules():
    """A few values worked out on paper, independent of the formulas above."""
    lrs = lambda make, n: trace(make(make_optimizer()), n)[:, 0].tolist()  # noqa: E731
    assert lrs(lambda o: S.MultiStepLR(o, [2, 4]), 6) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert lrs(lambda o: S.LinearLR(o, 0.5, 1.0, total_iters=2), 4) == pytest.approx([0.05, 0.075, 0.1, 0.1])
    assert lrs(lambda o: S.ExponentialLR(o, 0.5), 3) == pytest.approx([0.1, 0.05, 0.025])
    # T_0 = 2, T_mult = 2: cycles of 2 and 4 steps, restarting at t = 2 and t = 6
    assert lrs(lambda o: S.CosineAnnealingWarmRestarts(o, 2, 2), 7) == pytest.approx(
        [0.1, 0.05, 0.1, 0.1 * (1 + math.sqrt(0.5)) / 2, 0.05, 0.1 * (1 - math.sqrt(0.5)) / 2, 0.1])
    # max_lr 1, 10 steps: 0.04 -> 1 over steps 0..2 (half way at 1), then down to 4e-6 at step 9
    onecycle = lrs(lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=10), 10)
    assert onecycle[:3] == pytest.approx([0.04, 0.52, 1.0])
    assert onecycle[9] == pytest.approx(4e-6)
    assert onecycle[2] > onecycle[5] > onecycle[8] > onecycle[9]
    # linear, max_lr 1, div 4, 4 steps, pct_start 0.5: 0.25 -> 1 at step 1, then to 0.25e-4 at step 3
    assert lrs(lambda o: S.OneCycleLR(o, 1.0, 4, pct_start=0.5, anneal_strategy="linear", div_factor=4), 4) == \
        pytest.approx([0.25, 1.0, 0.5 + 0.125e-4, 0.25e-4])


def test_lambda_lr_takes_one_function_per_group():
    opt = make_optimizer()
    sched = S.LambdaLR(opt, [lambda t: t + 1, lambda t: 0.5 ** t])
    np.testing.assert_allclose(trace(sched, 4), [[0.1 * (t + 1), 0.03 * 0.5 ** t] for t in range(4)], rtol=1e-15)


def test_one_cycle_stops_at_the_end_of_its_cycle():
    opt = make_optimizer()
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=4)
    for _ in range(4):  # as torch, t may reach total_steps; one more step raises
        sched.step()
    before = (sched.last_epoch, sched.get_last_lr(), [g["lr"] for g in opt.param_groups])
    with pytest.raises(ValueError, match="OneCycleLR: tried to step 5 times; the cycle has total_steps=4"):
        sched.step()
    assert (sched.last_epoch, sched.get_last_lr(), [g["lr"] for g in opt.param_groups]) == before


def test_the_children_of_a_sequential_lr_follow_its_steps():
    opt = make_optimizer()
    a, b = S.Constant(opt), S.ExponentialLR(opt, gamma=0.5)
    sched = S.SequentialLR(opt, [a, b], milestones=[2])
    for _ in range(4):
        sched.step()
    assert (sched.last_epoch, a.last_epoch, b.last_epoch) == (4, 1, 2)
    assert sched.get_last_lr() == b.get_last_lr() == [lr * 0.25 for lr in BASE]


# -- initial_lr, last_epoch, get_last_lr -----------------------------------------------------------

def test_the_constructor_records_initial_lr_in_the_groups():
    opt = make_optimizer()
    S.ExponentialLR(opt, gamma=0.5)
    assert [g["initial_lr"] for g in opt.param_groups] == list(BASE)


def test_a_second_scheduler_starts_from_initial_lr():
    """After a finished cosine schedule (lr 0), a new schedule starts from the initial lr."""
    opt = make_optimizer()
    cosine = S.CosineAnnealingLR(opt, T_max=4)
    for _ in range(4):
        cosine.step()
    assert cosine.get_last_lr() == [0.0, 0.0]
    second = S.StepLR(opt, step_size=2, gamma=0.5)
    assert second.base_lrs == list(BASE)
    np.testing.assert_allclose(trace(second, 5), closed_form(lambda lr0, t: lr0 * 0.5 ** (t // 2), 5), rtol=1e-15)
    assert [g["initial_lr"] for g in opt.param_groups] == list(BASE)


def test_one_cycle_overwrites_initial_lr_and_plateau_leaves_it_alone():
    opt = make_optimizer()
    S.OneCycleLR(opt, max_lr=[1.0, 0.5], total_steps=10, div_factor=20)
    assert [g["initial_lr"] for g in opt.param_groups] == [0.05, 0.025]
    assert S.LinearLR(opt).base_lrs == [0.05, 0.025]  # later schedulers start where the cycle did
    fresh = make_optimizer()
    S.ReduceLROnPlateau(fresh)
    assert ["initial_lr" in g for g in fresh.param_groups] == [False, False]
    assert [g["lr"] for g in fresh.param_groups] == list(BASE)


def test_last_epoch_t_and_get_last_lr():
    opt = make_optimizer()
    sched = S.ExponentialLR(opt, gamma=0.5)
    assert sched.last_epoch == sched.t == 0
    for _ in range(3):
        sched.step()
    assert sched.last_epoch == sched.t == 3
    assert sched.get_last_lr() == [g["lr"] for g in opt.param_groups] == pytest.approx([lr / 8 for lr in BASE])
    sched.get_last_lr()[0] = 99.0  # a copy: changing it changes nothing
    assert sched.get_last_lr()[0] == pytest.approx(BASE[0] / 8)
    sched.t = 1  # an alias both ways; the lr follows at the next step
    assert sched.last_epoch == 1
    sched.step()
    assert sched.get_last_lr() == pytest.approx([lr / 4 for lr in BASE])
    assert repr(sched).startswith("ExponentialLR(t=2, lr=[")


# -- ReduceLROnPlateau --------------------------------------------------------------------------

def test_reduce_on_plateau_follows_torchs_rules():
    """A trace worked out by hand: patience 1 (the second bad step in a row reduces), cooldown 1,
    10% relative threshold, group 0 floored at min_lr 0.02."""
    opt = make_optimizer()
    sched = S.ReduceLROnPlateau(opt, factor=0.5, patience=1, threshold=0.1, cooldown=1, min_lr=[0.02, 0.0])
    lrs, counts = [], []
    for metric in [1.0, 0.95, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]:
        sched.step(metric)
        lrs.append(sched.get_last_lr())
        counts.append(sched.num_bad_epochs)
    # 0.95 is not below 1.0 * 0.9: one bad step; 0.8 is: the new best. Then 0.8 never improves:
    # reductions after steps 5, 8, 11, 14 (two bad steps, then one in cooldown not counted).
    r = lambda n0, n1: [max(0.1 * 0.5 ** n0, 0.02), 0.03 * 0.5 ** n1]  # noqa: E731
    expected = [r(0, 0)] * 4 + [r(1, 1)] * 3 + [r(2, 2)] * 3 + [r(3, 3)] * 3 + [r(3, 4)]
    assert lrs == [pytest.approx(e, rel=1e-15) for e in expected]
    assert counts == [0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0]
    assert sched.best == 0.8 and sched.last_epoch == 14


def test_reduce_on_plateau_max_mode_abs_threshold_and_eps():
    opt = make_optimizer()
    sched = S.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0, threshold=0.05, threshold_mode="abs")
    sched.step(1.0)
    sched.step(1.04)  # not above 1.0 + 0.05: bad, and patience 0 reduces at once
    assert sched.get_last_lr() == pytest.approx([0.05, 0.015])
    sched.step(1.06)  # above: the new best
    assert sched.best == 1.06 and sched.get_last_lr() == pytest.approx([0.05, 0.015])
    tiny = S.ReduceLROnPlateau(make_optimizer(), factor=0.5, patience=0, eps=0.02)
    tiny.step(1.0)
    tiny.step(2.0)  # group 0 would lose 0.05 > eps; group 1 only 0.015 < eps: skipped
    assert tiny.get_last_lr() == pytest.approx([0.05, 0.03])


# -- state dicts: resuming is bitwise -------------------------------------------------------------

PLATEAU_METRICS = [1.0, 0.9, 0.95, 0.95, 0.97, 0.5, 0.6, 0.6, 0.6, 0.6, 0.4, 0.45, 0.45, 0.45, 0.5, 0.5]

RESUMABLE = {
    "constant": lambda o: S.Constant(o),
    "step": lambda o: S.StepLR(o, 3, 0.5),
    "annealing": lambda o: S.Annealing(o, 4),
    "cosine": lambda o: S.CosineAnnealingLR(o, 10, 0.001),
    "warmup": lambda o: S.LinearWarmup(o, 4),
    "warmup-cosine": lambda o: S.LinearWarmup(o, 4, after=S.CosineAnnealingLR(o, 10, 0.001)),
    "lambda": lambda o: S.LambdaLR(o, [lambda t: 0.9 ** t, lambda t: 1 / (t + 1)]),
    "multistep": lambda o: S.MultiStepLR(o, [3, 5, 11], 0.3),
    "exponential": lambda o: S.ExponentialLR(o, 0.7),
    "linear": lambda o: S.LinearLR(o, 0.2, 0.9, 7),
    "onecycle": lambda o: S.OneCycleLR(o, [0.5, 0.2], total_steps=16, three_phase=True),
    "restarts": lambda o: S.CosineAnnealingWarmRestarts(o, 3, 2, 0.001),
    "sequential": lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.1, total_iters=3), S.OneCycleLR(o, 0.3, 6),
                                               S.CosineAnnealingWarmRestarts(o, 2)], milestones=[4, 10]),
    "plateau": lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=1, cooldown=1, min_lr=0.004),
}


def advance(sched, i):
    sched.step(PLATEAU_METRICS[i]) if isinstance(sched, S.ReduceLROnPlateau) else sched.step()


def adam():
    a, b = nn.Parameter(np.ones(3), dtype=np.float64), nn.Parameter(np.ones(2), dtype=np.float64)
    return optim.Adam([{"params": [a], "lr": BASE[0]}, {"params": [b], "lr": BASE[1]}])


@pytest.mark.parametrize("name", list(RESUMABLE))
@pytest.mark.parametrize("stop", [1, 6])
def test_resume_is_bitwise(name, stop):
    """Stopped at ``stop`` and resumed the way the trainer does it (a fresh optimizer and scheduler,
    then optimizer.load_state_dict and scheduler.load_state_dict of what went through a JSON
    checkpoint), the lrs are those of the uninterrupted run, bit for bit."""
    make, steps = RESUMABLE[name], len(PLATEAU_METRICS)
    full = make(adam())
    uninterrupted = []
    for i in range(steps):
        advance(full, i)
        uninterrupted.append(full.get_last_lr())

    opt = adam()
    first = make(opt)
    for i in range(stop):
        advance(first, i)
    saved_opt, saved = opt.state_dict(), json.loads(json.dumps(first.state_dict()))
    opt2 = adam()
    resumed = make(opt2)
    opt2.load_state_dict(saved_opt)
    resumed.load_state_dict(saved)
    assert resumed.last_epoch == stop and resumed.get_last_lr() == uninterrupted[stop - 1]
    rest = []
    for i in range(stop, steps):
        advance(resumed, i)
        rest.append(resumed.get_last_lr())
    assert rest == uninterrupted[stop:]
    assert [g["lr"] for g in opt2.param_groups] == uninterrupted[-1]


@pytest.mark.parametrize("name", ["constant", "step", "annealing", "cosine", "warmup", "warmup-cosine"])
def test_a_state_dict_of_the_old_format_still_loads(name):
    """Before this version every state dict was {"t", "base_lrs"} (warmup's without its after)."""
    sched = RESUMABLE[name](make_optimizer())
    sched.load_state_dict({"t": 6, "base_lrs": [0.2, 0.06]})
    reference = RESUMABLE[name](make_optimizer((0.2, 0.06)))
    for _ in range(6):
        reference.step()
    assert sched.get_last_lr() == reference.get_last_lr()
    sched.step()
    reference.step()
    assert sched.get_last_lr() == reference.get_last_lr()


def test_lambda_lr_saves_a_callable_objects_attributes_but_not_a_function():
    class Decay:
        def __init__(self):
            self.rate = 0.5

        def __call__(self, t):
            return self.rate ** t

    opt = make_optimizer()
    decay = Decay()
    sched = S.LambdaLR(opt, [decay, lambda t: 1.0])
    decay.rate = 0.25
    state = sched.state_dict()
    assert state["lr_lambdas"] == [{"rate": 0.25}, None]
    other = Decay()
    resumed = S.LambdaLR(make_optimizer(), [other, lambda t: 1.0])
    resumed.load_state_dict(dict(state, t=2))
    assert other.rate == 0.25 and resumed.get_last_lr() == pytest.approx([BASE[0] / 16, BASE[1]])


def test_an_optimizer_with_a_scheduler_round_trips_initial_lr():
    """The trainer's order: optimizer and scheduler built, then both states loaded."""
    opt = adam()
    sched = S.CosineAnnealingLR(opt, T_max=10)
    for _ in range(3):
        opt.step()
        sched.step()
    opt_state, sched_state = opt.state_dict(), sched.state_dict()
    assert [g["initial_lr"] for g in opt_state["param_groups"]] == list(BASE)
    opt2 = adam()
    sched2 = S.CosineAnnealingLR(opt2, T_max=10)
    for g in opt2.param_groups:
        g["lr"] = g["initial_lr"] = 7.0  # whatever the fresh run had, the loaded states win
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(sched_state)
    assert [g["initial_lr"] for g in opt2.param_groups] == list(BASE)
    assert sched2.get_last_lr() == sched.get_last_lr() == [g["lr"] for g in opt2.param_groups]


@pytest.mark.parametrize("make,state,error,message", [
    (RESUMABLE["onecycle"], {"t": 17, "base_lrs": [0.1, 0.1], "max_lrs": [1.0, 1.0]}, ValueError,
     "OneCycleLR.load_state_dict: t=17 is past the cycle's total_steps=16"),
    (RESUMABLE["onecycle"], {"t": 1, "base_lrs": [0.1, 0.1]}, ValueError,
     "OneCycleLR.load_state_dict: expected keys 't', 'base_lrs' and 'max_lrs', got"),
    (RESUMABLE["onecycle"], {"t": 1, "base_lrs": [0.1, 0.1], "max_lrs": [1.0]}, ValueError,
     "1 max_lrs in the state dict, 2 param groups"),
    (RESUMABLE["lambda"], {"t": 1, "base_lrs": [0.1, 0.1], "lr_lambdas": [None]}, ValueError,
     "lr_lambdas must be a list of 2 entries"),
    (RESUMABLE["lambda"], {"t": 1, "base_lrs": [0.1, 0.1], "lr_lambdas": [{"rate": 1}, None]}, ValueError,
     r"lr_lambdas\[0\] holds"),
    (RESUMABLE["sequential"], {"t": 1, "base_lrs": [0.1, 0.1], "schedulers": []}, ValueError,
     "schedulers must be a list of 3 state dicts"),
    (RESUMABLE["warmup"], {"t": 1, "base_lrs": [0.1, 0.1], "after": {"t": 0, "base_lrs": [0.1, 0.1]}}, ValueError,
     "has an 'after' schedule, this LinearWarmup has none"),
    (RESUMABLE["warmup"], {"t": 1, "base_lrs": [0.1, 0.1], "extra": 1}, ValueError,
     r"expected keys 't' and 'base_lrs' \(and optionally 'after'\)"),
    (RESUMABLE["plateau"], {"t": 1, "base_lrs": [0.1, 0.1]}, ValueError,
     "ReduceLROnPlateau.load_state_dict: expected keys 't', 'best', 'num_bad_epochs', 'cooldown_counter' and 'lrs'"),
    (RESUMABLE["plateau"], {"t": 1, "best": 0.5, "num_bad_epochs": -1, "cooldown_counter": 0, "lrs": [0.1, 0.1]},
     ValueError, "num_bad_epochs must be a non-negative integer"),
    (RESUMABLE["step"], {"t": 1, "base_lrs": ["0.1", 0.1]}, ValueError, "each of base_lrs must be a number"),
    (RESUMABLE["plateau"], {"t": 1, "best": None, "num_bad_epochs": 0, "cooldown_counter": 0, "lrs": [0.1, 0.1]},
     ValueError, "best must be a number, got None"),
    (RESUMABLE["sequential"], {"t": 1, "base_lrs": [0.1, 0.1], "schedulers": [
        {"t": 3, "base_lrs": [0.5, 0.5]}, {"t": 0, "base_lrs": [0.1, 0.1]}, {"t": 0, "base_lrs": [0.1, 0.1]}]},
     ValueError, "OneCycleLR.load_state_dict: expected keys"),
])
def test_load_state_dict_rejects_a_state_that_does_not_fit(make, state, error, message):
    sched = make(make_optimizer())
    for _ in range(5):
        sched.step(1.0) if isinstance(sched, S.ReduceLROnPlateau) else sched.step()
    before = sched.state_dict(), sched.get_last_lr(), [g["lr"] for g in sched.optimizer.param_groups]
    with pytest.raises(error, match=message):
        sched.load_state_dict(state)
    assert (sched.state_dict(), sched.get_last_lr(), [g["lr"] for g in sched.optimizer.param_groups]) == before


# -- bad arguments name the scheduler and the argument ---------------------------------------------

OTHER = make_optimizer()


@pytest.mark.parametrize("make,error,message", [
    (lambda o: S.StepLR(o, True), TypeError, "StepLR: step_size must be a number, got True"),
    (lambda o: S.LambdaLR(o, [lambda t: 1.0]), ValueError,
     r"LambdaLR: expected 2 lr_lambdas \(one per param group\), got 1"),
    (lambda o: S.LambdaLR(o, 0.5), TypeError, "LambdaLR: lr_lambda must be a function or a list of them, got float"),
    (lambda o: S.MultiStepLR(o, 3), TypeError, "MultiStepLR: milestones must be a list"),
    (lambda o: S.MultiStepLR(o, [2, -1]), ValueError, "MultiStepLR: each of milestones must be >= 0, got -1"),
    (lambda o: S.MultiStepLR(o, [2.5]), ValueError, "MultiStepLR: each of milestones must be an integer, got 2.5"),
    (lambda o: S.MultiStepLR(o, [2], gamma=0), ValueError, "MultiStepLR: gamma must be positive, got 0"),
    (lambda o: S.ExponentialLR(o, -0.5), ValueError, "ExponentialLR: gamma must be positive"),
    (lambda o: S.ExponentialLR(o, "0.9"), TypeError, "ExponentialLR: gamma must be a number, got '0.9'"),
    (lambda o: S.LinearLR(o, start_factor=0), ValueError, r"LinearLR: start_factor must be in \(0, 1\], got 0"),
    (lambda o: S.LinearLR(o, end_factor=1.5), ValueError, r"LinearLR: end_factor must be in \[0, 1\], got 1.5"),
    (lambda o: S.LinearLR(o, total_iters=0), ValueError, "LinearLR: total_iters must be positive"),
    (lambda o: S.OneCycleLR(o, 1.0), ValueError, "OneCycleLR: give total_steps, or epochs and steps_per_epoch"),
    (lambda o: S.OneCycleLR(o, 1.0, total_steps=0), ValueError, "OneCycleLR: total_steps must be positive"),
    (lambda o: S.OneCycleLR(o, 1.0, epochs=2, steps_per_epoch=1.5), ValueError,
     "OneCycleLR: steps_per_epoch must be an integer"),
    (lambda o: S.OneCycleLR(o, [1.0], 10), ValueError,
     r"OneCycleLR: max_lr: expected 2 values \(one per param group\), got 1"),
    (lambda o: S.OneCycleLR(o, [1.0, 0.0], 10), ValueError, "OneCycleLR: max_lr must be positive, got 0.0"),
    (lambda o: S.OneCycleLR(o, 1.0, 10, pct_start=1.5), ValueError, r"OneCycleLR: pct_start must be in \[0, 1\]"),
    (lambda o: S.OneCycleLR(o, 1.0, 10, anneal_strategy="exp"), ValueError,
     "OneCycleLR: anneal_strategy must be 'cos' or 'linear', got 'exp'"),
    (lambda o: S.OneCycleLR(o, 1.0, 10, cycle_momentum=True), ValueError,
     "OneCycleLR: cycle_momentum=True is not supported"),
    (lambda o: S.OneCycleLR(o, 1.0, 10, div_factor=0), ValueError, "OneCycleLR: div_factor must be positive"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, 0), ValueError, "CosineAnnealingWarmRestarts: T_0 must be positive"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, 2.5), ValueError,
     "CosineAnnealingWarmRestarts: T_0 must be an integer"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, 2, T_mult=0), ValueError,
     "CosineAnnealingWarmRestarts: T_mult must be positive"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, 2, eta_min=-1), ValueError,
     "CosineAnnealingWarmRestarts: eta_min must be >= 0"),
    (lambda o: S.ReduceLROnPlateau(o, mode="avg"), ValueError,
     "ReduceLROnPlateau: mode must be 'min' or 'max', got 'avg'"),
    (lambda o: S.ReduceLROnPlateau(o, threshold_mode="pct"), ValueError,
     "ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs'"),
    (lambda o: S.ReduceLROnPlateau(o, factor=1.0), ValueError,
     r"ReduceLROnPlateau: factor must be in \[0, 1\), got 1.0"),
    (lambda o: S.ReduceLROnPlateau(o, patience=-1), ValueError, "ReduceLROnPlateau: patience must be >= 0"),
    (lambda o: S.ReduceLROnPlateau(o, cooldown=0.5), ValueError, "ReduceLROnPlateau: cooldown must be an integer"),
    (lambda o: S.ReduceLROnPlateau(o, min_lr=[0.1]), ValueError, "ReduceLROnPlateau: min_lr: expected 2 values"),
    (lambda o: S.ReduceLROnPlateau(o, min_lr=-1), ValueError, "ReduceLROnPlateau: min_lr must be >= 0"),
    (lambda o: S.ReduceLROnPlateau(o, eps=-1), ValueError, "ReduceLROnPlateau: eps must be >= 0"),
    (lambda o: S.SequentialLR(o, [], []), ValueError, "SequentialLR: schedulers must be a non-empty list"),
    (lambda o: S.SequentialLR(o, [S.Constant(o), S.Constant(o)], []), ValueError,
     "SequentialLR: milestones must be a list of one fewer step counts than the 2 schedulers"),
    (lambda o: S.SequentialLR(o, [S.Constant(o)] * 3, [4, 2]), ValueError,
     r"SequentialLR: milestones must be increasing, got \[4, 2\]"),
    (lambda o: S.SequentialLR(o, [S.Constant(o), S.Constant(OTHER)], [2]), ValueError,
     r"SequentialLR: schedulers\[1\] must schedule the same optimizer"),
    (lambda o: S.SequentialLR(o, [S.Constant(o), S.ReduceLROnPlateau(o)], [2]), ValueError,
     r"SequentialLR: schedulers\[1\] cannot be a ReduceLROnPlateau"),
    (lambda o: S.SequentialLR(o, [S.Constant(o), "cosine"], [2]), TypeError,
     r"SequentialLR: schedulers\[1\] must be a scheduler"),
    (lambda o: S.LinearWarmup(o, 2, after=S.ReduceLROnPlateau(o)), ValueError,
     "LinearWarmup: `after` cannot be a ReduceLROnPlateau"),
    (lambda o: S.LinearWarmup(o, 2, after="cosine"), TypeError, "LinearWarmup: `after` must be a scheduler"),
    (lambda o: S.ExponentialLR([0.1], 0.5), TypeError, "ExponentialLR: expected an Optimizer, got list"),
    (lambda o: S.ReduceLROnPlateau(None), TypeError, "ReduceLROnPlateau: expected an Optimizer, got NoneType"),
])
def test_bad_arguments_name_the_scheduler_and_the_argument(make, error, message):
    with pytest.raises(error, match=message):
        make(make_optimizer())


def test_reduce_on_plateau_step_needs_a_number():
    sched = S.ReduceLROnPlateau(make_optimizer())
    with pytest.raises(TypeError, match="ReduceLROnPlateau.step: metrics must be a number, got 'low'"):
        sched.step("low")
    assert sched.last_epoch == 0


# -- the factory's new names ---------------------------------------------------------------------

@pytest.mark.parametrize("name,kwargs,cls", [
    ("multistep", {"milestones": [3, 6]}, S.MultiStepLR),
    ("exponential", {"gamma": 0.9}, S.ExponentialLR),
    ("linear", {"start_factor": 0.5, "total_iters": 3}, S.LinearLR),
    ("onecycle", {"max_lr": 0.5, "total_steps": 20}, S.OneCycleLR),
    ("cosine_restarts", {"T_0": 5, "T_mult": 2}, S.CosineAnnealingWarmRestarts),
    ("sequential", {"schedulers": [{"name": "linear"}, {"name": "cosine", "T_max": 5}], "milestones": [5]},
     S.SequentialLR),
])
def test_build_scheduler_new_names(name, kwargs, cls):
    assert type(S.build_scheduler(name, make_optimizer(), **kwargs)) is cls


def test_build_scheduler_sequential_from_config_dicts():
    opt = make_optimizer()
    sched = S.build_scheduler("sequential", opt, milestones=[3], schedulers=[
        {"name": "linear", "start_factor": 0.5, "total_iters": 2}, {"name": "exponential", "gamma": 0.5}])
    assert [type(s) for s in sched._schedulers] == [S.LinearLR, S.ExponentialLR]
    expected = closed_form(lambda lr0, t: lr0 * (0.5 + 0.25 * min(t, 2) if t < 3 else 0.5 ** (t - 3)), 6)
    np.testing.assert_allclose(trace(sched, 6), expected, rtol=1e-15)


@pytest.mark.parametrize("name,kwargs,message", [
    ("sequential", {"schedulers": [{"gamma": 0.5}], "milestones": []}, r"option 'schedulers\[0\]' needs a 'name'"),
    ("sequential", {"schedulers": [{"name": "plateau"}], "milestones": []}, "unknown schedule 'plateau'"),
    ("onecycle", {"total_steps": 5}, "schedule 'onecycle': missing option.* max_lr"),
    ("multistep", {"milestone": [2]}, "schedule 'multistep': unknown option.* milestone; expected milestones, gamma"),
    ("cosine_restarts", {"T_0": 0}, "T_0 must be positive"),
])
def test_build_scheduler_new_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        S.build_scheduler(name, make_optimizer(), **kwargs)
