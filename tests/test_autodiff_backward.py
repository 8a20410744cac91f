"""The reverse-mode walk: deep graphs, freeing, errors, no_grad, accumulation, dtypes, and
gradcheck itself."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest

import distbp as db
import distbp.functional as F
from distbp import nn
from distbp.autodiff import GradcheckError, Primitive, ShapeError, gradcheck, is_grad_enabled, no_grad

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def leaf(values, dtype=np.float64):
    return db.tensor(values, requires_grad=True, dtype=dtype)


# -- deep graphs ---------------------------------------------------------------------------
def test_chain_of_100k_ops_backward_without_recursion_error():
    x = leaf(1.0)
    y = x
    for _ in range(100_000):
        y = y * 1.0000001
    y.backward()
    np.testing.assert_allclose(x.grad, 1.0000001 ** 100_000, rtol=1e-12)
    np.testing.assert_allclose(y.data, 1.0000001 ** 100_000, rtol=1e-12)


def test_dropping_a_deep_graph_without_backward_does_not_crash():
    x = leaf([1.0])
    y = x
    for _ in range(100_000):
        y = y + 0.0
    probe = weakref.ref(y)
    del y
    gc.collect()
    assert probe() is None


# -- the graph is freed --------------------------------------------------------------------
def test_graph_is_freed_after_backward():
    x = leaf([1.0, 2.0])
    h = x * 3.0
    probe = weakref.ref(h)
    loss = (h * h).sum()
    del h  # only the graph refers to the intermediate now
    assert probe() is not None
    loss.backward()
    assert probe() is None, "backward kept an intermediate Tensor alive"
    np.testing.assert_allclose(x.grad, 18.0 * np.array([1.0, 2.0]))


def test_second_backward_through_freed_graph_raises():
    x = leaf([1.0, 2.0])
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="already freed"):
        loss.backward()


def test_backward_through_a_subgraph_freed_by_another_backward_raises():
    x = leaf([1.0, 2.0])
    h = x.exp()
    first, second = h.sum(), (h * 2.0).sum()
    first.backward()
    with pytest.raises(RuntimeError, match="already freed"):
        second.backward()


# -- errors --------------------------------------------------------------------------------
def test_non_scalar_backward_without_gradient_names_the_shape():
    y = leaf(np.ones((2, 3))) * 2.0
    with pytest.raises(ShapeError, match=r"\(2, 3\)"):
        y.backward()


def test_backward_with_wrong_gradient_shape_names_both():
    y = leaf(np.ones((2, 3))) * 2.0
    with pytest.raises(ShapeError, match=r"\(3, 2\).*\(2, 3\)"):
        y.backward(np.ones((3, 2)))


def test_backward_on_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        (db.tensor([1.0]) * 2.0).sum().backward()


def test_backward_with_explicit_gradient():
    x = leaf([[1.0, 2.0], [3.0, 4.0]])
    g = np.array([[1.0, -1.0], [0.5, 2.0]])
    (x * x).backward(g)
    np.testing.assert_array_equal(x.grad, 2 * x.data * g)


def test_requires_grad_on_integer_tensor_raises():
    with pytest.raises(TypeError, match="int64"):
        db.tensor([1, 2, 3], dtype=np.int64, requires_grad=True)


# -- no_grad ---------------------------------------------------------------------------------
def test_no_grad_context_records_nothing():
    x = leaf([1.0, 2.0])
    with no_grad():
        assert not is_grad_enabled()
        y = (x * 2.0).exp().sum()
    assert is_grad_enabled()
    assert y.requires_grad is False and y._record is None
    assert (x * 2.0).requires_grad is True


def test_no_grad_is_restored_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            1 / 0
    assert is_grad_enabled()


def test_nested_no_grad_restores_the_outer_state():
    with no_grad():
        with no_grad():
            pass
        assert not is_grad_enabled()
    assert is_grad_enabled()


def test_no_grad_decorator_records_nothing_and_restores():
    x = leaf([3.0])

    @no_grad()
    def step(t):
        assert not is_grad_enabled()
        return t * 2.0

    @no_grad()
    def fails():
        raise KeyError("boom")

    assert step(x).requires_grad is False
    assert is_grad_enabled()
    with pytest.raises(KeyError):
        fails()
    assert is_grad_enabled()


def test_no_grad_decorator_on_a_recursive_function_restores():
    # One decorator instance serves every call; it must not keep a single saved state.
    @no_grad()
    def depth(n):
        return 0 if n == 0 else 1 + depth(n - 1)

    assert depth(3) == 3
    assert is_grad_enabled()


def test_grad_mode_is_per_thread():
    seen = []
    with no_grad():
        worker = threading.Thread(target=lambda: seen.append(is_grad_enabled()))
        worker.start()
        worker.join()
    assert seen == [True]


# -- accumulation and aliasing ------------------------------------------------------------------
def test_leaf_gradients_accumulate_across_backward_calls():
    x = leaf([1.0, 2.0, 3.0])
    (x * x).sum().backward()
    (x * 3.0).sum().backward()  # a new forward each time, as in torch
    np.testing.assert_array_equal(x.grad, 2 * x.data + 3.0)
    x.zero_grad()
    assert x.grad is None


def test_backward_never_writes_into_the_callers_gradient():
    a, b = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    g = np.array([1.0, 1.0])
    (a + b).backward(g)  # add's VJP returns g itself for both inputs
    (a * 2.0).sum().backward()
    np.testing.assert_array_equal(g, [1.0, 1.0])
    np.testing.assert_array_equal(a.grad, [3.0, 3.0])
    np.testing.assert_array_equal(b.grad, [1.0, 1.0])


def test_detach_cuts_the_graph():
    x = leaf([1.0, 2.0])
    (x * x.detach()).sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 2.0])


def test_iterating_and_unpacking_a_tensor():
    x = leaf([[1.0, 2.0], [3.0, 4.0]])
    first, second = x
    np.testing.assert_array_equal(second.data, [3.0, 4.0])
    rows = list(x)
    assert len(rows) == 2
    (first.sum() + 2.0 * rows[1].sum()).backward()
    np.testing.assert_array_equal(x.grad, [[1.0, 1.0], [2.0, 2.0]])


def test_tensor_copies_its_input():
    a = np.array([1.0, 2.0])
    t = db.tensor(a)
    a[0] = 99.0
    assert t.data[0] == 1.0


# -- dtypes --------------------------------------------------------------------------------------
CONSTANTS = [2.5, 3, np.float64(2.5), np.float32(2.5), np.ones(3), np.arange(1, 4), [1.0, 2.0, 3.0]]


@pytest.mark.parametrize("const", CONSTANTS, ids=lambda c: type(c).__name__ + str(np.asarray(c).dtype))
def test_float32_stays_float32_with_any_constant(const):
    x = leaf(np.ones(3) * 2.0, dtype=np.float32)
    results = [x + const, const + x, x - const, const - x, x * const, const * x, x / const, const / x]
    for r in results:
        assert r.dtype == np.float32, r
    sum(r.sum() for r in results).backward()
    assert x.grad.dtype == np.float32


def test_float32_stays_float32_through_every_function():
    x = leaf(np.linspace(0.5, 2.0, 6).reshape(2, 3), dtype=np.float32)
    outs = [x.exp(), x.log(), x.sqrt(), x.abs(), x.tanh(), x.sigmoid(), x.relu(), x ** 2, x ** 0.5,
            F.leaky_relu(x), F.hardtanh(x), F.softsign(x), F.softmax(x), F.log_softmax(x, 0),
            x.mean(), x.max(axis=0), x.reshape(-1), x.T, x[0], x @ np.ones(3), np.ones((2, 2)) @ x,
            F.cross_entropy(x, [0, 2]), F.multi_margin(x, [1, 1]), F.mse_loss(x, np.zeros((2, 3))),
            F.max_margin(x[:, 0], x[:, 1]), F.dropout(x, 0.5), F.embedding(x, np.array([1, 1])),
            F.concat([x, x], 1), F.stack([x, x], -1)]
    for out in outs:
        assert out.dtype == np.float32, out
    sum(o.sum() for o in outs).backward()
    assert x.grad.dtype == np.float32


def test_default_dtype_is_float32_and_float64_on_request():
    assert db.tensor(np.ones(2, dtype=np.float64)).dtype == np.float32
    assert db.tensor([1, 2]).dtype == np.int64  # integers stay integers, as torch.tensor([1, 2])
    x = leaf([1.0, 2.0], dtype=np.float64)
    y = (x * 1.5 + np.float32(1)) @ np.ones(2, dtype=np.float32)
    assert y.dtype == np.float64
    y.backward()
    assert x.grad.dtype == np.float64


def test_gradient_dtype_follows_the_data_in_mixed_graphs():
    # A float32 leaf combined with a float64 tensor: the result is float64 (numpy's rule),
    # but each leaf's gradient has its own dtype.
    a, b = leaf([1.0, 2.0], np.float32), leaf([3.0, 4.0], np.float64)
    out = (a * b).sum()
    assert out.dtype == np.float64
    out.backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64
    np.testing.assert_array_equal(a.grad, [3.0, 4.0])


# -- gradcheck itself ---------------------------------------------------------------------
bad_square = Primitive("bad_square", np.square, lambda g, ans, a: g * a)  # the true VJP is 2 a g


def test_gradcheck_catches_a_wrong_vjp_and_names_input_index_and_values():
    a = np.array([1.0, -2.0])
    b = np.array([[0.5, 1.0], [3.0, -0.25]])
    with pytest.raises(GradcheckError) as err:
        gradcheck(lambda a, b: a.sum() + bad_square(b).sum(), a, b)
    msg = str(err.value)
    assert "input 1" in msg
    assert "(1, 0)" in msg  # the largest |b| has the largest error: analytic b vs numeric 2b
    assert "analytic 3 " in msg and "numeric 6" in msg


def test_gradcheck_uses_a_generic_cotangent():
    # This VJP ignores g: right for sum(out) (g = 1), wrong for any other cotangent.
    ignores_g = Primitive("ignores_g", np.square, lambda g, ans, a: 2 * a)
    x = np.array([1.0, 2.0, 3.0])
    assert gradcheck(lambda a: ignores_g(a).sum(), x)
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(lambda a: ignores_g(a), x)


def test_gradcheck_reports_non_finite_gradients():
    # sqrt at 0: the analytic gradient is inf, the central difference nan (sqrt of -eps).
    with np.errstate(invalid="ignore", divide="ignore"), pytest.raises(GradcheckError, match=r"index \(1,\)"):
        gradcheck(lambda a: a.sqrt().sum(), np.array([1.0, 0.0]))
    # A finite analytic gradient against a nan numeric one is an error too, not a pass.
    nan_nearby = Primitive("nan_nearby", lambda a: np.where(a == 1.0, a, np.nan), lambda g, ans, a: g)
    with pytest.raises(GradcheckError, match="analytic 1 vs numeric nan"):
        gradcheck(lambda a: nan_nearby(a).sum(), np.array([1.0]))


def test_gradcheck_rejects_float32_output():
    with pytest.raises(TypeError, match="float64.*float32"):
        gradcheck(lambda a: db.tensor(a.data, dtype=np.float32), np.ones(3))
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda a: 1.0, np.ones(3))


def test_gradcheck_passes_integer_arrays_and_constant_tensors_through():
    seen = []

    def fn(x, idx, c):
        seen.append((idx.dtype, c.requires_grad))
        return (x[idx] * c).sum()

    assert gradcheck(fn, np.array([1.0, 2.0, 3.0]), np.array([2, 2]), db.tensor([1.0, 2.0], dtype=np.float64))
    assert seen[0] == (np.dtype(np.int64), False)


def test_gradcheck_leaves_the_callers_arrays_untouched():
    x = np.array([0.5, 1.5])
    before = x.copy()
    gradcheck(lambda a: (a * a).sum(), x)
    np.testing.assert_array_equal(x, before)


def test_in_place_vjps_never_touch_a_gradient_another_node_sees():
    # add hands the same g to both relus; a product's fresh gradient may be reused in place.
    rng = np.random.default_rng(5)
    xs = [db.tensor(rng.standard_normal((3, 4)), requires_grad=True, dtype=np.float64) for _ in range(3)]

    def f(a, b, c):
        shared = F.relu(a) + F.relu(b)              # g reaches both relus as the same array
        chain = F.relu((c * 2.0) @ np.eye(4)).tanh()  # fresh gradients all the way down
        return (shared * chain).sigmoid().exp().sum(axis=1)

    assert gradcheck(f, *xs)


def test_a_vjp_that_raises_leaves_no_pending_gradient_behind():
    """Backward keeps a non-leaf's pending gradient in its .grad slot while it walks; an error
    mid-walk must not leave any there (nor in the nodes it never reached)."""

    def broken_vjp(g, ans, a):
        raise FloatingPointError("VJP failed")

    broken = Primitive("broken", lambda a: a * 1.0, broken_vjp)
    for broken_first in (True, False):  # h gets its other contribution before or after the error
        x = db.tensor(np.ones(3), requires_grad=True)
        h = x * 2.0
        b, c = broken(h), h * 3.0
        out = ((b + c) if broken_first else (c + b)).sum()
        with pytest.raises(FloatingPointError):
            out.backward()
        assert all(t.grad is None for t in (h, b, c, out)), "a pending gradient was left behind"
        assert x.grad is None


def test_linear_bias_and_weight_gradients_are_bitwise_numpys():
    """The linear op writes its parameter gradients with matmul and the ufunc's own reduce:
    bitwise x.T @ g and g.sum(axis=0), for a batch of rows and for a batch of sequences."""
    rng = np.random.default_rng(8)
    for shape in ((5, 3), (2, 4, 3)):
        layer = nn.Linear(3, 2, rng=np.random.default_rng(0))
        nn.flatten_parameters(layer.parameters())
        x = rng.standard_normal(shape).astype(np.float32)
        g = rng.standard_normal(shape[:-1] + (2,)).astype(np.float32)
        layer(db.tensor(x)).backward(g)
        x2, g2 = x.reshape(-1, 3), g.reshape(-1, 2)
        np.testing.assert_array_equal(layer.weight.grad, x2.T @ g2)
        np.testing.assert_array_equal(layer.bias.grad, np.sum(g2, axis=0))
