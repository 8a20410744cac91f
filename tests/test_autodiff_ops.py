"""Every op against two oracles: central differences (gradcheck, float64) and a plain-numpy
forward, or the documented formula for the losses. One sweep over ops × shapes, then the
exact values the course notes teach (+ distributes, max routes, × swaps, fan-out sums)."""

from __future__ import annotations

import numpy as np
import pytest

import distbp as db
import distbp.functional as F
from distbp.autodiff import Primitive, ShapeError, gradcheck

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

_rng = np.random.default_rng(2024)


def normal(*shape: int) -> np.ndarray:
    return np.asarray(_rng.standard_normal(shape), dtype=np.float64)


def positive(*shape: int) -> np.ndarray:
    return np.asarray(_rng.uniform(0.5, 2.0, shape), dtype=np.float64)


def away(*shape: int, kinks=(0.0,), gap: float = 0.2) -> np.ndarray:
    """Values in [-2, 2] at least ``gap`` from every kink, so that ±eps never crosses one."""
    x = np.asarray(_rng.uniform(-2.0, 2.0, shape), dtype=np.float64)
    while True:
        near = np.zeros(x.shape, dtype=bool)
        for k in kinks:
            near |= np.abs(x - k) < gap
        if not near.any():
            return x
        x[near] = _rng.uniform(-2.0, 2.0, int(near.sum()))


def targets(n: int, c: int) -> np.ndarray:
    return _rng.integers(0, c, n)


def hinge_scores(t: np.ndarray, c: int, margin: float) -> np.ndarray:
    """(N, C) scores where no hinge term margin - s_y + s_i sits within 0.1 of its kink."""
    rows = np.arange(len(t))
    while True:
        s = normal(len(t), c)
        terms = margin - s[rows, t][:, None] + s
        terms[rows, t] = 1.0  # the target's own term is excluded from the loss
        if np.abs(terms).min() > 0.1:
            return s


# -- numpy references -------------------------------------------------------------------
def np_log_softmax(a, axis=-1):
    m = a.max(axis=axis, keepdims=True)
    return a - m - np.log(np.exp(a - m).sum(axis=axis, keepdims=True))


def np_sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def np_reduce(losses, reduction):
    return {"mean": np.mean, "sum": np.sum, "none": lambda v: v}[reduction](losses)


def np_cross_entropy(logits, t, reduction="mean"):
    return np_reduce(-np_log_softmax(logits, 1)[np.arange(len(t)), t], reduction)


def np_multi_margin(x, y, margin=1.0, reduction="mean"):
    """torch.nn.functional.multi_margin_loss as documented:
    loss(x, y) = sum_{i != y} max(0, margin - x[y] + x[i]) / x.size(0), per sample."""
    n, c = x.shape
    per_sample = np.array([sum(max(0.0, margin - x[k, y[k]] + x[k, i]) for i in range(c) if i != y[k]) / c
                           for k in range(n)])
    return np_reduce(per_sample, reduction)


# -- the sweep: (id, fn on Tensors, numpy reference, inputs) ------------------------------
CASES = []


def case(id_: str, fn, ref, *inputs) -> None:
    CASES.append(pytest.param(fn, ref, inputs, id=id_))


BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
}
BROADCAST_SHAPES = [((3, 4), (3, 4)), ((3, 1), (1, 4)), ((3, 4), (4,)), ((4,), (3, 4)),
                    ((2, 3, 4), (3, 1)), ((2, 1, 4), (3, 1)), ((), (2, 3)), ((2, 3), ())]
for name, (fn, ref) in BINARY.items():
    for sa, sb in BROADCAST_SHAPES:
        b = away(*sb, gap=0.5) if name == "div" else normal(*sb)
        case(f"{name}-{sa}-{sb}", fn, ref, normal(*sa), b)

# Python and numpy constants on either side
case("add-const-right", lambda a: a + 2.5, lambda a: a + 2.5, normal(3, 2))
case("add-const-left", lambda a: 2.5 + a, lambda a: 2.5 + a, normal(3, 2))
case("sub-const-left", lambda a: 2.5 - a, lambda a: 2.5 - a, normal(3, 2))
case("sub-const-right", lambda a: a - 1, lambda a: a - 1, normal(3, 2))
case("mul-int-left", lambda a: 3 * a, lambda a: 3 * a, normal(3, 2))
case("mul-np-scalar-left", lambda a: np.float64(1.5) * a, lambda a: 1.5 * a, normal(3, 2))
case("div-const-left", lambda a: 2.0 / a, lambda a: 2.0 / a, away(3, 2, gap=0.5))
case("div-const-right", lambda a: a / 4.0, lambda a: a / 4.0, normal(3, 2))
case("mul-array-left", lambda a: np.arange(1.0, 4.0)[:, None] * a, lambda a: np.arange(1.0, 4.0)[:, None] * a,
     normal(3, 2))
case("sub-array-left", lambda a: np.ones(2) - a, lambda a: np.ones(2) - a, normal(3, 2))
case("neg", lambda a: -a, np.negative, normal(3, 2))

# power with scalar exponents
case("pow-2", lambda a: a ** 2, lambda a: a ** 2, normal(3, 4))
case("pow-3", lambda a: a ** 3, lambda a: a ** 3, normal(3, 4))
case("pow-0.5", lambda a: a ** 0.5, np.sqrt, positive(3, 4))
case("pow-1.5", lambda a: a ** 1.5, lambda a: a ** 1.5, positive(3, 4))
case("pow-minus1", lambda a: a ** -1, lambda a: 1.0 / a, away(3, 4, gap=0.5))
case("pow-0", lambda a: a ** 0, np.ones_like, normal(3, 4))
case("pow-np-scalar", lambda a: a ** np.float64(2.0), lambda a: a * a, normal(3, 4))

# matmul: numpy's rules for 1-D operands and batch broadcasting
MATMUL_SHAPES = [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4, 5)),
                 ((2, 3, 4), (2, 4, 5)), ((1, 3, 4), (2, 4, 5)), ((2, 3, 4), (4,)), ((4,), (2, 4, 5)),
                 ((3, 4), (2, 4, 5))]
for sa, sb in MATMUL_SHAPES:
    case(f"matmul-{sa}-{sb}", lambda a, b: a @ b, np.matmul, normal(*sa), normal(*sb))
for sx in [(5, 3), (2, 4, 3), (3,)]:
    case(f"linear-{sx}", lambda x, w, b: F.linear(x, w, b), lambda x, w, b: x @ w + b,
         normal(*sx), normal(3, 4), normal(4))
case("matmul-array-left", lambda b: np.arange(6.0).reshape(2, 3) @ b, lambda b: np.arange(6.0).reshape(2, 3) @ b,
     normal(3, 4))

# elementwise functions, inputs away from their kinks
case("exp", lambda a: a.exp(), np.exp, normal(3, 4))
case("log", lambda a: a.log(), np.log, positive(3, 4))
case("sqrt", lambda a: a.sqrt(), np.sqrt, positive(3, 4))
case("abs", lambda a: a.abs(), np.abs, away(3, 4))
case("tanh", F.tanh, np.tanh, normal(3, 4))
case("tanh-method", lambda a: a.tanh(), np.tanh, normal(3, 4))
case("sigmoid", F.sigmoid, np_sigmoid, 3 * normal(3, 4))
case("sigmoid-method", lambda a: a.sigmoid(), np_sigmoid, normal(3, 4))
case("relu", F.relu, lambda a: np.maximum(a, 0), away(3, 4))
case("relu-method", lambda a: a.relu(), lambda a: np.maximum(a, 0), away(3, 4))
case("leaky_relu", F.leaky_relu, lambda a: np.where(a > 0, a, 0.01 * a), away(3, 4))
case("leaky_relu-0.2", lambda a: F.leaky_relu(a, slope=0.2), lambda a: np.where(a > 0, a, 0.2 * a), away(3, 4))
case("hardtanh", F.hardtanh, lambda a: np.clip(a, -1, 1), away(3, 4, kinks=(-1.0, 1.0)))
case("hardtanh-range", lambda a: F.hardtanh(a, -0.5, 1.5), lambda a: np.clip(a, -0.5, 1.5),
     away(3, 4, kinks=(-0.5, 1.5)))
case("softsign", F.softsign, lambda a: a / (1 + np.abs(a)), away(3, 4))

# reductions: every axis form, with and without keepdims
REDUCTIONS = {"sum": np.sum, "mean": np.mean, "max": np.max}
for name, ref in REDUCTIONS.items():
    for axis in (None, 1, -1, (0, 2), (-1, 0)):
        for keepdims in (False, True):
            case(f"{name}-axis{axis}-keep{keepdims}",
                 lambda a, n=name, ax=axis, k=keepdims: getattr(a, n)(axis=ax, keepdims=k),
                 lambda a, r=ref, ax=axis, k=keepdims: r(a, axis=ax, keepdims=k), normal(2, 3, 4))
case("sum-default", lambda a: a.sum(), np.sum, normal(2, 3))
case("mean-default", lambda a: a.mean(), np.mean, normal(2, 3))
case("max-default", lambda a: a.max(), np.max, normal(2, 3))

# shapes
case("reshape", lambda a: a.reshape(6, 4), lambda a: a.reshape(6, 4), normal(2, 3, 4))
case("reshape-tuple", lambda a: a.reshape((4, 6)), lambda a: a.reshape(4, 6), normal(2, 3, 4))
case("reshape-minus1", lambda a: a.reshape(-1), lambda a: a.reshape(-1), normal(2, 3, 4))
case("reshape-4-minus1", lambda a: a.reshape(4, -1), lambda a: a.reshape(4, -1), normal(2, 3, 4))
case("T-2d", lambda a: a.T, lambda a: a.T, normal(3, 4))
case("T-3d", lambda a: a.T, lambda a: a.T, normal(2, 3, 4))
case("transpose-102", lambda a: a.transpose(1, 0, 2), lambda a: a.transpose(1, 0, 2), normal(2, 3, 4))
case("transpose-201", lambda a: a.transpose(2, 0, 1), lambda a: a.transpose(2, 0, 1), normal(2, 3, 4))
case("transpose-tuple", lambda a: a.transpose((0, 2, 1)), lambda a: a.transpose(0, 2, 1), normal(2, 3, 4))
case("transpose-negative", lambda a: a.transpose(-1, 0, 1), lambda a: a.transpose(2, 0, 1), normal(2, 3, 4))
case("transpose-none", lambda a: a.transpose(), lambda a: a.transpose(), normal(2, 3, 4))

# indexing: basic, advanced (with repeats), masks
MASK = np.array([[True, False, True, False, True], [False, False, True, True, False],
                 [True, True, False, False, False], [False, True, False, True, True]])
INDICES = {
    "int": 1, "negative-int": -1, "np-int": np.int64(2), "slice": slice(1, 3),
    "2d-slice": (slice(None), slice(1, 4)), "steps": (slice(None, None, 2), slice(None, None, -1)),
    "ellipsis": (Ellipsis, 0), "none": (None, 1), "int-none-slice": (1, None, slice(2, None)),
    "repeated-rows": [0, 0, 2], "int-array-2d": np.array([[0, 1], [1, 0]]),
    "pairs": ([0, 2], [1, 1]), "same-element-twice": ([3, 3], [1, 1]), "mask": MASK,
    "int-and-list": (1, [0, 0, 3]), "slice-and-list": (slice(None), [2, 2, 0]),
}
for name, index in INDICES.items():
    case(f"getitem-{name}", lambda a, i=index: a[i], lambda a, i=index: a[i], normal(4, 5))

# softmax family along several axes
for shape, axis in (((3, 4), 0), ((3, 4), 1), ((3, 4), -1), ((2, 3, 4), 1)):
    case(f"softmax-{shape}-axis{axis}", lambda a, ax=axis: F.softmax(a, axis=ax),
         lambda a, ax=axis: np.exp(np_log_softmax(a, ax)), normal(*shape))
    case(f"log_softmax-{shape}-axis{axis}", lambda a, ax=axis: F.log_softmax(a, axis=ax),
         lambda a, ax=axis: np_log_softmax(a, ax), normal(*shape))

# losses, against their documented formulas
for reduction in ("mean", "sum", "none"):
    case(f"cross_entropy-{reduction}", lambda a, t, r=reduction: F.cross_entropy(a, t, reduction=r),
         lambda a, t, r=reduction: np_cross_entropy(a, t, r), normal(5, 4), targets(5, 4))
for margin in (0.5, 1.0, 2.0):
    t = targets(5, 4)
    case(f"multi_margin-{margin}", lambda a, t, m=margin: F.multi_margin(a, t, margin=m),
         lambda a, t, m=margin: np_multi_margin(a, t, m), hinge_scores(t, 4, margin), t)
t = targets(5, 4)
case("multi_margin-sum", lambda a, t: F.multi_margin(a, t, reduction="sum"),
     lambda a, t: np_multi_margin(a, t, 1.0, "sum"), hinge_scores(t, 4, 1.0), t)
case("multi_margin-none", lambda a, t: F.multi_margin(a, t, reduction="none"),
     lambda a, t: np_multi_margin(a, t, 1.0, "none"), hinge_scores(t, 4, 1.0), t)
for margin in (0.5, 1.0):
    s_true = normal(6)
    s_corrupt = s_true + away(6, kinks=(-margin,))  # margin + s_c - s stays away from 0
    case(f"max_margin-{margin}", lambda s, c, m=margin: F.max_margin(s, c, margin=m),
         lambda s, c, m=margin: np.mean(np.maximum(0.0, m + c - s)), s_true, s_corrupt)
for reduction in ("mean", "sum", "none"):
    case(f"mse_loss-{reduction}", lambda p, y, r=reduction: F.mse_loss(p, y, reduction=r),
         lambda p, y, r=reduction: np_reduce((p - y) ** 2, r), normal(3, 4), normal(3, 4))
_const_target = normal(3, 4)
case("mse_loss-array-target", lambda p: F.mse_loss(p, _const_target), lambda p: np.mean((p - _const_target) ** 2),
     normal(3, 4))
case("embedding-repeated-ids", F.embedding, lambda w, i: w[i], normal(5, 3), np.array([[0, 2, 0], [4, 2, 2]]))
case("dropout-fixed-mask", lambda a: F.dropout(a, 0.3, rng=np.random.default_rng(5)),
     lambda a: a * (np.random.default_rng(5).random(a.shape, dtype=np.float32) >= 0.3) / 0.7, normal(4, 6))

# joining
for axis in (0, 1, -1):
    case(f"concat-axis{axis}", lambda a, b, c, ax=axis: F.concat([a, b, c], axis=ax),
         lambda a, b, c, ax=axis: np.concatenate([a, b, c], axis=ax),
         *(normal(2, 3, 2) if axis != 0 else normal(k, 3, 2) for k in (1, 2, 3)))
    case(f"stack-axis{axis}", lambda a, b, c, ax=axis: F.stack([a, b, c], axis=ax),
         lambda a, b, c, ax=axis: np.stack([a, b, c], axis=ax), normal(2, 3), normal(2, 3), normal(2, 3))
case("concat-sizes-axis1", lambda a, b: F.concat([a, b], axis=1), lambda a, b: np.concatenate([a, b], 1),
     normal(2, 1), normal(2, 4))
case("concat-with-constant", lambda a: F.concat([a, np.ones((1, 3))], axis=0),
     lambda a: np.concatenate([a, np.ones((1, 3))], 0), normal(2, 3))

# fan-out: a value used several times gets the sum of its gradients
case("fanout-x*x+x", lambda x: x * x + x, lambda x: x * x + x, normal(3, 4))
case("fanout-diamond", lambda x: (x * 2).exp() * (x * 2).tanh() + x,
     lambda x: np.exp(2 * x) * np.tanh(2 * x) + x, normal(3, 4))


def _diamond(x):
    a = x * 2.0          # one node feeding two branches that meet again
    return a.exp() * a.tanh()


case("fanout-shared-node", _diamond, lambda x: np.exp(2 * x) * np.tanh(2 * x), normal(3, 4))
case("fanout-matmul-self", lambda x: x @ x.T, lambda x: x @ x.T, normal(3, 4))
case("fanout-normalize",
     lambda x: (x - x.mean(axis=1, keepdims=True)) / (x * x).sum(axis=1, keepdims=True).sqrt(),
     lambda x: (x - x.mean(axis=1, keepdims=True)) / np.sqrt((x * x).sum(axis=1, keepdims=True)), normal(3, 4))
case("fanout-softmax-weighted", lambda x: F.softmax(x) * x, lambda x: np.exp(np_log_softmax(x)) * x, normal(3, 4))


@pytest.mark.parametrize("fn, ref, inputs", CASES)
def test_gradcheck(fn, ref, inputs):
    assert gradcheck(fn, *inputs) is True


@pytest.mark.parametrize("fn, ref, inputs", CASES)
def test_forward_matches_numpy(fn, ref, inputs):
    args = [db.tensor(x, dtype=np.float64) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else x
            for x in inputs]
    out = fn(*args)
    expected = np.asarray(ref(*inputs))
    assert out.dtype == np.float64
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-12)


# -- exact gradient values -------------------------------------------------------------
def leaf(values, dtype=np.float64):
    return db.tensor(values, requires_grad=True, dtype=dtype)


def test_repeated_indices_accumulate():
    x = leaf([10.0, 20.0, 30.0])
    x[[0, 0, 2]].sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 0.0, 1.0])

    m = leaf(np.zeros((2, 3)))
    (m[[1, 1, 0], [2, 2, 2]] * np.array([1.0, 2.0, 4.0])).sum().backward()
    np.testing.assert_array_equal(m.grad, [[0, 0, 4], [0, 0, 3]])


def test_embedding_rows_used_twice_sum_their_gradients():
    w = leaf(np.arange(12.0).reshape(4, 3))
    F.embedding(w, np.array([[0, 3, 0], [0, 1, 3]])).sum().backward()
    np.testing.assert_array_equal(w.grad, [[3] * 3, [1] * 3, [0] * 3, [2] * 3])


def test_add_distributes_and_unbroadcasts():
    a, b = leaf(np.ones((3, 1))), leaf(np.ones((1, 4)))
    (a + b).sum().backward()
    np.testing.assert_array_equal(a.grad, np.full((3, 1), 4.0))
    np.testing.assert_array_equal(b.grad, np.full((1, 4), 3.0))


def test_multiply_swaps():
    a, b = leaf([2.0, 3.0]), leaf([5.0, 7.0])
    (a * b).sum().backward()
    np.testing.assert_array_equal(a.grad, [5.0, 7.0])
    np.testing.assert_array_equal(b.grad, [2.0, 3.0])


def test_max_routes_and_ties_share():
    x = leaf([1.0, 5.0, 2.0])
    x.max().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 1.0, 0.0])

    y = leaf([[3.0, 1.0, 3.0], [0.0, 2.0, 1.0]])
    y.max(axis=1).sum().backward()
    np.testing.assert_array_equal(y.grad, [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]])


def test_fanout_gradient_value():
    x = leaf([1.0, -2.0, 3.0])
    (x * x + x).sum().backward()
    np.testing.assert_array_equal(x.grad, 2 * np.array([1.0, -2.0, 3.0]) + 1)


@pytest.mark.parametrize("fn, point", [
    (F.relu, 0.0),                    # torch's convention: 0 at the kink
    (lambda a: a.abs(), 0.0),
    (F.hardtanh, 1.0),                # 1 strictly inside, 0 outside and on the edge
    (F.hardtanh, -1.0),
    (lambda a: a ** 0, 0.0),          # a ** 0 is constant; 0 * 0 ** -1 must not leak a nan
])
def test_gradient_at_kinks_is_zero(fn, point):
    x = leaf([point])
    fn(x).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0])


def test_leaky_relu_slope_on_negative_side():
    x = leaf([-2.0, 3.0])
    F.leaky_relu(x, slope=0.1).sum().backward()
    np.testing.assert_allclose(x.grad, [0.1, 1.0])


# -- errors name the op and the shapes ---------------------------------------------------
def test_matmul_shape_error_names_both_shapes():
    with pytest.raises(ShapeError, match=r"matmul.*\(3, 4\).*\(5, 2\)"):
        db.tensor(np.ones((3, 4))) @ db.tensor(np.ones((5, 2)))


def test_add_shape_error_names_both_shapes():
    with pytest.raises(ShapeError, match=r"add.*\(3, 4\).*\(2,\)"):
        db.tensor(np.ones((3, 4))) + db.tensor(np.ones(2))


def test_reshape_and_concat_shape_errors():
    with pytest.raises(ShapeError, match=r"reshape.*\(2, 3\)"):
        db.tensor(np.ones((2, 3))).reshape(4, 2)
    with pytest.raises(ShapeError, match=r"concat.*\(2, 3\).*\(2, 4\)"):
        F.concat([db.tensor(np.ones((2, 3))), db.tensor(np.ones((2, 4)))], axis=0)


def test_index_out_of_bounds_names_getitem():
    with pytest.raises(ShapeError, match=r"getitem.*\(3,\).*out of bounds"):
        db.tensor([1.0, 2.0, 3.0])[7]


def test_power_with_tensor_exponent_is_a_type_error():
    x = db.tensor([1.0, 2.0])
    with pytest.raises(TypeError, match="exponent"):
        x ** db.tensor(2.0)


def test_missing_vjp_names_op_and_argument():
    half = Primitive("half_add", np.add, lambda g, ans, a, b: g)
    a, b = leaf([1.0]), leaf([2.0])
    with pytest.raises(TypeError, match="VJP of half_add wrt argument 1 is not defined"):
        half(a, b).sum().backward()
