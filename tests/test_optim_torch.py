"""Optimizers behave as torch.optim where a torch user would notice: frozen parameters are
skipped, param groups can be added, a second optimizer can hold part of the model,
``opt.state[p]`` is per parameter, and a model with its optimizer deep-copies and pickles.
Expected values come from torch's documented update formulas, computed by hand in float64."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest

from distbp import functional as F
from distbp import nn, optim


def _params(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [nn.Parameter(rng.standard_normal(s), dtype=np.float64) for s in shapes]


def _grads(shapes, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]


def test_frozen_parameter_is_skipped_by_sgd_with_momentum_and_decay():
    shapes = [(3,), (2, 2)]
    a, b = _params(*shapes)
    b.requires_grad = False
    b0 = b.data.copy()
    opt = optim.SGD([a, b], lr=0.1, momentum=0.9, weight_decay=0.01)
    grads = _grads(shapes, 6)
    ref_a, buf = a.data.copy(), None
    ref_b, buf_b = b0.copy(), None
    for step, (ga, gb) in enumerate(grads):
        if step == 3:
            b.requires_grad = True  # unfrozen: its momentum starts now, from its own first step
        opt.zero_grad()
        a.grad = ga
        if b.requires_grad:
            b.grad = gb
        opt.step()
        g = ga + 0.01 * ref_a
        buf = g if buf is None else 0.9 * buf + g
        ref_a = ref_a - 0.1 * buf
        if step >= 3:
            g = gb + 0.01 * ref_b
            buf_b = g if buf_b is None else 0.9 * buf_b + g
            ref_b = ref_b - 0.1 * buf_b
        else:
            np.testing.assert_array_equal(b.data, b0)  # no weight decay, no momentum while frozen
    np.testing.assert_allclose(a.data, ref_a, rtol=1e-13)
    np.testing.assert_allclose(b.data, ref_b, rtol=1e-13)
    assert opt.state[a]["step"] == 6 and opt.state[b]["step"] == 3


def test_adam_bias_correction_counts_each_parameters_own_steps():
    shapes = [(4,), (3,)]
    a, b = _params(*shapes, seed=2)
    opt = optim.Adam([a, b], lr=0.01, betas=(0.8, 0.9), eps=1e-8)
    grads = _grads(shapes, 5, seed=3)
    ref = {id(a): [a.data.copy(), 0.0, 0.0, 0], id(b): [b.data.copy(), 0.0, 0.0, 0]}
    for step, gs in enumerate(grads):
        opt.zero_grad()
        for p, g in zip((a, b), gs):
            if p is b and step < 2:
                continue  # b gets no gradient in the first two steps
            p.grad = g
            r = ref[id(p)]
            r[3] += 1
            r[1] = 0.8 * r[1] + 0.2 * g
            r[2] = 0.9 * r[2] + 0.1 * g * g
            r[0] = r[0] - 0.01 * (r[1] / (1 - 0.8 ** r[3])) / (np.sqrt(r[2] / (1 - 0.9 ** r[3])) + 1e-8)
        opt.step()
    for p in (a, b):
        np.testing.assert_allclose(p.data, ref[id(p)][0], rtol=1e-12)
        np.testing.assert_allclose(opt.state[p]["exp_avg"], ref[id(p)][1], rtol=1e-12)
    assert opt.state[b]["step"] == 3 and opt.state["step"] == 5


def test_skipping_survives_a_state_dict_round_trip():
    shapes = [(4,), (3,)]
    grads = _grads(shapes, 6, seed=4)

    def run(stop_at=None):
        a, b = _params(*shapes, seed=5)
        opt = optim.Adam([a, b], lr=0.01)
        for step, gs in enumerate(grads):
            if step == stop_at:
                saved = opt.state_dict()
                a2, b2 = _params(*shapes, seed=5)
                a2.data, b2.data = a.data.copy(), b.data.copy()
                a, b, opt = a2, b2, optim.Adam([a2, b2], lr=0.01)
                opt.load_state_dict(saved)
            opt.zero_grad()
            a.grad = gs[0]
            if step != 1:
                b.grad = gs[1]
            opt.step()
        return a.data, b.data

    whole, resumed = run(), run(stop_at=3)
    for x, y in zip(whole, resumed):
        np.testing.assert_array_equal(x, y)


def test_opt_state_of_a_parameter_is_a_view_of_the_flat_state():
    a, b = _params((2, 3), (3,))
    opt = optim.Adam([a, b])
    a.grad, b.grad = np.ones((2, 3)), np.ones(3)
    opt.step()
    st = opt.state[b]
    assert st["step"] == 1 and st["exp_avg"].shape == (3,) and st["exp_avg_sq"].shape == (3,)
    np.testing.assert_allclose(st["exp_avg"], 0.1)
    st["exp_avg"][...] = 7.0  # writes the flat state
    np.testing.assert_array_equal(opt.state["exp_avg"][6:], 7.0)
    assert a in opt.state and "exp_avg" in opt.state
    with pytest.raises(KeyError, match="not in the optimizer"):
        opt.state[nn.Parameter(np.ones(2))]


def test_add_param_group_and_a_group_with_its_own_lr():
    a, b = _params((3,), (2,))
    opt = optim.SGD([a], lr=0.1, momentum=0.5)
    a.grad = np.ones(3)
    opt.step()
    a_after = a.data.copy()
    opt.add_param_group({"params": [b], "lr": 0.01})
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["momentum"] == 0.5
    b0 = b.data.copy()
    opt.zero_grad()
    a.grad, b.grad = np.ones(3), np.full(2, 2.0)
    opt.step()
    np.testing.assert_allclose(a.data, a_after - 0.1 * (0.5 * 1 + 1), rtol=1e-14)  # momentum kept
    np.testing.assert_allclose(b.data, b0 - 0.01 * 2.0, rtol=1e-14)  # its first step: buffer = g
    assert opt.state[b]["step"] == 1 and opt.state[a]["step"] == 2
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})


def test_a_second_optimizer_over_part_of_the_model_and_then_all_of_it():
    model = nn.MLP([4, 6, 3], rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)
    y = np.arange(8) % 3
    whole = optim.SGD(model.parameters(), lr=0.1)
    head = optim.SGD(model[2].parameters(), lr=0.5)  # the same buffer, a subset of it
    assert head.flat is whole.flat
    body_before = model[0].weight.data.copy()
    head_before = model[2].weight.data.copy()
    head.zero_grad()
    F.cross_entropy(model(x), y).backward()
    g = model[2].weight.grad.copy()
    head.step()
    np.testing.assert_array_equal(model[0].weight.data, body_before)  # not its parameters
    np.testing.assert_allclose(model[2].weight.data, head_before - 0.5 * g, rtol=1e-6)

    # Freeze, then unfreeze: an optimizer over the head first, then one over the whole model.
    model = nn.MLP([4, 6, 3], rng=np.random.default_rng(0))
    first = optim.SGD(model[2].parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        first.zero_grad()
        F.cross_entropy(model(x), y).backward()
        first.step()
    buffer = first.state[model[2].weight]["momentum_buffer"].copy()
    second = optim.Adam(model.parameters(), lr=0.01)
    assert first.flat.moved_to is second.flat
    first.zero_grad()
    F.cross_entropy(model(x), y).backward()
    g = model[2].weight.grad.copy()
    w = model[2].weight.data.copy()
    first.step()  # follows its parameters into the new buffer, with their momentum
    assert first.flat is second.flat
    np.testing.assert_allclose(model[2].weight.data, w - 0.1 * (0.9 * buffer + g), rtol=1e-5)
    second.step()
    assert second.state["step"] == 1


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_trained_model_and_its_optimizer_copy_and_go_on_identically(how):
    model = nn.MLP([4, 8, 3], rng=np.random.default_rng(0))
    opt = optim.Adam(model.parameters(), lr=0.01)
    x = np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)
    y = np.arange(16) % 3

    def train(m, o, steps):
        for _ in range(steps):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()

    train(model, opt, 3)
    ema = copy.deepcopy(model)  # the usual EMA / keep-the-best snapshot
    assert all(p._flat is None for p in ema.parameters())
    m2, o2 = copy.deepcopy((model, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((model, opt)))
    assert o2.flat.params[0] is next(m2.parameters()) and o2.flat is not opt.flat
    train(model, opt, 2)
    train(m2, o2, 2)
    np.testing.assert_array_equal(o2.flat.data, opt.flat.data)
    assert not np.array_equal(ema.state_dict()["0.weight"], model.state_dict()["0.weight"])


def test_torch_agrees_on_frozen_and_unfrozen_parameters_where_installed():
    torch = pytest.importorskip("torch")
    shapes = [(3,), (2,)]
    ours = _params(*shapes, seed=6)
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    opt = optim.AdamW(ours, lr=0.05, weight_decay=0.1)
    topt = torch.optim.AdamW(theirs, lr=0.05, weight_decay=0.1)
    for step, gs in enumerate(_grads(shapes, 6, seed=7)):
        frozen = step in (1, 2)
        ours[1].requires_grad = not frozen
        theirs[1].requires_grad_(not frozen)
        opt.zero_grad()
        topt.zero_grad()
        for k, (p, tp, g) in enumerate(zip(ours, theirs, gs)):
            if not (k == 1 and frozen):
                p.grad, tp.grad = g, torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12)
    assert math.isclose(opt.state[ours[1]]["step"], float(topt.state[theirs[1]]["step"]))


def test_a_state_saved_before_any_scheduler_loads_into_an_optimizer_with_one():
    """Schedulers record initial_lr in the param groups, as torch: checkpoints written before
    that (or without a scheduler) still load, and the other way round."""
    (a,) = _params((3,))
    plain = optim.Adam([a], lr=0.1)
    saved = plain.state_dict()
    (b,) = _params((3,))
    scheduled = optim.Adam([b], lr=0.1)
    optim.lr_scheduler.StepLR(scheduled, step_size=2)
    scheduled.load_state_dict(saved)
    assert scheduled.param_groups[0]["initial_lr"] == 0.1
    plain.load_state_dict(scheduled.state_dict())
    with pytest.raises(ValueError, match=r"missing \['eps'\]"):
        bad = scheduled.state_dict()
        del bad["param_groups"][0]["eps"]
        plain.load_state_dict(bad)
