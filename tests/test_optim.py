"""Optimizers: the flat-buffer kernels against per-parameter numpy transcriptions of the
formulas documented by torch.optim, param groups, the blocked step (bitwise equal to one pass
over the whole buffer), the number of numpy calls per step (independent of the number of
layers), state_dict round trips and validation."""

from __future__ import annotations

import copy
import io
import sys
import tracemalloc

import numpy as np
import pytest

import distbp as db
import distbp.functional as F
from distbp import nn, optim

SHAPES = [(3, 4), (4,), (4, 2), (2,)]
STEPS = 6
# Gradient scale per step: a large first gradient then smaller ones, so that v falls below
# its running maximum (amsgrad matters) and the moments do not settle into a fixed ratio.
SCALES = [3.0, 0.2, 1.0, 0.1, 2.0, 0.5]


# ---- independent per-parameter references, one line per formula line of the torch docs ----

def _signed_decayed(p, g, weight_decay=0.0, maximize=False):
    g = -g if maximize else g
    return g + weight_decay * p if weight_decay else g


def ref_sgd(p, g, st, t, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False):
    g = _signed_decayed(p, g, weight_decay, maximize)
    if momentum:
        st["b"] = g.copy() if t == 1 else momentum * st["b"] + (1 - dampening) * g
        g = g + momentum * st["b"] if nesterov else st["b"]
    return p - lr * g


def ref_adagrad(p, g, st, t, lr=0.01, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                eps=1e-10, maximize=False):
    g = _signed_decayed(p, g, weight_decay, maximize)
    clr = lr / (1 + (t - 1) * lr_decay)
    st["sum"] = st.get("sum", np.full_like(p, initial_accumulator_value)) + g * g
    return p - clr * g / (np.sqrt(st["sum"]) + eps)


def ref_rmsprop(p, g, st, t, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                maximize=False):
    g = _signed_decayed(p, g, weight_decay, maximize)
    st["v"] = alpha * st.get("v", 0.0) + (1 - alpha) * g * g
    if centered:
        st["g_avg"] = alpha * st.get("g_avg", 0.0) + (1 - alpha) * g
        avg = np.sqrt(st["v"] - st["g_avg"] ** 2) + eps
    else:
        avg = np.sqrt(st["v"]) + eps
    if momentum > 0:
        st["b"] = momentum * st.get("b", 0.0) + g / avg
        return p - lr * st["b"]
    return p - lr * g / avg


def ref_adam(p, g, st, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
             maximize=False, decoupled=False):
    b1, b2 = betas
    if decoupled:
        g = -g if maximize else g
        p = p * (1 - lr * weight_decay)
    else:
        g = _signed_decayed(p, g, weight_decay, maximize)
    st["m"] = b1 * st.get("m", 0.0) + (1 - b1) * g
    st["v"] = b2 * st.get("v", 0.0) + (1 - b2) * g * g
    m_hat = st["m"] / (1 - b1 ** t)
    if amsgrad:
        st["v_max"] = np.maximum(st.get("v_max", 0.0), st["v"])
        v_hat = st["v_max"] / (1 - b2 ** t)
    else:
        v_hat = st["v"] / (1 - b2 ** t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps)


def ref_adamw(p, g, st, t, weight_decay=0.01, **kw):
    return ref_adam(p, g, st, t, weight_decay=weight_decay, decoupled=True, **kw)


REFERENCE = {optim.SGD: ref_sgd, optim.AdaGrad: ref_adagrad, optim.RMSProp: ref_rmsprop,
             optim.Adam: ref_adam, optim.AdamW: ref_adamw}

CASES = [
    (optim.SGD, dict(lr=0.1)),
    (optim.SGD, dict(lr=0.1, momentum=0.9)),
    (optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.3)),
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (optim.SGD, dict(lr=0.1, momentum=0.5, weight_decay=0.05)),
    (optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1, maximize=True)),
    (optim.AdaGrad, dict()),
    (optim.AdaGrad, dict(lr=0.1, lr_decay=0.2)),
    (optim.AdaGrad, dict(lr=0.1, weight_decay=0.1, initial_accumulator_value=0.3, eps=1e-3)),
    (optim.RMSProp, dict()),
    (optim.RMSProp, dict(alpha=0.9, centered=True)),
    (optim.RMSProp, dict(momentum=0.8)),
    (optim.RMSProp, dict(lr=0.02, centered=True, momentum=0.5, weight_decay=0.1, eps=1e-4)),
    (optim.Adam, dict()),
    (optim.Adam, dict(lr=0.01, weight_decay=0.1)),
    (optim.Adam, dict(lr=0.01, amsgrad=True)),
    (optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-4, maximize=True)),
    (optim.AdamW, dict()),
    (optim.AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
]
IDS = [f"{cls.__name__}-{','.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}" for cls, kw in CASES]


def initial_values():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s) for s in SHAPES]


def gradients():
    rng = np.random.default_rng(1)
    return [[scale * rng.standard_normal(s) for s in SHAPES] for scale in SCALES[:STEPS]]


def run_flat(cls, kw, dtype=np.float64, groups=None):
    """Our optimizer on raw Parameters; ``groups`` lists (param indices, overrides)."""
    params = [nn.Parameter(v, dtype=dtype) for v in initial_values()]
    spec = params if groups is None else [{"params": [params[i] for i in idx], **o} for idx, o in groups]
    opt = cls(spec, **kw)
    for grads in gradients():
        opt.zero_grad()
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    return [p.data.copy() for p in params]


def run_reference(cls, kw, groups=None):
    """The per-parameter reference in float64, each parameter with its group's values."""
    per_param = [dict(kw) for _ in SHAPES]
    for idx, overrides in groups or []:
        for i in idx:
            per_param[i].update(overrides)
    params, states = initial_values(), [{} for _ in SHAPES]
    for t, grads in enumerate(gradients(), start=1):
        params = [REFERENCE[cls](p, g, st, t, **h) for p, g, st, h in zip(params, grads, states, per_param)]
    return params


@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_matches_documented_formula_float64(cls, kw):
    for got, want in zip(run_flat(cls, kw), run_reference(cls, kw)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_float32_stays_float32_and_close(cls, kw):
    got = run_flat(cls, kw, dtype=np.float32)
    for g, want in zip(got, run_reference(cls, kw)):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", sorted(REFERENCE, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_every_option_changes_the_result(cls):
    """Guards the oracle: if an option were ignored, two cases would give the same values."""
    results = [np.concatenate([a.ravel() for a in run_flat(c, kw)]) for c, kw in CASES if c is cls]
    for i in range(len(results)):
        for j in range(i):
            assert not np.allclose(results[i], results[j], rtol=1e-6), (i, j)


GROUP_CASES = [
    (optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.5), dict(lr=0.05, momentum=0.0, weight_decay=0.1)),
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True), dict(momentum=0.5, weight_decay=0.2)),
    (optim.AdaGrad, dict(lr=0.1), dict(lr_decay=0.05, initial_accumulator_value=0.3, eps=1e-3)),
    (optim.RMSProp, dict(momentum=0.5, centered=True), dict(alpha=0.9, momentum=0.0, eps=1e-4, lr=0.03)),
    (optim.Adam, dict(lr=0.01, weight_decay=0.1), dict(betas=(0.8, 0.99), lr=0.02, weight_decay=0.0)),
    (optim.AdamW, dict(lr=0.01), dict(weight_decay=0.0, lr=0.003)),
]


@pytest.mark.parametrize("cls,kw,overrides", GROUP_CASES, ids=[f"{c.__name__}-{sorted(o)}" for c, _, o in GROUP_CASES])
def test_param_groups_use_their_own_hyperparameters(cls, kw, overrides):
    # The groups interleave the flat order: the per-group vectors must follow the offsets.
    groups = [([0, 3], {}), ([2, 1], overrides)]
    for got, want in zip(run_flat(cls, kw, groups=groups), run_reference(cls, kw, groups=groups)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_a_scheduled_lr_reaches_the_per_group_vector():
    """lr differs between groups and changes every step: the cached vector must follow."""
    params = [nn.Parameter(np.ones(3), dtype=np.float64), nn.Parameter(np.ones(2), dtype=np.float64)]
    opt = optim.SGD([{"params": [params[0]], "lr": 0.1}, {"params": [params[1]], "lr": 0.2}], lr=1.0)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        for p in params:
            p.grad = np.ones(p.shape)
        opt.step()
        sched.step()
    # p = 1 - lr0 * (1 + 1/2 + 1/4)
    np.testing.assert_allclose(params[0].data, 1 - 0.1 * 1.75, rtol=1e-15)
    np.testing.assert_allclose(params[1].data, 1 - 0.2 * 1.75, rtol=1e-15)


def test_boolean_options_must_agree_across_groups():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(3))
    with pytest.raises(ValueError, match="amsgrad differs between param groups"):
        optim.Adam([{"params": [a]}, {"params": [b], "amsgrad": True}])
    opt = optim.RMSProp([{"params": [a]}, {"params": [b]}])
    opt.param_groups[1]["centered"] = True
    with pytest.raises(ValueError, match="centered"):
        opt.step()


def test_real_backward_with_linear_layers():
    """Gradients from a real backward through nn.Linear, against the reference on the same
    gradients (read back from the parameters before each step)."""
    rng = np.random.default_rng(3)
    model = nn.Sequential(nn.Linear(3, 4, rng=rng), nn.Tanh(), nn.Linear(4, 2, rng=rng))
    params = list(model.parameters())
    x, y = rng.standard_normal((8, 3)), rng.integers(0, 2, 8)
    opt = optim.Adam(model.parameters(), lr=0.05, weight_decay=0.01, amsgrad=True)
    ref = [p.data.astype(np.float64) for p in params]
    states = [{} for _ in params]
    for t in range(1, 6):
        opt.zero_grad()
        F.cross_entropy(model(db.tensor(x)), y).backward()
        grads = [p.grad.astype(np.float64) for p in params]
        opt.step()
        ref = [ref_adam(r, g, st, t, lr=0.05, weight_decay=0.01, amsgrad=True)
               for r, g, st in zip(ref, grads, states)]
        for p, r in zip(params, ref):
            np.testing.assert_allclose(p.data, r, rtol=2e-5, atol=2e-6)


def test_parameter_without_gradient_is_skipped_as_torch_skips_it():
    """torch skips a parameter whose grad is None: no weight decay, no momentum, no step."""
    used, unused = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(3))
    opt = optim.SGD([used, unused], lr=0.5, weight_decay=0.1)
    used.grad = np.full(2, 2.0)
    opt.step()
    np.testing.assert_allclose(used.data, 1 - 0.5 * (2.0 + 0.1), rtol=1e-6)
    np.testing.assert_array_equal(unused.data, np.ones(3))
    assert unused.grad is None  # still None, as torch: not turned into zeros


# ---- split_decay ---------------------------------------------------------------------------

def test_split_decay_leaves_biases_undecayed_and_keeps_named_order():
    model = nn.Sequential(nn.Linear(3, 4, rng=np.random.default_rng(0)), nn.ReLU(),
                          nn.Linear(4, 2, rng=np.random.default_rng(1)))
    named = list(model.named_parameters())
    before = {n: p.data.copy() for n, p in named}
    groups = optim.split_decay(model.named_parameters(), 0.1)
    assert [[p.ndim for p in g["params"]] for g in groups] == [[2, 2], [1, 1]]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    opt = optim.SGD(groups, lr=0.5)
    assert opt.flat.params == [p for _, p in named]  # the checkpoint order, not the group order
    assert [g["params"] for g in opt.state_dict()["param_groups"]] == [[0, 2], [1, 3]]
    for _, p in named:
        p.grad = np.zeros(p.shape)
    opt.step()
    for n, p in named:
        factor = (1 - 0.5 * 0.1) if p.ndim == 2 else 1.0  # zero gradient: only decay acts
        np.testing.assert_allclose(p.data, before[n] * factor, rtol=1e-6)
    np.testing.assert_array_equal(opt.flat.data, np.concatenate([p.data.ravel() for _, p in named]))


# ---- invariant 4: constant numpy calls, untouched gradients, views -------------------------

def _count_calls(fn):
    """C calls (numpy functions, array methods, builtins) and Python calls made while fn runs,
    and Python lines executed in distbp/optim: none may grow with the number of layers.
    Ufunc calls are invisible to 'c_call' on Python 3.11; the line count covers them."""
    counts = {"c_call": 0, "call": 0, "line": 0}

    def profile(frame, event, arg):
        if event in counts:
            counts[event] += 1

    def trace(frame, event, arg):
        if "distbp/optim" not in frame.f_code.co_filename.replace("\\", "/"):
            return None
        if event == "line":
            counts["line"] += 1
        return trace

    sys.setprofile(profile)
    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(None)
        sys.setprofile(None)
    return counts


def _calls_per_step(cls, kw, n_layers, split):
    model = nn.MLP([6] + [5] * (n_layers - 1) + [3], rng=np.random.default_rng(0))
    opt = cls(optim.split_decay(model.named_parameters(), 0.01) if split else model.parameters(), **kw)
    grads = [np.full(p.shape, 0.1) for p in model.parameters()]

    def train_step():
        opt.zero_grad()
        for p, g in zip(model.parameters(), grads):
            p.grad = g

    for _ in range(2):  # past the first step, which is special for SGD's momentum
        train_step()
        opt.step()
    train_step()
    return _count_calls(opt.step), _count_calls(opt.zero_grad)


@pytest.mark.parametrize("split", [False, True], ids=["one-group", "split_decay"])
@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_constant_number_of_calls_per_step(cls, kw, split):
    # Both models (53 and 633 parameters) fit one block of the default block_size.
    small, large = _calls_per_step(cls, kw, 2, split), _calls_per_step(cls, kw, 20, split)
    assert small == large
    assert small[0]["line"] > 5  # the counter did see the kernel


# Equal parameter counts (1,020) in 2 parameters or in 20: the same 4 blocks of 300 elements.
FEW_LAYERS = [(50, 20), (20,)]
MANY_LAYERS = [(10, 10), (2,)] * 10


def _calls_per_blocked_step(cls, kw, shapes, split, block_size):
    rng = np.random.default_rng(0)
    params = [nn.Parameter(rng.standard_normal(s)) for s in shapes]
    spec = ([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}] if split else params)
    opt = cls(spec, **kw)
    opt.block_size = block_size
    grads = [np.full(p.shape, 0.1) for p in params]

    def train_step():
        opt.zero_grad()
        for p, g in zip(params, grads):
            p.grad = g

    for _ in range(2):
        train_step()
        opt.step()
    train_step()
    return _count_calls(opt.step)


@pytest.mark.parametrize("split", [False, True], ids=["one-group", "split_decay"])
@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_calls_per_step_depend_on_blocks_not_layers(cls, kw, split):
    assert sum(map(np.prod, FEW_LAYERS)) == sum(map(np.prod, MANY_LAYERS)) == 1020
    few = _calls_per_blocked_step(cls, kw, FEW_LAYERS, split, 300)
    many = _calls_per_blocked_step(cls, kw, MANY_LAYERS, split, 300)
    assert few == many
    one_block = _calls_per_blocked_step(cls, kw, MANY_LAYERS, split, None)
    assert few["line"] > one_block["line"]  # four blocks did run the kernel four times


# ---- blocking: bitwise the same as one pass over the whole buffer ---------------------------

# 4,490 float32 parameters in two param groups that interleave the flat order, so per-group
# vectors are sliced per block and blocks straddle parameter and group boundaries.
BLOCK_SHAPES = [(40, 50), (50,), (50, 40), (40,), (17, 23), (9,)]
BLOCK_GROUPS = [[0, 3, 4], [1, 2, 5]]
BLOCK_CASES = ([(cls, kw, dict(lr=0.003, weight_decay=0.05)) for cls, kw in CASES]
               + [(cls, kw, overrides) for cls, kw, overrides in GROUP_CASES])
BLOCK_IDS = ([f"{i}-groups-lr-wd" for i in IDS]
             + [f"{c.__name__}-groups-{sorted(o)}" for c, _, o in GROUP_CASES])


def _run_blocked(cls, kw, overrides, block_size, steps=5):
    rng = np.random.default_rng(7)
    params = [nn.Parameter(rng.standard_normal(s), dtype=np.float32) for s in BLOCK_SHAPES]
    opt = cls([{"params": [params[i] for i in BLOCK_GROUPS[0]]},
               {"params": [params[i] for i in BLOCK_GROUPS[1]], **overrides}], **kw)
    opt.block_size = block_size
    flat_grad_calls = []
    flat_grad = opt.flat.flat_grad
    opt.flat.flat_grad = lambda: flat_grad_calls.append(1) or flat_grad()
    k = next(k for k, q in enumerate(opt.flat.params) if q is params[4])
    unused = slice(opt.flat.offsets[k], opt.flat.offsets[k + 1])
    for step in range(steps):
        opt.zero_grad()
        for i, p in enumerate(params):
            if not (step == 2 and i == 4):  # one parameter without a gradient: skipped
                p.grad = SCALES[step] * rng.standard_normal(p.shape)
        expected = opt.flat.grad.copy()
        before = opt.flat.data[unused].copy()
        opt.step()
        if step == 2:
            np.testing.assert_array_equal(opt.flat.data[unused], before)
        np.testing.assert_array_equal(opt.flat.grad, expected)  # read, never written by the kernel
    # Once per step, not once per block; not at all in the step that skips a parameter.
    assert len(flat_grad_calls) == steps - (steps > 2)
    return opt


@pytest.mark.parametrize("block_size", [1000, 4096])
@pytest.mark.parametrize("cls,kw,overrides", BLOCK_CASES, ids=BLOCK_IDS)
def test_blocked_step_is_bitwise_the_unblocked_step(cls, kw, overrides, block_size):
    whole = _run_blocked(cls, kw, overrides, None)
    blocked = _run_blocked(cls, kw, overrides, block_size)
    assert whole.flat.numel == 4490  # 5 blocks of 1000 (the last 490) or 2 of 4096 (the last 394)
    assert blocked.flat.data.dtype == np.float32
    assert not np.array_equal(blocked.flat.data, _run_blocked(cls, kw, overrides, None, steps=0).flat.data)
    np.testing.assert_array_equal(blocked.flat.data.view(np.uint32), whole.flat.data.view(np.uint32))
    assert blocked.state.keys() == whole.state.keys()
    assert blocked.state["step"] == whole.state["step"] == 5
    for name, value in whole.state.items():
        if name != "step":
            np.testing.assert_array_equal(blocked.state[name].view(np.uint32), value.view(np.uint32))


def test_block_scratch_is_one_block_and_scalars_are_computed_once_per_step():
    class Counting(optim.Adam):
        block_size = 1000
        evaluated = 0

        def _hp_value(self, key, fn):
            Counting.evaluated += 1
            return super()._hp_value(key, fn)

    rng = np.random.default_rng(0)
    params = [nn.Parameter(rng.standard_normal(s)) for s in BLOCK_SHAPES]
    opt = Counting([{"params": [params[i] for i in BLOCK_GROUPS[0]]},
                    {"params": [params[i] for i in BLOCK_GROUPS[1]], "lr": 0.01, "weight_decay": 0.1}],
                   amsgrad=True)
    for p in params:
        p.grad = np.ones(p.shape)
    opt.step()
    assert opt._tmp.size == opt._grad_buf.size == 1000  # scratch of one block, not flat-sized
    Counting.evaluated = 0
    opt.step()
    per_step = Counting.evaluated
    opt.block_size = 100  # 45 blocks instead of 5: each hyperparameter is still evaluated once
    Counting.evaluated = 0
    opt.step()
    assert Counting.evaluated == per_step == 8
    plain = optim.Adam([nn.Parameter(np.ones((30, 7)))])
    assert plain._tmp.size == 210  # smaller than one default block
    for p in plain.flat.params:
        p.grad = np.ones(p.shape)
    plain.step()
    assert plain._grad_buf.size == 0  # no weight decay, no maximize: the gradient is read in place


@pytest.mark.parametrize("bad", [-1, 1.5, "64K", True])
def test_invalid_block_size_raises(bad):
    params = [nn.Parameter(v) for v in initial_values()]
    opt = optim.SGD(params, lr=0.1)
    opt.block_size = bad
    with pytest.raises(ValueError, match="block_size must be a non-negative int or None"):
        opt.step()


def test_block_size_zero_is_one_block():
    results = []
    for block_size in (0, None, 7):
        params = [nn.Parameter(v) for v in initial_values()]
        opt = optim.Adam(params, lr=0.1)
        opt.block_size = block_size
        for grads in gradients():
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
        results.append(opt.flat.data.copy())
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


@pytest.mark.parametrize("block_size", [None, 1000], ids=["one-block", "blocks"])
@pytest.mark.parametrize("split", [False, True], ids=["one-group", "split_decay"])
@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_step_allocates_no_flat_sized_temporaries(cls, kw, split, block_size):
    """Scratch arrays come from the constructor; a float64 upcast or an expression that
    allocates would show up as a peak of at least one buffer's size."""
    model = nn.MLP([50, 200, 10], rng=np.random.default_rng(0))
    opt = cls(optim.split_decay(model.named_parameters(), 0.01) if split else model.parameters(), **kw)
    opt.block_size = block_size
    for p in model.parameters():
        p.grad = np.full(p.shape, 0.1)
    opt.step()  # builds the cached per-group vectors
    tracemalloc.start()
    try:
        opt.step()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < opt.flat.data.nbytes // 4, (peak, opt.flat.data.nbytes)


@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_step_leaves_gradients_untouched_and_params_as_views(cls, kw):
    params = [nn.Parameter(v) for v in initial_values()]
    opt = cls(params, **{**kw, "weight_decay": 0.1})
    for grads in gradients()[:3]:
        for p, g in zip(params, grads):
            p.grad = g
        before = opt.flat.grad.copy()
        opt.step()
        np.testing.assert_array_equal(opt.flat.grad, before)
        for p, g in zip(params, grads):
            np.testing.assert_array_equal(p.grad, g.astype(np.float32))
    for p in params:
        assert np.shares_memory(p.data, opt.flat.data)
    assert opt.flat.data.dtype == np.float32


def test_optimizer_reuses_an_existing_flat_buffer():
    params = [nn.Parameter(v) for v in initial_values()]
    flat = nn.flatten_parameters(params)
    opt = optim.Adam(list(reversed(params)))
    assert opt.flat is flat
    assert opt.state_dict()["param_groups"][0]["params"] == [3, 2, 1, 0]


# ---- state_dict ----------------------------------------------------------------------------

def _make(cls, kw):
    model = nn.MLP([5, 7, 3], rng=np.random.default_rng(1))
    return model, cls(model.parameters(), **kw)


def _train(model, opt, steps, start):
    rng = np.random.default_rng(100 + start)
    for _ in range(steps):
        x, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
        opt.zero_grad()
        F.cross_entropy(model(db.tensor(x)), y).backward()
        opt.step()


@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_state_dict_round_trip_resumes_bitwise(cls, kw):
    model_a, opt_a = _make(cls, kw)
    _train(model_a, opt_a, 3, start=0)
    saved_model, saved_opt = model_a.state_dict(), copy.deepcopy(opt_a.state_dict())
    _train(model_a, opt_a, 3, start=3)

    model_b, opt_b = _make(cls, kw)
    model_b.load_state_dict(saved_model)
    opt_b.load_state_dict(saved_opt)
    assert opt_b.state["step"] == 3
    _train(model_b, opt_b, 3, start=3)
    np.testing.assert_array_equal(opt_b.flat.data, opt_a.flat.data)
    for name in opt_a.state:
        np.testing.assert_array_equal(opt_b.state[name], opt_a.state[name])


def test_state_dict_holds_copies_with_torch_names():
    model, opt = _make(optim.Adam, dict(amsgrad=True))
    _train(model, opt, 2, start=0)
    sd = opt.state_dict()
    assert set(sd["state"]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"]["step"] == 2 and isinstance(sd["state"]["step"], int)
    assert sd["param_groups"] == [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                                   "amsgrad": True, "maximize": False, "params": [0, 1, 2, 3]}]
    sd["state"]["exp_avg"][:] = 7.0
    assert not np.any(opt.state["exp_avg"] == 7.0)


def test_state_arrays_survive_npz_without_pickle():
    model, opt = _make(optim.RMSProp, dict(momentum=0.9, centered=True))
    _train(model, opt, 3, start=0)
    buf = io.BytesIO()
    np.savez(buf, **opt.state_arrays())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        loaded = dict(z)
    _, fresh = _make(optim.RMSProp, dict(momentum=0.9, centered=True))
    fresh.load_state_arrays(loaded)
    assert fresh.state["step"] == 3
    for name in ("square_avg", "grad_avg", "momentum_buffer"):
        np.testing.assert_array_equal(fresh.state[name], opt.state[name])


def _saved(cls=optim.Adam, kw=None):
    model, opt = _make(cls, kw or {})
    _train(model, opt, 1, start=0)
    return opt.state_dict()


@pytest.mark.parametrize("corrupt,message", [
    (lambda sd: sd["state"].__setitem__("exp_avg", np.zeros(5)), r"'exp_avg' has shape \(5,\).*\(66,\)"),
    (lambda sd: sd["state"].__setitem__("sum", sd["state"].pop("exp_avg")),
     r"missing \['exp_avg'\], unexpected \['sum'\]"),
    (lambda sd: sd["state"].__setitem__("step", 1.5), "'step' must be a non-negative integer"),
    (lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])), "2 param groups in the state dict, 1 in"),
    (lambda sd: sd["param_groups"][0].__setitem__("params", [0, 1, 2]),
     r"holds parameters \[0, 1, 2\].*\[0, 1, 2, 3\]"),
    (lambda sd: sd["param_groups"][0].pop("eps"), r"missing \['eps'\]"),
    (lambda sd: sd["param_groups"][0].__setitem__("lr", -1.0), "Invalid learning rate: -1.0"),
    (lambda sd: sd.pop("state"), "expected a dict with keys 'state' and 'param_groups'"),
], ids=["array-size", "state-name", "step", "group-count", "group-params", "group-key", "group-value", "keys"])
def test_load_state_dict_rejects_mismatches(corrupt, message):
    sd = _saved()
    corrupt(sd)
    model, opt = _make(optim.Adam, {})
    before = opt.flat.data.copy(), {k: np.copy(v) for k, v in opt.state.items()}
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(sd)
    np.testing.assert_array_equal(opt.flat.data, before[0])
    assert opt.state["step"] == 0 and not opt.state["exp_avg"].any()


def test_load_state_dict_from_another_optimizer_names_the_state():
    with pytest.raises(ValueError, match=r"missing \['exp_avg', 'exp_avg_sq'\], unexpected \['momentum_buffer'\]"):
        sd = _saved(optim.SGD, dict(lr=0.1, momentum=0.9))
        sd["param_groups"] = _saved()["param_groups"]
        _make(optim.Adam, {})[1].load_state_dict(sd)


def test_load_state_dict_restores_group_hyperparameters():
    sd = _saved(optim.SGD, dict(lr=0.1, momentum=0.9))
    sd["param_groups"][0]["lr"] = 0.025
    _, opt = _make(optim.SGD, dict(lr=0.1, momentum=0.9))
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.025
    assert len(opt.param_groups[0]["params"]) == 4


# ---- validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("make,message", [
    (lambda ps: optim.SGD(ps, lr=-1), "Invalid learning rate: -1"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5), "Invalid momentum value: -0.5"),
    (lambda ps: optim.SGD(ps, lr=0.1, weight_decay=-1e-3), "Invalid weight_decay value: -0.001"),
    (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov"),
    (lambda ps: optim.AdaGrad(ps, lr_decay=-1), "Invalid lr_decay value: -1"),
    (lambda ps: optim.AdaGrad(ps, initial_accumulator_value=-1), "Invalid initial_accumulator_value value: -1"),
    (lambda ps: optim.AdaGrad(ps, eps=-1), "Invalid epsilon value: -1"),
    (lambda ps: optim.RMSProp(ps, alpha=-0.1), "Invalid alpha value: -0.1"),
    (lambda ps: optim.RMSProp(ps, momentum=-1), "Invalid momentum value: -1"),
    (lambda ps: optim.Adam(ps, lr=-1e-3), "Invalid learning rate: -0.001"),
    (lambda ps: optim.Adam(ps, betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
    (lambda ps: optim.Adam(ps, betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
    (lambda ps: optim.AdamW(ps, eps=-1e-8), "Invalid epsilon value: -1e-08"),
    (lambda ps: optim.Adam([{"params": ps[:1]}, {"params": ps[1:], "weight_decay": -1}]),
     "Invalid weight_decay value: -1"),
    (lambda ps: optim.Adam(ps, lr="1e-3"), "Invalid learning rate: '1e-3' is not a number"),
    (lambda ps: optim.RMSProp(ps, eps=float("nan")), "Invalid epsilon value: nan"),
    (lambda ps: optim.Adam([]), "empty parameter list"),
    (lambda ps: optim.Adam(ps + ps[:1]), "listed twice"),
    (lambda ps: optim.Adam([{"lr": 0.1}]), "no 'params' key"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_invalid_hyperparameters_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make([nn.Parameter(v) for v in initial_values()])


def test_wrong_params_argument_is_a_type_error():
    model = nn.Linear(2, 3)
    with pytest.raises(TypeError, match="pass model.parameters()"):
        optim.SGD(model, lr=0.1)
    with pytest.raises(TypeError, match="ordered collection"):
        optim.SGD(set(model.parameters()), lr=0.1)


def test_aliases_and_exports():
    assert optim.Adagrad is optim.AdaGrad and optim.RMSprop is optim.RMSProp
    assert issubclass(optim.AdamW, optim.Adam) and issubclass(optim.Adam, optim.Optimizer)
    assert set(optim.__all__) >= {"Optimizer", "SGD", "AdaGrad", "Adagrad", "RMSProp", "RMSprop", "Adam",
                                  "AdamW", "split_decay", "lr_scheduler"}


# ---- optional: torch itself ----------------------------------------------------------------

@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_matches_torch_optim(cls, kw):
    torch = pytest.importorskip("torch")
    torch_cls = {optim.SGD: torch.optim.SGD, optim.AdaGrad: torch.optim.Adagrad,
                 optim.RMSProp: torch.optim.RMSprop, optim.Adam: torch.optim.Adam,
                 optim.AdamW: torch.optim.AdamW}[cls]
    for dtype, tdtype, rtol, atol in [(np.float64, torch.float64, 1e-10, 1e-12),
                                      (np.float32, torch.float32, 2e-6, 1e-7)]:
        params = [torch.tensor(v, dtype=tdtype, requires_grad=True) for v in initial_values()]
        opt = torch_cls(params, **kw)
        for grads in gradients():
            for p, g in zip(params, grads):
                p.grad = torch.tensor(g, dtype=tdtype)
            opt.step()
        for got, want in zip(run_flat(cls, kw, dtype=dtype), params):
            np.testing.assert_allclose(got, want.detach().numpy(), rtol=rtol, atol=atol)
