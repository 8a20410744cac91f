"""nn.utils: gradient clipping by norm and by value, and parameters <-> one vector, on plain
parameters and on a flat buffer (the whole-buffer path), against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

import distbp as db
import distbp.functional as F
from distbp import nn, optim
from distbp.autodiff import ShapeError
from distbp.nn.utils import clip_grad_norm_, clip_grad_value_, parameters_to_vector, vector_to_parameters

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def params_with_grads(*grads, dtype=np.float32):
    out = []
    for g in grads:
        p = nn.Parameter(np.zeros(np.shape(g)), dtype=dtype)
        p.grad = np.array(g, dtype=dtype)
        out.append(p)
    return out


def flat_model():
    """An MLP whose parameters an optimizer packed, with gradients from one backward."""
    model = nn.MLP([3, 4, 2], rng=np.random.default_rng(0))
    opt = optim.SGD(model.parameters(), lr=0.1)
    x = db.tensor(np.random.default_rng(1).standard_normal((5, 3)))
    F.cross_entropy(model(x), [0, 1, 1, 0, 1]).backward()
    return model, opt


# -- clip_grad_norm_ --------------------------------------------------------------------------------
def test_clip_grad_norm_scales_by_max_norm_over_total_norm():
    p, q = params_with_grads([3.0, 4.0], [[12.0]])  # |g| = sqrt(9 + 16 + 144) = 13
    total = clip_grad_norm_([p, q], max_norm=6.5)
    assert isinstance(total, db.Tensor) and total.shape == () and total.dtype == np.float32
    assert float(total) == pytest.approx(13.0, rel=1e-7)
    coef = 6.5 / (13.0 + 1e-6)  # torch's formula
    np.testing.assert_allclose(p.grad, [3.0 * coef, 4.0 * coef], rtol=1e-6)
    np.testing.assert_allclose(q.grad, [[12.0 * coef]], rtol=1e-6)
    # Now at norm 6.5 (up to float32 rounding): a second clip at 6.5 changes at most the last bit.
    again = p.grad.copy()
    assert float(clip_grad_norm_([p, q], 6.5)) == pytest.approx(6.5, rel=1e-6)
    np.testing.assert_allclose(p.grad, again, rtol=3e-7)


def test_clip_grad_norm_below_max_norm_leaves_gradients_exactly():
    p, q = params_with_grads([3.0, 4.0], [12.0])
    assert float(clip_grad_norm_((p, q), 13.5)) == pytest.approx(13.0)
    np.testing.assert_array_equal(p.grad, [3.0, 4.0])
    np.testing.assert_array_equal(q.grad, [12.0])


@pytest.mark.parametrize("norm_type, expected", [
    (1.0, 3 + 4 + 12),
    (math.inf, 12.0),
    ("inf", 12.0),
    (3.0, (27 + 64 + 1728) ** (1 / 3)),
])
def test_clip_grad_norm_other_norms(norm_type, expected):
    p, q = params_with_grads([3.0, -4.0], [-12.0])
    total = clip_grad_norm_([p, q], 1.0, norm_type=norm_type)
    assert float(total) == pytest.approx(expected, rel=1e-6)
    coef = 1.0 / (expected + 1e-6)
    np.testing.assert_allclose(np.concatenate([p.grad, q.grad]), np.array([3.0, -4.0, -12.0]) * coef, rtol=1e-6)


def test_clip_grad_norm_skips_missing_gradients_and_accepts_one_parameter():
    p, q = params_with_grads([6.0, 8.0], [1.0])
    q.grad = None
    assert float(clip_grad_norm_([p, q], 5.0)) == pytest.approx(10.0)
    assert q.grad is None
    np.testing.assert_allclose(p.grad, [3.0, 4.0], rtol=1e-6)
    assert float(clip_grad_norm_(p, 1.0)) == pytest.approx(5.0, rel=1e-6)  # a single Parameter
    np.testing.assert_allclose(p.grad, [0.6, 0.8], rtol=1e-5)
    empty = clip_grad_norm_([q], 1.0)
    assert float(empty) == 0.0 and q.grad is None
    assert float(clip_grad_norm_([], 1.0)) == 0.0
    with pytest.raises(ValueError, match="norm_type"):
        clip_grad_norm_(p, 1.0, norm_type=0)


def test_clip_grad_norm_float64_gradients_give_a_float64_norm():
    (p,) = params_with_grads([1.0, 2.0, 2.0], dtype=np.float64)
    total = clip_grad_norm_([p], 1.5)
    assert total.dtype == np.float64 and total.item() == pytest.approx(3.0, rel=1e-15)
    np.testing.assert_allclose(p.grad, np.array([1.0, 2.0, 2.0]) * 1.5 / (3.0 + 1e-6), rtol=1e-15)


def test_clip_grad_norm_non_finite():
    with np.errstate(invalid="ignore"):
        p, q = params_with_grads([np.inf, 1.0], [2.0])
        with pytest.raises(RuntimeError, match="non-finite"):
            clip_grad_norm_([p, q], 1.0, error_if_nonfinite=True)
        np.testing.assert_array_equal(q.grad, [2.0])  # the error comes before any scaling
        # As torch: the norm is inf, the coefficient 0, so inf * 0 = nan and the rest 0.
        assert math.isinf(float(clip_grad_norm_([p, q], 1.0)))
        assert np.isnan(p.grad[0]) and p.grad[1] == 0.0 and q.grad[0] == 0.0
        r, = params_with_grads([np.nan, 1.0])
        assert math.isnan(float(clip_grad_norm_([r], 1.0)))
        assert np.isnan(r.grad).all()  # a NaN coefficient scales too, as torch's clamp keeps NaN


def test_clip_grad_norm_on_a_flat_buffer_uses_the_whole_gradient_buffer():
    model, opt = flat_model()
    params = list(model.parameters())
    from distbp.nn import utils
    grads = utils._grads(params)
    assert len(grads) == 1 and grads[0] is opt.flat.grad  # one array, however many layers
    assert len(utils._grads(params[::-1])) == 1  # any order
    assert len(utils._grads(params[:-1])) == len(params) - 1  # part of the buffer: one by one

    expected = [p.grad.astype(np.float64) for p in params]
    total = math.sqrt(sum(float((g ** 2).sum()) for g in expected))
    max_norm = total / 4
    got = clip_grad_norm_(model.parameters(), max_norm)
    assert float(got) == pytest.approx(total, rel=1e-6)
    for p, g in zip(params, expected):
        np.testing.assert_allclose(p.grad, g * max_norm / (total + 1e-6), rtol=1e-5)
        assert np.shares_memory(p.grad, opt.flat.grad)
    assert float(clip_grad_norm_(params, 1e9)) == pytest.approx(max_norm, rel=1e-5)
    opt.step()  # the optimizer steps with the clipped gradients


def test_clip_grad_norm_on_a_flat_buffer_with_a_missing_gradient_keeps_it_none():
    model, opt = flat_model()
    params = list(model.parameters())
    params[-1].grad = None  # as if the output bias got no gradient
    rest = [p.grad.astype(np.float64) for p in params[:-1]]
    total = math.sqrt(sum(float((g ** 2).sum()) for g in rest))
    assert float(clip_grad_norm_(params, total / 2)) == pytest.approx(total, rel=1e-6)
    assert params[-1].grad is None  # skipped, as torch, not turned into zeros
    for p, g in zip(params[:-1], rest):
        np.testing.assert_allclose(p.grad, g * (total / 2) / (total + 1e-6), rtol=1e-5)


def test_clip_grad_norm_against_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s).astype(np.float32) for s in ((3, 4), (4,), (4, 2))]
    for norm_type in (2.0, 1.0, math.inf, 3.0):
        ours = params_with_grads(*grads)
        theirs = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
        for t, g in zip(theirs, grads):
            t.grad = torch.tensor(g)
        a = clip_grad_norm_(ours, 0.5, norm_type=norm_type)
        b = torch.nn.utils.clip_grad_norm_(theirs, 0.5, norm_type=norm_type)
        assert float(a) == pytest.approx(float(b), rel=1e-5)
        for p, t in zip(ours, theirs):
            np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-5, atol=1e-7)


# -- clip_grad_value_ -----------------------------------------------------------------------------
def test_clip_grad_value_clamps_in_place():
    p, q = params_with_grads([-3.0, 0.5, 2.0], [[-0.2, 7.0]])
    q2 = nn.Parameter(np.ones(1))  # no gradient: skipped
    assert clip_grad_value_([p, q, q2], 1.0) is None
    np.testing.assert_array_equal(p.grad, [-1.0, 0.5, 1.0])
    np.testing.assert_allclose(q.grad, [[-0.2, 1.0]])
    assert q2.grad is None
    clip_grad_value_(p, 0.25)
    np.testing.assert_array_equal(p.grad, [-0.25, 0.25, 0.25])


def test_clip_grad_value_on_a_flat_buffer():
    model, opt = flat_model()
    expected = [np.clip(p.grad, -0.05, 0.05) for p in model.parameters()]
    clip_grad_value_(model.parameters(), 0.05)
    assert np.abs(opt.flat.grad).max() <= np.float32(0.05)
    for p, g in zip(model.parameters(), expected):
        np.testing.assert_array_equal(p.grad, g)


# -- parameters_to_vector / vector_to_parameters ----------------------------------------------------
def test_parameters_to_vector_concatenates_and_is_differentiable():
    a = nn.Parameter(np.array([[1.0, 2.0], [3.0, 4.0]]))
    b = nn.Parameter(np.array([5.0]))
    vec = parameters_to_vector([a, b])
    assert isinstance(vec, db.Tensor)
    np.testing.assert_array_equal(vec.data, [1.0, 2.0, 3.0, 4.0, 5.0])
    vec.data[0] = 100.0
    assert a.data[0, 0] == 1.0  # a new array, as torch.cat
    (parameters_to_vector([a, b]) * db.tensor([1.0, 2.0, 3.0, 4.0, 5.0])).sum().backward()
    np.testing.assert_array_equal(a.grad, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(b.grad, [5.0])
    np.testing.assert_array_equal(parameters_to_vector(b).data, [5.0])  # a single Parameter


def test_vector_to_parameters_copies_pieces_in_place():
    a = nn.Parameter(np.zeros((2, 2)))
    b = nn.Parameter(np.zeros(1))
    vec = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    vector_to_parameters(vec, [a, b])
    np.testing.assert_array_equal(a.data, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(b.data, [5.0])
    assert a.dtype == np.float32 and not np.shares_memory(a.data, vec)
    vector_to_parameters(db.tensor([0.0, 0.0, 0.0, 0.0, 9.0]), (a, b))
    assert b.data[0] == 9.0 and a.data.sum() == 0.0
    with pytest.raises(ShapeError, match="5 elements, the parameters 4"):
        vector_to_parameters(vec, [a])
    with pytest.raises(ShapeError, match="1-D"):
        vector_to_parameters(vec.reshape(5, 1), [a, b])
    with pytest.raises(TypeError, match="list"):
        vector_to_parameters([1.0] * 5, [a, b])


def test_vector_round_trip_through_a_flat_buffer_keeps_the_views():
    model, opt = flat_model()
    vec = parameters_to_vector(model.parameters())
    np.testing.assert_array_equal(vec.data, opt.flat.data)  # named order is the buffer's order
    vector_to_parameters(np.arange(vec.shape[0], dtype=np.float64), model.parameters())
    np.testing.assert_array_equal(opt.flat.data, np.arange(opt.flat.numel))
    assert all(np.shares_memory(p.data, opt.flat.data) for p in model.parameters())
    w = model[0].weight
    np.testing.assert_array_equal(w.data, np.arange(12).reshape(3, 4))
    params = list(model.parameters())[::-1]  # another order: piece by piece
    vector_to_parameters(np.arange(opt.flat.numel, dtype=np.float32), params)
    np.testing.assert_array_equal(params[0].data, [0.0, 1.0])  # the output bias comes first now
    assert all(np.shares_memory(p.data, opt.flat.data) for p in model.parameters())
