"""distbp.functional: hand-computed loss values, numerical stability at ±1000, dropout, and
the errors bad targets and ids give."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import distbp as db
import distbp.functional as F
from distbp.autodiff import ShapeError

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def leaf(values, dtype=np.float64):
    return db.tensor(values, requires_grad=True, dtype=dtype)


# -- documented formulas on small hand-computed examples ----------------------------------------
def test_cross_entropy_value():
    logits = leaf([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    loss = F.cross_entropy(logits, [2, 0])
    lse = math.log(math.e + math.e ** 2 + math.e ** 3)
    expected = ((lse - 3.0) + math.log(3.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    softmax = np.exp(logits.data - np.log(np.exp(logits.data).sum(1, keepdims=True)))
    np.testing.assert_allclose(logits.grad, (softmax - np.eye(3)[[2, 0]]) / 2, rtol=1e-12)


def test_multi_margin_matches_torch_documentation_example():
    # torch.nn.MultiMarginLoss docs: x = [[0.1, 0.2, 0.4, 0.8]], y = [3]
    # -> 1/4 * ((1 - (0.8 - 0.1)) + (1 - (0.8 - 0.2)) + (1 - (0.8 - 0.4))) = 0.325
    loss = F.multi_margin(leaf([[0.1, 0.2, 0.4, 0.8]]), [3])
    assert loss.item() == pytest.approx(0.325, rel=1e-12)


def test_multi_margin_gradient_by_hand():
    x = leaf([[0.0, 0.5, 3.0], [1.0, 1.0, 1.0]])
    F.multi_margin(x, [0, 2], margin=1.0).backward()
    # sample 0: terms for i=1 (1.5 > 0) active, i=2 (4 > 0) active -> d/dx0 = -2, dx1 = dx2 = 1
    # sample 1: both terms 1 > 0 active -> dx2 = -2, dx0 = dx1 = 1; each / C=3, then / N=2
    np.testing.assert_allclose(x.grad, np.array([[-2, 1, 1], [1, 1, -2]]) / 6, rtol=1e-12)


def test_max_margin_value_and_gradient():
    s, c = leaf([2.0, 0.0, 1.0]), leaf([0.5, 0.5, 3.0])
    loss = F.max_margin(s, c, margin=1.0)
    # max(0, 1 + 0.5 - 2) = 0, max(0, 1 + 0.5 - 0) = 1.5, max(0, 1 + 3 - 1) = 3
    assert loss.item() == pytest.approx(4.5 / 3, rel=1e-12)
    loss.backward()
    np.testing.assert_allclose(s.grad, [0, -1 / 3, -1 / 3])
    np.testing.assert_allclose(c.grad, [0, 1 / 3, 1 / 3])


def test_mse_loss_value():
    pred = leaf([[1.0, 2.0], [3.0, 4.0]])
    target = np.array([[1.0, 0.0], [0.0, 4.0]])
    assert F.mse_loss(pred, target).item() == pytest.approx((4 + 9) / 4)
    assert F.mse_loss(pred, target, reduction="sum").item() == pytest.approx(13.0)
    np.testing.assert_array_equal(F.mse_loss(pred, target, reduction="none").data, [[0, 4], [9, 0]])


def test_softsign_and_leaky_relu_values():
    x = db.tensor([-3.0, 0.0, 1.0], dtype=np.float64)
    np.testing.assert_allclose(F.softsign(x).data, [-0.75, 0.0, 0.5])
    np.testing.assert_allclose(F.leaky_relu(x, slope=0.1).data, [-0.3, 0.0, 1.0])


def test_float_targets_with_integer_values_are_accepted():
    logits = db.tensor(np.random.default_rng(0).standard_normal((3, 4)), dtype=np.float64)
    assert F.cross_entropy(logits, np.array([0.0, 3.0, 1.0])).item() == F.cross_entropy(logits, [0, 3, 1]).item()


# -- stability at ±1000 ---------------------------------------------------------------------------
EXTREME = [[1000.0, -1000.0, 0.0], [1000.0, 1000.0, 1000.0], [-1000.0, -1000.0, -1000.0], [-1000.0, 0.0, 1000.0]]


@pytest.fixture
def strict_floats():
    # Overflow, invalid values and division by zero raise; underflow to 0 (exp(-2000)) is the
    # right answer, so it is allowed, as numpy's default does.
    with np.errstate(all="raise", under="ignore"), warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_softmax_and_softmax_at_1000(strict_floats, dtype):
    x = leaf(EXTREME, dtype)
    out = F.log_softmax(x)
    log3 = math.log(3.0)
    expected = [[0.0, -2000.0, -1000.0], [-log3] * 3, [-log3] * 3, [-2000.0, -1000.0, 0.0]]
    np.testing.assert_allclose(out.data, expected, rtol=1e-6)
    (out * np.arange(12.0).reshape(4, 3)).sum().backward()
    assert np.all(np.isfinite(x.grad))

    y = leaf(EXTREME, dtype)
    p = F.softmax(y, axis=1)
    np.testing.assert_allclose(p.data, [[1, 0, 0], [1 / 3] * 3, [1 / 3] * 3, [0, 0, 1]], rtol=1e-6)
    (p * np.arange(12.0).reshape(4, 3)).sum().backward()
    assert np.all(np.isfinite(y.grad))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_at_1000(strict_floats, dtype):
    x = leaf(EXTREME, dtype)
    loss = F.cross_entropy(x, [1, 0, 2, 2])
    assert loss.item() == pytest.approx((2000.0 + 2 * math.log(3.0) + 0.0) / 4, rel=1e-6)
    loss.backward()
    expected = (np.array([[1, 0, 0], [1 / 3] * 3, [1 / 3] * 3, [0, 0, 1]]) - np.eye(3)[[1, 0, 2, 2]]) / 4
    np.testing.assert_allclose(x.grad, expected, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_at_1000(strict_floats, dtype):
    x = leaf([-1000.0, -50.0, 0.0, 50.0, 1000.0], dtype)
    s = F.sigmoid(x)
    np.testing.assert_allclose(s.data, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)
    s.sum().backward()
    np.testing.assert_allclose(x.grad, [0.0, 0.0, 0.25, 0.0, 0.0], atol=1e-7)


# -- dropout: p is the drop probability, kept units scaled by 1 / (1 - p) ---------------------------
def test_dropout_train_scales_kept_units():
    x = db.tensor(np.full(200_000, 3.0), requires_grad=True)
    p = 0.25
    y = F.dropout(x, p, training=True, rng=np.random.default_rng(7))
    kept = y.data != 0
    np.testing.assert_allclose(y.data[kept], 3.0 / (1 - p), rtol=1e-6)
    assert abs(1 - kept.mean() - p) < 0.005
    assert abs(y.data.mean() - 3.0) < 0.02  # the expectation is unchanged
    y.sum().backward()
    np.testing.assert_allclose(x.grad, kept / (1 - p), rtol=1e-6)


def test_dropout_identity_cases():
    x = db.tensor(np.random.default_rng(0).standard_normal((4, 5)))
    np.testing.assert_array_equal(F.dropout(x, 0.5, training=False).data, x.data)
    np.testing.assert_array_equal(F.dropout(x, 0.0, training=True).data, x.data)
    np.testing.assert_array_equal(F.dropout(x, 1.0, training=True).data, np.zeros((4, 5)))


def test_dropout_mask_follows_the_seed():
    x = db.tensor(np.ones(50))
    db.manual_seed(3)
    first = F.dropout(x, 0.5).data
    db.manual_seed(3)
    np.testing.assert_array_equal(F.dropout(x, 0.5).data, first)
    assert not np.array_equal(F.dropout(x, 0.5).data, first)


def test_dropout_of_batch_slices_masks_as_the_whole_batch():
    # rows=(start, total): a worker's slice of a global batch gets the slice of the global mask.
    x = db.tensor(np.random.default_rng(0).standard_normal((7, 5)))
    whole = F.dropout(x, 0.5, rng=np.random.default_rng(3)).data
    parts = [F.dropout(x[a:b], 0.5, rng=np.random.default_rng(3), rows=(a, 7)).data for a, b in ((0, 3), (3, 7))]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_dropout_rejects_bad_p():
    with pytest.raises(ValueError, match="1.5"):
        F.dropout(db.tensor([1.0]), 1.5)


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", [F.cross_entropy, F.multi_margin])
def test_targets_out_of_range_name_the_target_and_position(loss):
    with pytest.raises(ValueError, match=r"target 3 at position 1 .*3 classes"):
        loss(db.tensor(np.zeros((2, 3))), [0, 3])
    with pytest.raises(ValueError, match=r"target -1 at position 0"):
        loss(db.tensor(np.zeros((2, 3))), [-1, 0])


@pytest.mark.parametrize("loss", [F.cross_entropy, F.multi_margin])
def test_targets_of_wrong_shape_name_both_shapes(loss):
    with pytest.raises(ShapeError, match=r"\(3,\).*\(2, 4\).*expected \(2,\)"):
        loss(db.tensor(np.zeros((2, 4))), [0, 1, 2])
    with pytest.raises(ShapeError, match=r"\(2, 1\)"):
        loss(db.tensor(np.zeros((2, 4))), [[0], [1]])
    with pytest.raises(ShapeError, match=r"\(N, C\).*\(4,\)"):
        loss(db.tensor(np.zeros(4)), [0])


@pytest.mark.parametrize("targets", [np.array([0.5, 1.0]), np.array([True, False])])
def test_non_integer_targets_are_rejected(targets):
    with pytest.raises(TypeError, match="integer class indices.*" + str(targets.dtype)):
        F.cross_entropy(db.tensor(np.zeros((2, 3))), targets)


def test_embedding_rejects_bad_ids():
    w = db.tensor(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="index 4 .*4 rows"):
        F.embedding(w, np.array([[0, 4]]))
    with pytest.raises(ValueError, match="index -1"):
        F.embedding(w, np.array([-1, 2]))
    with pytest.raises(TypeError, match="integers.*float"):
        F.embedding(w, np.array([0.0, 1.0]))


def test_shape_mismatch_in_pairwise_losses():
    with pytest.raises(ShapeError, match=r"\(3,\).*\(2,\)"):
        F.max_margin(db.tensor(np.zeros(3)), db.tensor(np.zeros(2)))
    with pytest.raises(ShapeError, match=r"\(2, 3\).*\(3, 2\)"):
        F.mse_loss(db.tensor(np.zeros((2, 3))), np.zeros((3, 2)))


def test_unknown_reduction():
    with pytest.raises(ValueError, match="'avg'"):
        F.cross_entropy(db.tensor(np.zeros((1, 2))), [0], reduction="avg")


# -- the fused reductions of cross_entropy --------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_reduction_is_bitwise_the_per_sample_losses_reduced(dtype, reduction):
    """mean and sum are reduced inside the cross_entropy op (one graph node instead of three):
    value and gradient are bitwise those of reduction='none' followed by .mean() / .sum()."""
    rng = np.random.default_rng(3)
    logits, t = rng.standard_normal((7, 5)) * 3, rng.integers(0, 5, 7)
    fused, composed = leaf(logits, dtype), leaf(logits, dtype)
    a = F.cross_entropy(fused, t, reduction=reduction)
    per_sample = F.cross_entropy(composed, t, reduction="none")
    b = per_sample.mean() if reduction == "mean" else per_sample.sum()
    assert a.dtype == b.dtype == dtype and a.shape == b.shape == ()
    np.testing.assert_array_equal(a.data, b.data)
    a.backward()
    b.backward()
    np.testing.assert_array_equal(fused.grad, composed.grad)
    assert fused.grad.dtype == dtype


def test_cross_entropy_reduction_scales_an_upstream_gradient():
    logits, t = np.random.default_rng(4).standard_normal((3, 4)), [0, 3, 1]
    x, y = leaf(logits), leaf(logits)
    (F.cross_entropy(x, t) * 2.5).backward()
    (F.cross_entropy(y, t, reduction="sum") * (2.5 / 3)).backward()
    np.testing.assert_allclose(x.grad, y.grad, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_softmax_is_bitwise_the_textbook_formula(dtype):
    """log_softmax calls the ufuncs' reduce directly (no Python wrapper): the same bits as
    a - max - log(sum(exp(a - max)))."""
    a = (np.random.default_rng(6).standard_normal((4, 6)) * 10).astype(dtype)
    for axis in (0, 1, -1):
        m = a.max(axis=axis, keepdims=True)
        expected = (a - m) - np.log(np.exp(a - m).sum(axis=axis, keepdims=True))
        np.testing.assert_array_equal(F.log_softmax(db.tensor(a, dtype=dtype), axis=axis).data, expected)
