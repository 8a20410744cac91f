"""distbp.functional's torch.nn.functional names: each function's value against the formula
torch documents, computed here by hand in numpy float64, its gradient by gradcheck, its
stability at ±1000, and the errors bad input gives. No torch needed; where torch is installed,
one extra test compares with it directly."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import distbp as db
import distbp.functional as F
from distbp.autodiff import ShapeError, gradcheck, ops

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

RNG = np.random.default_rng(20240611)
erf = np.vectorize(math.erf)


def leaf(values, dtype=np.float64):
    return db.tensor(values, requires_grad=True, dtype=dtype)


def away_from(x, points, gap=1e-2):
    """x with every element within ``gap`` of a kink in ``points`` moved off it (gradcheck's
    central differences straddle a kink otherwise)."""
    x = np.array(x, dtype=np.float64)
    for p in points:
        near = np.abs(x - p) < gap
        x[near] = p + 3 * gap
    return x


@pytest.fixture
def strict_floats():
    with np.errstate(all="raise", under="ignore"), warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


X = away_from(RNG.standard_normal((3, 4)) * 2, [0.0])
EXTREME = np.array([-1000.0, -30.0, -1.0, 0.0, 1.0, 30.0, 1000.0])


def sigmoid(x):
    return np.exp(-np.logaddexp(0.0, -x))  # full relative precision in both tails


def log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


# -- activations --------------------------------------------------------------------------------
def test_gelu_exact_and_tanh_values_and_gradient():
    x = leaf(X)
    y = F.gelu(x)
    np.testing.assert_allclose(y.data, 0.5 * X * (1 + erf(X / math.sqrt(2))), rtol=1e-13)
    y.sum().backward()
    pdf = np.exp(-X * X / 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(x.grad, 0.5 * (1 + erf(X / math.sqrt(2))) + X * pdf, rtol=1e-12)
    u = math.sqrt(2 / math.pi) * (X + 0.044715 * X ** 3)
    np.testing.assert_allclose(F.gelu(leaf(X), approximate="tanh").data, 0.5 * X * (1 + np.tanh(u)), rtol=1e-13)
    assert F.gelu(db.tensor(1.0, dtype=np.float64)).item() == pytest.approx(0.5 * (1 + math.erf(2 ** -0.5)))
    assert gradcheck(F.gelu, X)
    assert gradcheck(lambda x: F.gelu(x, approximate="tanh"), X)


def test_silu_value_and_gradient():
    np.testing.assert_allclose(F.silu(leaf(X)).data, X / (1 + np.exp(-X)), rtol=1e-13)
    assert gradcheck(F.silu, X)


def test_elu_value_gradient_and_no_nan_from_the_unused_branch(strict_floats):
    x = leaf(EXTREME)
    y = F.elu(x, alpha=0.5)
    np.testing.assert_allclose(y.data, np.where(EXTREME > 0, EXTREME, 0.5 * (np.exp(np.minimum(EXTREME, 0)) - 1)),
                               rtol=1e-13)
    y.sum().backward()
    # 1 above 0; alpha exp(x) at and below 0 (torch's choice at the kink: alpha)
    np.testing.assert_allclose(x.grad, np.where(EXTREME > 0, 1.0, 0.5 * np.exp(np.minimum(EXTREME, 0))), rtol=1e-13)
    assert gradcheck(lambda x: F.elu(x, alpha=1.7), X)


def test_softplus_threshold_beta_and_stability(strict_floats):
    x = leaf(EXTREME)
    y = F.softplus(x, beta=2.0, threshold=20.0)
    z = 2.0 * EXTREME
    hand = np.where(z > 20, EXTREME, (np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))) / 2.0)
    np.testing.assert_allclose(y.data, hand, rtol=1e-13)
    assert y.data[-1] == 1000.0 and y.data[0] == 0.0  # linear above the threshold, 0 far below
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.where(z > 20, 1.0, sigmoid(z)), rtol=1e-12)
    assert F.softplus(db.tensor([0.0], dtype=np.float64)).item() == pytest.approx(math.log(2), rel=1e-15)
    assert gradcheck(lambda x: F.softplus(x, beta=1.5, threshold=2.0), away_from(X, [2 / 1.5]))


def test_logsigmoid_is_exact_and_finite_everywhere(strict_floats):
    x = leaf(EXTREME)
    y = F.logsigmoid(x)
    hand = np.minimum(EXTREME, 0) - np.log1p(np.exp(-np.abs(EXTREME)))
    np.testing.assert_allclose(y.data, hand, rtol=1e-14, atol=1e-300)
    assert y.data[0] == -1000.0 and y.data[-1] == 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, sigmoid(-EXTREME), rtol=1e-12, atol=1e-300)
    assert x.grad[3] == 0.5  # at 0: sigmoid(0), not a one-sided slope
    assert gradcheck(F.logsigmoid, X)


def test_softmax_takes_dim_and_axis():
    x = db.tensor(X, dtype=np.float64)
    for d in (0, 1, -1):
        np.testing.assert_allclose(F.log_softmax(x, dim=d).data, log_softmax(X, d), rtol=1e-13)
        np.testing.assert_array_equal(F.softmax(x, dim=d).data, F.softmax(x, axis=d).data)
        np.testing.assert_array_equal(F.softmax(x, d).data, F.softmax(x, dim=d).data)
    np.testing.assert_array_equal(F.softmax(x).data, F.softmax(x, dim=-1).data)  # the last axis by default
    assert F.softmax(db.tensor(X), dim=1, dtype=np.float64).dtype == np.float64
    with pytest.raises(TypeError, match="softmax: give dim"):
        F.softmax(x, dim=0, axis=0)
    assert gradcheck(lambda x: F.softmax(x, dim=0), X)
    assert gradcheck(lambda x: F.log_softmax(x, dim=1), X)


# -- nll_loss and cross_entropy ------------------------------------------------------------------
S = RNG.standard_normal((5, 4))
T = np.array([0, 3, -100, 1, 3])
W = np.array([0.5, 2.0, 1.0, 3.0])


def nll_by_hand(logp, t, w, ignore_index, reduction):
    keep = t != ignore_index
    tt = np.where(keep, t, 0)
    wt = w[tt] * keep
    per = -logp[np.arange(len(t)), tt] * wt
    return {"none": per, "sum": per.sum(), "mean": per.sum() / wt.sum()}[reduction]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_weighted_with_ignore_index(reduction):
    x = leaf(S)
    loss = F.nll_loss(x, T, weight=W, reduction=reduction)
    np.testing.assert_allclose(loss.data, nll_by_hand(S, T, W, -100, reduction), rtol=1e-13)
    assert gradcheck(lambda x: F.nll_loss(x, T, weight=W, reduction=reduction), S)


def test_nll_loss_mean_is_over_kept_targets_and_all_ignored_is_nan():
    # unweighted: the mean over the four kept targets, not the five
    assert F.nll_loss(leaf(S), T).item() == pytest.approx(-(S[0, 0] + S[1, 3] + S[3, 1] + S[4, 3]) / 4, rel=1e-14)
    t = np.array([0, 2, 2, 1, 2])  # ignore_index inside the classes
    expected = -(S[0, 0] * W[0] + S[3, 1] * W[1]) / (W[0] + W[1])
    assert F.nll_loss(leaf(S), t, weight=W, ignore_index=2).item() == pytest.approx(expected, rel=1e-14)
    x = leaf(S)
    loss = F.nll_loss(x, [-100] * 5)
    assert math.isnan(loss.item())  # 0 / 0, as torch
    loss.backward()
    np.testing.assert_array_equal(x.grad, np.zeros_like(S))  # as torch: no target, no gradient


def smoothed_by_hand(s, t, w, eps, ignore_index, reduction):
    logp = log_softmax(s, 1)
    c = s.shape[1]
    keep = t != ignore_index
    tt = np.where(keep, t, 0)
    nll = -logp[np.arange(len(t)), tt] * w[tt] * keep
    smooth = -(logp * w).sum(1) * keep / c
    per = (1 - eps) * nll + eps * smooth
    return {"none": per, "sum": per.sum(), "mean": per.sum() / (w[tt] * keep).sum()}[reduction]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_weights_ignore_index_and_label_smoothing(reduction, weighted):
    w = W if weighted else None
    loss = F.cross_entropy(leaf(S), T, weight=w, reduction=reduction, label_smoothing=0.2)
    hand = smoothed_by_hand(S, T, W if weighted else np.ones(4), 0.2, -100, reduction)
    np.testing.assert_allclose(loss.data, hand, rtol=1e-13)
    no_smoothing = F.cross_entropy(leaf(S), T, weight=w, reduction=reduction)
    np.testing.assert_allclose(no_smoothing.data, nll_by_hand(log_softmax(S, 1), T, W if weighted else np.ones(4),
                                                               -100, reduction), rtol=1e-13)
    assert gradcheck(lambda s: F.cross_entropy(s, T, weight=w, reduction=reduction, label_smoothing=0.2), S)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_with_class_probabilities(reduction):
    q = RNG.random((5, 4))
    q /= q.sum(1, keepdims=True)
    eps = 0.1
    qs = (1 - eps) * q + eps / 4
    per = -(log_softmax(S, 1) * qs * W).sum(1)
    hand = {"none": per, "sum": per.sum(), "mean": per.sum() / 5}[reduction]  # mean: over samples, not weights
    loss = F.cross_entropy(leaf(S), q, weight=W, reduction=reduction, label_smoothing=eps)
    np.testing.assert_allclose(loss.data, hand, rtol=1e-13)
    # the gradient reaches both the scores and a target that requires grad
    assert gradcheck(lambda s, q: F.cross_entropy(s, q, weight=W, reduction=reduction, label_smoothing=eps), S, q)


def test_cross_entropy_spatial_and_unbatched_inputs():
    s = RNG.standard_normal((2, 3, 2, 2))  # (N, C, d1, d2)
    t = np.array([[[0, 2], [1, -100]], [[2, 2], [0, 1]]])
    logp = log_softmax(s, 1)
    keep = t != -100
    picked = np.take_along_axis(logp, np.where(keep, t, 0)[:, None], axis=1)[:, 0]
    np.testing.assert_allclose(F.cross_entropy(leaf(s), t).item(), -(picked * keep).sum() / keep.sum(), rtol=1e-13)
    np.testing.assert_allclose(F.cross_entropy(leaf(s), t, reduction="none").data, -(picked * keep), rtol=1e-13)
    assert gradcheck(lambda s: F.cross_entropy(s, t, weight=np.array([1.0, 2.0, 0.5]), label_smoothing=0.1), s)
    one = F.cross_entropy(leaf(S[1]), np.array(3))
    assert one.shape == () and one.item() == pytest.approx(-log_softmax(S[1], 0)[3], rel=1e-14)


def test_cross_entropy_keeps_the_fused_op_exactly_when_nothing_else_is_asked():
    t = np.array([0, 3, 2, 1, 3])
    assert F.cross_entropy(leaf(S), t).grad_fn is ops.cross_entropy
    assert F.cross_entropy(leaf(S), t, reduction="none").grad_fn is ops.cross_entropy
    assert F.cross_entropy(leaf(S), t, ignore_index=7).grad_fn is ops.cross_entropy  # matches no target
    assert F.cross_entropy(leaf(S), T).grad_fn is not ops.cross_entropy  # a target is ignored
    assert F.cross_entropy(leaf(S), t, ignore_index=2).grad_fn is not ops.cross_entropy
    assert F.cross_entropy(leaf(S), t, weight=W).grad_fn is not ops.cross_entropy
    assert F.cross_entropy(leaf(S), t, label_smoothing=0.1).grad_fn is not ops.cross_entropy
    # and the composed path gives the fused op's values when it computes the same thing
    np.testing.assert_allclose(F.cross_entropy(leaf(S), t, weight=np.ones(4)).data, F.cross_entropy(leaf(S), t).data,
                               rtol=1e-14)


def test_cross_entropy_stable_at_1000(strict_floats):
    x = leaf([[1000.0, -1000.0, 0.0], [-1000.0, 0.0, 1000.0]])
    loss = F.cross_entropy(x, [1, 2], weight=np.array([1.0, 2.0, 3.0]), label_smoothing=0.3)
    logp = np.array([[0.0, -2000.0, -1000.0], [-2000.0, -1000.0, 0.0]])
    w = np.array([1.0, 2.0, 3.0])
    per = 0.7 * -np.array([logp[0, 1] * 2, logp[1, 2] * 3]) - 0.3 / 3 * (logp * w).sum(1)
    assert loss.item() == pytest.approx(per.sum() / 5, rel=1e-12)
    loss.backward()
    assert np.all(np.isfinite(x.grad))


# -- binary cross-entropy -----------------------------------------------------------------------
P = RNG.uniform(0.05, 0.95, (3, 4))
Y = RNG.random((3, 4))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_value_weight_and_gradient(reduction):
    w = RNG.random((1, 4))  # broadcast over the batch
    per = -w * (Y * np.log(P) + (1 - Y) * np.log(1 - P))
    hand = {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]
    np.testing.assert_allclose(F.binary_cross_entropy(leaf(P), Y, weight=w, reduction=reduction).data, hand,
                               rtol=1e-13)
    assert gradcheck(lambda p, y: F.binary_cross_entropy(p, y, weight=w, reduction=reduction), P, Y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_cross_entropy_clamps_the_log_at_minus_100(strict_floats, dtype):
    p = leaf([0.0, 1.0, 0.0, 1.0, 0.5], dtype)
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    loss = F.binary_cross_entropy(p, y, reduction="none")
    np.testing.assert_allclose(loss.data, [100.0, 100.0, 0.0, 0.0, math.log(2)], rtol=1e-6)
    loss.sum().backward()
    # The derivative of the clamped forward, -y / x + (1 - y) / (1 - x) with each term 0 where
    # its log is clamped; torch instead puts (x - y) / max(x (1 - x), 1e-12) there: +-1e12, 0, 0.
    np.testing.assert_allclose(p.grad, [0.0, 0.0, 1.0, -1.0, -2.0], rtol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_with_logits_value_pos_weight_and_gradient(reduction):
    x = X
    pw = np.array([1.0, 2.0, 0.5, 3.0])  # per class, along the last dimension
    w = RNG.random((3, 1))
    s = sigmoid(x)
    per = -w * (pw * Y * np.log(s) + (1 - Y) * np.log(1 - s))
    hand = {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]
    loss = F.binary_cross_entropy_with_logits(leaf(x), Y, weight=w, reduction=reduction, pos_weight=pw)
    np.testing.assert_allclose(loss.data, hand, rtol=1e-12)
    assert gradcheck(lambda x, y: F.binary_cross_entropy_with_logits(x, y, weight=w, reduction=reduction,
                                                                     pos_weight=pw), x, Y)
    # without sigmoid it equals binary_cross_entropy of the sigmoid
    np.testing.assert_allclose(F.binary_cross_entropy_with_logits(leaf(x), Y).data,
                               F.binary_cross_entropy(F.sigmoid(leaf(x)), Y).data, rtol=1e-12)


def test_binary_cross_entropy_with_logits_stable_at_1000(strict_floats):
    x = leaf(EXTREME)
    y = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    # (1 - y) x + log(1 + exp(-x)), stably
    hand = (1 - y) * EXTREME + np.maximum(-EXTREME, 0) + np.log1p(np.exp(-np.abs(EXTREME)))
    np.testing.assert_allclose(loss.data, hand, rtol=1e-13)
    assert loss.data[0] == 1000.0 and loss.data[-1] == 1000.0
    loss.sum().backward()
    np.testing.assert_allclose(x.grad, sigmoid(EXTREME) - y, atol=1e-15)
    assert x.grad[3] == -0.5  # at 0: sigmoid(0) - 1


# -- regression losses ----------------------------------------------------------------------------
A = away_from(RNG.standard_normal((3, 4)) * 2, [0.0, 0.7, -0.7, 1.0, -1.0])
B = np.zeros((3, 4))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_l1_smooth_l1_and_huber(reduction):
    def red(v):
        return {"none": v, "sum": v.sum(), "mean": v.mean()}[reduction]

    d, a = A - B, np.abs(A - B)
    np.testing.assert_allclose(F.l1_loss(leaf(A), B, reduction=reduction).data, red(a), rtol=1e-14)
    beta = 0.7
    smooth = np.where(a < beta, 0.5 * d * d / beta, a - 0.5 * beta)
    np.testing.assert_allclose(F.smooth_l1_loss(leaf(A), B, reduction=reduction, beta=beta).data, red(smooth),
                               rtol=1e-14)
    delta = 1.0
    huber = np.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))
    np.testing.assert_allclose(F.huber_loss(leaf(A), B, reduction=reduction, delta=delta).data, red(huber), rtol=1e-14)
    np.testing.assert_array_equal(F.smooth_l1_loss(leaf(A), B, beta=0.0).data, F.l1_loss(leaf(A), B).data)
    assert gradcheck(lambda x, y: F.l1_loss(x, y, reduction=reduction), A, B)
    assert gradcheck(lambda x, y: F.smooth_l1_loss(x, y, reduction=reduction, beta=beta), A, B)
    assert gradcheck(lambda x, y: F.huber_loss(x, y, reduction=reduction, delta=delta), A, B)


def test_huber_is_delta_times_smooth_l1_with_beta_delta():
    np.testing.assert_allclose(F.huber_loss(leaf(A), B, delta=0.7).data,
                               0.7 * F.smooth_l1_loss(leaf(A), B, beta=0.7).data, rtol=1e-14)


# -- KL divergence --------------------------------------------------------------------------------
LOGP = log_softmax(RNG.standard_normal((3, 4)), 1)
Q = RNG.dirichlet(np.ones(4), 3)
Q[0, 1] = 0.0  # a zero target contributes 0 (0 log 0 = 0)


@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
def test_kl_div_reductions_and_zero_targets(reduction):
    safe = np.where(Q > 0, Q, 1.0)
    per = np.where(Q > 0, Q * (np.log(safe) - LOGP), 0.0)
    hand = {"none": per, "sum": per.sum(), "mean": per.mean(), "batchmean": per.sum() / 3}[reduction]
    np.testing.assert_allclose(F.kl_div(leaf(LOGP), Q, reduction=reduction).data, hand, rtol=1e-13)
    lq = np.log(Q + 0.1)
    per_log = np.exp(lq) * (lq - LOGP)
    hand_log = {"none": per_log, "sum": per_log.sum(), "mean": per_log.mean(),
                "batchmean": per_log.sum() / 3}[reduction]
    np.testing.assert_allclose(F.kl_div(leaf(LOGP), lq, reduction=reduction, log_target=True).data, hand_log,
                               rtol=1e-13)
    assert gradcheck(lambda x, q: F.kl_div(x, q, reduction=reduction), LOGP, Q + 0.05)
    assert gradcheck(lambda x, q: F.kl_div(x, q, reduction=reduction, log_target=True), LOGP, lq)


def test_kl_div_gradient_at_a_zero_target_is_finite(strict_floats):
    q = leaf(Q)
    x = leaf(LOGP)
    F.kl_div(x, q, reduction="sum").backward()
    np.testing.assert_allclose(x.grad, -Q)
    assert np.all(np.isfinite(q.grad)) and q.grad[0, 1] == -LOGP[0, 1]


# -- multi-margin ---------------------------------------------------------------------------------
def test_multi_margin_loss_torch_example_and_p1_is_multi_margin():
    x = leaf([[0.1, 0.2, 0.4, 0.8]])
    assert F.multi_margin_loss(x, [3]).item() == pytest.approx(0.325, rel=1e-12)  # torch's documented example
    s, t = RNG.standard_normal((4, 3)), np.array([0, 2, 1, 2])
    np.testing.assert_array_equal(F.multi_margin_loss(leaf(s), t, margin=0.5).data,
                                  F.multi_margin(leaf(s), t, margin=0.5).data)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_multi_margin_loss_p2_with_weights(reduction):
    s = away_from(RNG.standard_normal((4, 3)), [])
    t = np.array([0, 2, 1, 2])
    w = np.array([1.0, 2.0, 0.5])
    margin = 0.8
    n, c = s.shape
    correct = s[np.arange(n), t][:, None]
    terms = np.maximum(0, margin - correct + s) ** 2
    terms[np.arange(n), t] = 0
    per = w[t] * terms.sum(1) / c
    hand = {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]
    loss = F.multi_margin_loss(leaf(s), t, p=2, margin=margin, weight=w, reduction=reduction)
    np.testing.assert_allclose(loss.data, hand, rtol=1e-13)
    assert gradcheck(lambda s: F.multi_margin_loss(s, t, p=2, margin=margin, weight=w, reduction=reduction), s)
    assert gradcheck(lambda s: F.multi_margin_loss(s, t, p=1, weight=w, reduction=reduction), s)


# -- one_hot, layer_norm, normalize ---------------------------------------------------------------
def test_one_hot():
    out = F.one_hot(db.tensor([[1, 0], [3, 1]]))
    assert out.dtype == np.int64 and out.shape == (2, 2, 4) and not out.requires_grad
    np.testing.assert_array_equal(out.data, np.eye(4, dtype=np.int64)[[[1, 0], [3, 1]]])
    np.testing.assert_array_equal(F.one_hot(np.array([2]), num_classes=5).data, [[0, 0, 1, 0, 0]])
    assert F.one_hot(np.zeros(0, dtype=np.int64), 3).shape == (0, 3)
    with pytest.raises(ValueError, match="one_hot: class value 3 is not below num_classes=3"):
        F.one_hot(np.array([3]), 3)
    with pytest.raises(ValueError, match="one_hot: class values must be non-negative"):
        F.one_hot(np.array([-1, 0]))
    with pytest.raises(TypeError, match="one_hot: needs integer"):
        F.one_hot(np.array([0.0]))
    with pytest.raises(ValueError, match="one_hot: cannot infer"):
        F.one_hot(np.zeros(0, dtype=np.int64))


def test_layer_norm_value_and_gradient():
    x = RNG.standard_normal((2, 3, 4))
    w, b = RNG.standard_normal((3, 4)), RNG.standard_normal((3, 4))
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)  # biased, as torch
    np.testing.assert_allclose(F.layer_norm(leaf(x), (3, 4), leaf(w), leaf(b)).data,
                               (x - mean) / np.sqrt(var + 1e-5) * w + b, rtol=1e-12)
    m1 = x.mean(-1, keepdims=True)
    v1 = x.var(-1, keepdims=True)
    np.testing.assert_allclose(F.layer_norm(leaf(x), 4, eps=0.1).data, (x - m1) / np.sqrt(v1 + 0.1), rtol=1e-12)
    assert gradcheck(lambda x, w, b: F.layer_norm(x, [4], w, b), x, w[0], b[0])
    with pytest.raises(ShapeError, match=r"layer_norm: input of shape \(2, 3, 4\).*\(3,\)"):
        F.layer_norm(leaf(x), 3)
    with pytest.raises(ShapeError, match=r"layer_norm: weight of shape \(3,\)"):
        F.layer_norm(leaf(x), 4, weight=leaf(np.ones(3)))


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, float("inf")])
def test_normalize(p):
    x = RNG.standard_normal((3, 4))
    if p == float("inf"):
        norm = np.abs(x).max(1, keepdims=True)
    else:
        norm = (np.abs(x) ** p).sum(1, keepdims=True) ** (1 / p)
    np.testing.assert_allclose(F.normalize(leaf(x), p=p).data, x / norm, rtol=1e-13)
    np.testing.assert_allclose(F.normalize(leaf(x), p=p, dim=0).data,
                               x / (np.abs(x).max(0) if p == float("inf") else (np.abs(x) ** p).sum(0) ** (1 / p)),
                               rtol=1e-13)
    assert gradcheck(lambda x: F.normalize(x, p=p), x)


def test_normalize_of_a_zero_vector_is_zero_with_a_finite_gradient(strict_floats):
    x = leaf(np.array([[0.0, 0.0], [3.0, 4.0]]))
    y = F.normalize(x, eps=1e-6)
    np.testing.assert_allclose(y.data, [[0.0, 0.0], [0.6, 0.8]])
    y.sum().backward()
    assert np.all(np.isfinite(x.grad))
    np.testing.assert_allclose(x.grad[0], [1e6, 1e6])  # d(x / eps)/dx, as torch


# -- errors name the function ---------------------------------------------------------------------
PAIRWISE = [F.l1_loss, F.smooth_l1_loss, F.huber_loss, F.kl_div, F.binary_cross_entropy,
            F.binary_cross_entropy_with_logits]


@pytest.mark.parametrize("fn", PAIRWISE + [F.nll_loss, F.cross_entropy, F.multi_margin_loss])
def test_unknown_reduction_names_the_function(fn):
    with pytest.raises(ValueError, match=rf"{fn.__name__}: reduction must be .*'avg'"):
        fn(leaf(np.full((2, 3), 0.5)), np.array([0, 1]) if fn in (F.nll_loss, F.cross_entropy, F.multi_margin_loss)
           else np.full((2, 3), 0.5), reduction="avg")


@pytest.mark.parametrize("fn", PAIRWISE)
def test_pairwise_shape_mismatch_names_the_function(fn):
    with pytest.raises(ShapeError, match=rf"{fn.__name__}: input of shape \(2, 3\) and target of shape \(3, 2\)"):
        fn(leaf(np.full((2, 3), 0.5)), np.full((3, 2), 0.5))


@pytest.mark.parametrize("fn", [F.nll_loss, F.cross_entropy, F.multi_margin_loss])
def test_class_targets_and_weights_are_checked(fn):
    name = fn.__name__
    with pytest.raises(ValueError, match=rf"{name}: target 3 at position 1 is outside the 3 classes"):
        fn(leaf(np.zeros((2, 3))), [0, 3])
    with pytest.raises(ShapeError, match=rf"{name}: weight of shape \(2,\).*expected \(3,\)"):
        fn(leaf(np.zeros((2, 3))), [0, 1], weight=np.ones(2))


def test_other_bad_arguments():
    with pytest.raises(ValueError, match=r"nll_loss: target -5 at position \(0, 1\)"):
        F.nll_loss(leaf(np.zeros((1, 3, 2))), [[0, -5]])
    with pytest.raises(ShapeError, match=r"cross_entropy: .*\(N, C\).*\(1,\).*\(4,\)"):
        F.cross_entropy(leaf(np.zeros(4)), [0])
    with pytest.raises(ValueError, match="cross_entropy: ignore_index .*probability"):
        F.cross_entropy(leaf(np.zeros((2, 3))), np.full((2, 3), 1 / 3), ignore_index=0)
    with pytest.raises(ValueError, match="cross_entropy: label_smoothing"):
        F.cross_entropy(leaf(np.zeros((2, 3))), [0, 1], label_smoothing=1.5)
    with pytest.raises(TypeError, match="cross_entropy: weight must be .* by keyword"):
        F.cross_entropy(leaf(np.zeros((2, 3))), [0, 1], "sum")
    with pytest.raises(ValueError, match=r"binary_cross_entropy: input values must be probabilities"):
        F.binary_cross_entropy(leaf([0.5, 1.5]), [0.0, 1.0])
    with pytest.raises(ShapeError, match="binary_cross_entropy_with_logits: pos_weight of shape \\(3,\\)"):
        F.binary_cross_entropy_with_logits(leaf(np.zeros((2, 4))), np.zeros((2, 4)), pos_weight=np.ones(3))
    with pytest.raises(ValueError, match="multi_margin_loss: p must be 1 or 2"):
        F.multi_margin_loss(leaf(np.zeros((2, 3))), [0, 1], p=3)
    with pytest.raises(ValueError, match="gelu: approximate"):
        F.gelu(leaf([1.0]), approximate="fast")
    with pytest.raises(ValueError, match="huber_loss: delta must be positive"):
        F.huber_loss(leaf([1.0]), [0.0], delta=0.0)
    with pytest.raises(ValueError, match="smooth_l1_loss: beta must be non-negative"):
        F.smooth_l1_loss(leaf([1.0]), [0.0], beta=-1.0)
    with pytest.raises(ValueError, match="normalize: p must be"):
        F.normalize(leaf([[1.0]]), p=0)


# -- float32 stays float32 ------------------------------------------------------------------------
def test_float32_in_float32_out():
    x = db.tensor(X, requires_grad=True)
    y = np.full((3, 4), 0.25)
    outs = [F.gelu(x), F.gelu(x, approximate="tanh"), F.silu(x), F.elu(x), F.softplus(x, beta=2.0), F.logsigmoid(x),
            F.cross_entropy(x, [0, 1, -100], weight=np.ones(4), label_smoothing=0.1), F.cross_entropy(x, y),
            F.nll_loss(x, [0, 1, 2]), F.binary_cross_entropy(F.sigmoid(x), y),
            F.binary_cross_entropy_with_logits(x, y, pos_weight=np.ones(4)), F.l1_loss(x, y), F.smooth_l1_loss(x, y),
            F.huber_loss(x, y), F.kl_div(x, y, reduction="batchmean"), F.multi_margin_loss(x, [0, 1, 2], p=2),
            F.layer_norm(x, 4), F.normalize(x)]
    for out in outs:
        x.grad = None
        out.sum().backward()
        assert out.dtype == np.float32 and x.grad.dtype == np.float32


# -- optional: the same numbers as torch ------------------------------------------------------------
def test_against_torch_when_installed():
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    s4 = RNG.standard_normal((2, 4, 3))
    t4 = np.array([[0, 3, -100], [2, 1, 1]])
    q = RNG.dirichlet(np.ones(4), 5)
    cases = [
        (lambda x: F.gelu(x), lambda x: tf.gelu(x), X),
        (lambda x: F.gelu(x, approximate="tanh"), lambda x: tf.gelu(x, approximate="tanh"), X),
        (F.silu, tf.silu, X), (lambda x: F.elu(x, 0.3), lambda x: tf.elu(x, 0.3), EXTREME),
        (lambda x: F.softplus(x, 2, 5), lambda x: tf.softplus(x, 2, 5), EXTREME),
        (F.logsigmoid, tf.logsigmoid, EXTREME),
        (lambda x: F.cross_entropy(x, T, weight=W, label_smoothing=0.2),
         lambda x: tf.cross_entropy(x, torch.tensor(T), weight=torch.tensor(W), label_smoothing=0.2), S),
        (lambda x: F.cross_entropy(x, q, weight=W, label_smoothing=0.2),
         lambda x: tf.cross_entropy(x, torch.tensor(q), weight=torch.tensor(W), label_smoothing=0.2), S),
        (lambda x: F.cross_entropy(x, t4, weight=W, reduction="sum"),
         lambda x: tf.cross_entropy(x, torch.tensor(t4), weight=torch.tensor(W), reduction="sum"), s4),
        (lambda x: F.nll_loss(x, T, weight=W), lambda x: tf.nll_loss(x, torch.tensor(T), weight=torch.tensor(W)), S),
        (lambda x: F.binary_cross_entropy(x, Y), lambda x: tf.binary_cross_entropy(x, torch.tensor(Y)), P),
        (lambda x: F.binary_cross_entropy_with_logits(x, Y, pos_weight=W),
         lambda x: tf.binary_cross_entropy_with_logits(x, torch.tensor(Y), pos_weight=torch.tensor(W)), X),
        (lambda x: F.smooth_l1_loss(x, B, beta=0.7), lambda x: tf.smooth_l1_loss(x, torch.tensor(B), beta=0.7), A),
        (lambda x: F.huber_loss(x, B, delta=0.7), lambda x: tf.huber_loss(x, torch.tensor(B), delta=0.7), A),
        (lambda x: F.kl_div(x, Q, reduction="batchmean"),
         lambda x: tf.kl_div(x, torch.tensor(Q), reduction="batchmean"), LOGP),
        (lambda x: F.multi_margin_loss(x, T[:2], p=2, weight=W),
         lambda x: tf.multi_margin_loss(x, torch.tensor(T[:2]), p=2, weight=torch.tensor(W)), S[:2]),
        (lambda x: F.layer_norm(x, 4), lambda x: tf.layer_norm(x, (4,)), X),
        (lambda x: F.normalize(x, p=3), lambda x: tf.normalize(x, p=3), X),
    ]
    for ours, theirs, x in cases:
        a, b = leaf(x), torch.tensor(x, requires_grad=True)
        ya, yb = ours(a), theirs(b)
        np.testing.assert_allclose(ya.data, yb.detach().numpy(), rtol=1e-12, atol=1e-14)
        ya.sum().backward()
        yb.sum().backward()
        np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=1e-12, atol=1e-14)
