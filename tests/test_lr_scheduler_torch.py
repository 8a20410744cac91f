"""The schedules against torch.optim.lr_scheduler itself, where torch is installed (not in CI):
the same constructor arguments, the same lr sequences. torch's recursive (chainable) schedules
agree up to float rounding; its closed-form ones bit for bit. (Most of this file's time is
torch's own start-up: its first optimizer takes over a second to build.)"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from distbp import nn, optim
from distbp.optim import lr_scheduler as S

torch = pytest.importorskip("torch")
T = torch.optim.lr_scheduler

BASE = (0.1, 0.03)
STEPS = 40
METRICS = [1.0, 0.9, 0.95, 0.95, 0.97, 0.5, 0.6, 0.6, 0.6, 0.6, 0.4, 0.45, 0.45, 0.45, 0.5, 0.5] * 3


def ours():
    a, b = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))
    return optim.SGD([{"params": [a], "lr": BASE[0]}, {"params": [b], "lr": BASE[1]}], lr=1.0)


def theirs():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    return torch.optim.SGD([{"params": [a], "lr": BASE[0]}, {"params": [b], "lr": BASE[1]}], lr=1.0)


def run(lib, make, opt, steps=STEPS):
    """The lrs of ``steps`` steps (the callers silence torch's warnings)."""
    sched = make(lib, opt)
    out = [list(sched.get_last_lr())]
    for i in range(1, steps):
        if lib is T:
            opt.step()  # no gradients: nothing moves, but torch checks the order of the calls
        sched.step(METRICS[i]) if isinstance(sched, (S.ReduceLROnPlateau, T.ReduceLROnPlateau)) else sched.step()
        out.append(list(sched.get_last_lr()))
    return np.array(out, dtype=np.float64)


# (name, make(lib, optimizer), exact): exact where torch computes the same closed form.
CASES = [
    ("step", lambda L, o: L.StepLR(o, step_size=3, gamma=0.5), False),
    ("multistep", lambda L, o: L.MultiStepLR(o, milestones=[3, 8, 8, 20], gamma=0.3), False),
    ("exponential", lambda L, o: L.ExponentialLR(o, gamma=0.9), False),
    ("linear", lambda L, o: L.LinearLR(o, start_factor=0.2, end_factor=0.9, total_iters=12), False),
    ("linear-defaults", lambda L, o: L.LinearLR(o), False),
    ("cosine", lambda L, o: L.CosineAnnealingLR(o, T_max=STEPS - 1, eta_min=0.001), False),
    ("lambda", lambda L, o: L.LambdaLR(o, [lambda t: 0.95 ** t, lambda t: 1 / (1 + t)]), True),
    ("restarts", lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=5, eta_min=0.002), True),
    ("restarts-mult", lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2), True),
    ("onecycle", lambda L, o: L.OneCycleLR(o, max_lr=[0.5, 0.2], total_steps=STEPS, cycle_momentum=False),
     True),
    ("onecycle-linear-3", lambda L, o: L.OneCycleLR(o, max_lr=0.4, epochs=4, steps_per_epoch=10, pct_start=0.25,
                                                    anneal_strategy="linear", cycle_momentum=False, div_factor=8.0,
                                                    final_div_factor=50.0, three_phase=True), True),
    ("plateau", lambda L, o: L.ReduceLROnPlateau(o, factor=0.5, patience=1, cooldown=2, min_lr=[0.01, 0.0],
                                                 threshold=0.05), True),
    ("plateau-max-abs", lambda L, o: L.ReduceLROnPlateau(o, mode="max", patience=0, threshold=0.01,
                                                         threshold_mode="abs", eps=1e-3), True),
    ("sequential", lambda L, o: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.1, total_iters=4),
                                                   L.ExponentialLR(o, gamma=0.8),
                                                   L.CosineAnnealingWarmRestarts(o, T_0=6)], milestones=[5, 15]), False),
]


@pytest.mark.parametrize("make,exact", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_same_lrs_as_torch(make, exact):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = run(T, make, theirs())
    got = run(S, make, ours())
    if exact:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("second", [lambda L, o: L.LambdaLR(o, lambda t: 0.5 ** (t // 2)),
                                    lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=3)], ids=["lambda", "restarts"])
def test_a_second_scheduler_starts_from_initial_lr_as_in_torch(second):
    """torch's closed-form schedules start from initial_lr after a finished cosine, as all of
    these do. (torch's chainable ones, StepLR say, start from the current lr, 0 here: a
    deviation, see the module's docstring.)"""
    def after_cosine(lib, opt):
        first = lib.CosineAnnealingLR(opt, T_max=4)
        for _ in range(4):
            if lib is T:
                opt.step()
            first.step()
        return second(lib, opt)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = run(T, after_cosine, theirs(), steps=8)
    assert expected[0].tolist() == list(BASE)
    np.testing.assert_array_equal(run(S, after_cosine, ours(), steps=8), expected)
