"""Tensor behaves as torch.Tensor: each case against torch's documented semantics, with the
expected values computed by hand in numpy (float64), and gradcheck for what is differentiable."""

from __future__ import annotations

import math

import numpy as np
import pytest

import distbp as db
from distbp.autodiff import gradcheck, no_grad


def _t(*shape, seed=0, grad=True):
    return db.tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=grad, dtype=np.float64)


# -- dtypes ---------------------------------------------------------------------------------
def test_integer_data_stays_integer_and_floats_default_to_float32():
    assert db.tensor([1, 2, 3]).dtype == np.int64
    assert db.tensor([True, False]).dtype == np.bool_
    assert db.tensor([1.0, 2.0]).dtype == np.float32
    assert db.tensor(np.arange(3, dtype=np.int32)).dtype == np.int32
    assert db.tensor([1, 2], dtype=np.float64).dtype == np.float64


def test_size_is_numpys_int_and_torchs_method():
    t = db.tensor(np.zeros((2, 3)))
    assert t.size == 6 and t.size() == (2, 3) and t.size(1) == 3 and t.size(-2) == 2
    assert t.numel() == 6 and t.dim() == 2


# -- reductions -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sum", "mean"])
def test_reductions_take_dim_keepdim_and_axis_keepdims(name):
    x = _t(3, 4)
    want = getattr(np, name)(x.data, axis=1, keepdims=True)
    for out in (getattr(x, name)(dim=1, keepdim=True), getattr(x, name)(1, True),
                getattr(x, name)(axis=1, keepdims=True)):
        np.testing.assert_allclose(out.data, want, rtol=1e-15)
        assert out.shape == (3, 1)
    with pytest.raises(TypeError, match="not both"):
        getattr(x, name)(dim=1, axis=1)
    assert gradcheck(lambda a: getattr(a, name)(dim=0, keepdim=True), x)


def test_max_and_min_with_dim_return_values_and_indices():
    x = db.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]], requires_grad=True)
    values, indices = x.max(dim=1)
    np.testing.assert_array_equal(values.data, [5.0, 7.0])
    np.testing.assert_array_equal(indices.data, [1, 0])
    assert indices.dtype == np.int64 and not indices.requires_grad
    mins = x.min(1, keepdim=True)
    np.testing.assert_array_equal(mins.values.data, [[1.0], [0.0]])
    np.testing.assert_array_equal(mins.indices.data, [[0], [1]])
    assert x.max().item() == 7.0 and x.min().item() == 0.0
    np.testing.assert_array_equal(x.max(axis=0).data, [7.0, 5.0, 3.0])  # numpy's form: values only
    values.sum().backward()
    np.testing.assert_array_equal(x.grad, [[0, 1, 0], [1, 0, 0]])


def test_argmax_argmin():
    x = db.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]])
    assert x.argmax().item() == 3 and x.argmin().item() == 4  # over the flattened tensor
    np.testing.assert_array_equal(x.argmax(dim=1).data, [1, 0])
    np.testing.assert_array_equal(x.argmin(dim=0, keepdim=True).data, [[0, 1, 0]])


def test_var_and_std_use_bessels_correction_by_default():
    x = _t(4, 5, seed=1)
    np.testing.assert_allclose(x.var().data, np.var(x.data, ddof=1), rtol=1e-14)
    np.testing.assert_allclose(x.std(dim=1).data, np.std(x.data, axis=1, ddof=1), rtol=1e-14)
    np.testing.assert_allclose(x.var(dim=0, unbiased=False).data, np.var(x.data, axis=0), rtol=1e-14)
    np.testing.assert_allclose(x.var(correction=0).data, np.var(x.data), rtol=1e-14)
    assert gradcheck(lambda a: a.std(dim=1, keepdim=True), x)
    assert gradcheck(lambda a: a.var(), x)


@pytest.mark.parametrize("p", [1, 2, 3, float("inf"), "fro"])
def test_norm(p):
    x = _t(3, 4, seed=2)
    q = 2 if p == "fro" else p
    want = np.max(np.abs(x.data)) if q == float("inf") else np.sum(np.abs(x.data) ** q) ** (1 / q)
    np.testing.assert_allclose(x.norm(p).data, want, rtol=1e-14)
    np.testing.assert_allclose(x.norm(q, dim=1).data, np.linalg.norm(x.data, ord=q, axis=1), rtol=1e-14)
    assert gradcheck(lambda a: a.norm(p, dim=0), x)


# -- comparisons ----------------------------------------------------------------------------
def test_comparisons_are_elementwise_boolean_and_carry_no_gradient():
    a = db.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = db.tensor([3.0, 2.0, 1.0])
    cases = {a == b: [0, 1, 0], a != b: [1, 0, 1], a < b: [1, 0, 0], a <= b: [1, 1, 0],
             a > 2: [0, 0, 1], a >= 2: [0, 1, 1], 2 < a: [0, 0, 1], a == 2.0: [0, 1, 0]}
    for out, want in cases.items():
        assert out.dtype == np.bool_ and not out.requires_grad
        np.testing.assert_array_equal(out.data, np.array(want, dtype=bool))
    assert (a > 2).sum().item() == 1
    keyed = {a: "a", b: "b"}  # hashed by identity, as torch
    assert keyed[a] == "a" and a in keyed


# -- numpy functions -------------------------------------------------------------------------
def test_numpy_ufuncs_on_a_tensor_go_through_the_primitives():
    x = _t(3, seed=3)
    y = np.exp(x)
    assert isinstance(y, db.Tensor) and y.requires_grad
    np.testing.assert_allclose(y.data, np.exp(x.data), rtol=1e-15)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.exp(x.data), rtol=1e-15)
    z = np.sum(np.sqrt(np.abs(x)) * np.float64(2.0))
    assert isinstance(z, db.Tensor) and z.requires_grad
    assert isinstance(np.ones(3) + x, db.Tensor)


def test_a_numpy_function_that_would_cut_the_graph_is_a_type_error():
    x = _t(3, seed=4)
    with pytest.raises(TypeError, match="numpy.sinh on a Tensor that requires grad"):
        np.sinh(x)
    with pytest.raises(TypeError, match="requires grad"):
        np.cumsum(x)
    # Without a gradient to lose, numpy computes on the values, as torch's __array__ allows.
    np.testing.assert_allclose(np.sinh(x.detach()), np.sinh(x.data))
    np.testing.assert_array_equal(np.asarray(x), x.data)
    assert np.shape(x) == (3,)


# -- methods --------------------------------------------------------------------------------
def test_python_number_protocols():
    t = db.tensor([-2.5])
    assert float(t) == -2.5 and int(db.tensor(7)) == 7
    np.testing.assert_array_equal(abs(t).data, [2.5])
    x = _t(4, seed=5)
    y = 2 ** x
    np.testing.assert_allclose(y.data, 2.0 ** x.data, rtol=1e-15)
    assert gradcheck(lambda a: 2 ** a, x) and gradcheck(lambda a: a.pow(3), x)
    assert gradcheck(lambda a: abs(a), x)
    assert [1, 2, 3][db.tensor(1)] == 2


def test_clamp_passes_the_gradient_inside_the_bounds_included():
    x = db.tensor([-2.0, -1.0, 0.0, 1.0, 2.0], requires_grad=True, dtype=np.float64)
    y = x.clamp(min=-1.0, max=1.0)
    np.testing.assert_array_equal(y.data, [-1, -1, 0, 1, 1])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 1, 1, 1, 0])  # torch: 1 where min <= x <= max
    np.testing.assert_array_equal(x.clip(max=0.5).data, [-2, -1, 0, 0.5, 0.5])
    np.testing.assert_array_equal(x.clamp(min=0).data, [0, 0, 0, 1, 2])
    with pytest.raises(ValueError, match="at least one"):
        x.clamp()
    assert gradcheck(lambda a: a.clamp(-0.5, 0.5), _t(6, seed=6))


@pytest.mark.parametrize("fn,shape", [
    (lambda a: a.view(6, 2), (3, 4)), (lambda a: a.view(-1), (3, 4)),
    (lambda a: a.permute(2, 0, 1), (2, 3, 4)), (lambda a: a.transpose(0, 2), (2, 3, 4)),
    (lambda a: a.transpose(0, 1), (3, 4)), (lambda a: a.unsqueeze(1), (3, 4)),
    (lambda a: a.unsqueeze(-1), (3, 4)), (lambda a: a.squeeze(), (3, 1, 4)),
    (lambda a: a.squeeze(1), (3, 1, 4)), (lambda a: a.flatten(), (2, 3, 4)),
    (lambda a: a.flatten(1), (2, 3, 4)), (lambda a: a.expand(2, 3, 4), (3, 1)),
    (lambda a: a.expand(-1, 5), (3, 1)), (lambda a: a.softmax(dim=1), (3, 4)),
    (lambda a: a.log_softmax(dim=0), (3, 4)), (lambda a: a.clone() * a, (3, 4)),
])
def test_shape_methods_are_differentiable(fn, shape):
    assert gradcheck(fn, _t(*shape, seed=7))


def test_shape_methods_follow_torch():
    x = db.tensor(np.arange(24.0).reshape(2, 3, 4))
    assert x.permute(2, 0, 1).shape == (4, 2, 3)
    assert x.transpose(0, 2).shape == (4, 3, 2)  # torch: swaps two dimensions
    assert db.tensor(np.ones((3, 4))).transpose(0, 1).shape == (4, 3)
    assert x.unsqueeze(0).shape == (1, 2, 3, 4) and x.unsqueeze(-1).shape == (2, 3, 4, 1)
    assert x.squeeze(0).shape == (2, 3, 4)  # not of size 1: unchanged, as torch
    assert x.flatten(0, 1).shape == (6, 4) and x.flatten().shape == (24,)
    assert db.tensor(np.ones((3, 1))).expand(2, -1, 4).shape == (2, 3, 4)
    np.testing.assert_allclose(x.softmax(dim=-1).data.sum(axis=-1), 1.0, rtol=1e-6)
    assert x.tolist()[1][2][3] == 23.0


def test_dtype_conversions():
    x = db.tensor([1.7, -2.2], requires_grad=True)
    assert x.double().dtype == np.float64 and x.float() is x
    np.testing.assert_array_equal(x.long().data, [1, -2])
    assert x.long().dtype == np.int64 and not x.long().requires_grad
    assert x.to("cpu") is x and x.to(np.float64).dtype == np.float64
    y = x.double() * 3.0
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, [3.0, 3.0])


# -- in place and autograd --------------------------------------------------------------------
def test_in_place_ops_on_leaves_and_under_no_grad():
    w = db.nn.Parameter(np.ones(3))
    assert w.add_(1.0) is w
    np.testing.assert_array_equal(w.data, [2, 2, 2])
    w.mul_(db.tensor([1.0, 2.0, 3.0])).sub_(1.0, alpha=2.0)
    np.testing.assert_array_equal(w.data, [0, 2, 4])
    w.fill_(5.0)
    np.testing.assert_array_equal(w.data, [5, 5, 5])
    w.copy_(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(w.data, [1, 2, 3])
    w.zero_()
    np.testing.assert_array_equal(w.data, [0, 0, 0])
    model = db.nn.Linear(2, 3)
    db.optim.SGD(model.parameters(), lr=0.1)  # packs the parameters into a flat buffer
    with no_grad():
        model.bias.fill_(0.5)
        model.weight.mul_(0.0)
    np.testing.assert_array_equal(model.bias.data, [0.5] * 3)
    assert np.shares_memory(model.bias.data, model.bias._flat.data)  # still a view


def test_in_place_on_a_graph_node_is_refused():
    x = _t(3)
    y = x * 2
    with pytest.raises(RuntimeError, match="add_: in-place change of a tensor computed in a recorded graph"):
        y.add_(1.0)
    with no_grad():
        y.add_(1.0)  # no graph is being recorded: allowed


def test_autograd_attributes():
    x = _t(3)
    y = x * 2
    assert x.is_leaf and not y.is_leaf and x.grad_fn is None and y.grad_fn.name == "multiply"
    z = db.tensor([1.0, 2.0])
    assert z.requires_grad_() is z and z.requires_grad
    z.requires_grad_(False)
    assert not z.requires_grad
    with pytest.raises(TypeError, match="floating-point"):
        db.tensor([1, 2]).requires_grad_()


def test_retain_grad_keeps_a_non_leaf_gradient():
    x = _t(3)
    y = x * 3
    y.retain_grad()
    z = (y * y).sum()
    z.backward()
    np.testing.assert_allclose(y.grad, 2 * y.data, rtol=1e-15)
    np.testing.assert_allclose(x.grad, 18 * x.data, rtol=1e-15)
    w = x * 5
    (w * 2).sum().backward()
    assert w.grad is None  # not retained: a non-leaf's gradient is not kept


def test_backward_with_retain_graph_runs_twice_and_accumulates():
    x = _t(4)
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    first = x.grad.copy()
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * first, rtol=1e-15)
    np.testing.assert_allclose(first, np.exp(x.data) * (1 + x.data), rtol=1e-15)
    with pytest.raises(RuntimeError, match="already freed"):
        y.backward()


def test_non_leaf_used_twice_after_a_vjp_that_returns_a_view_of_g():
    """The pending gradient of u arrives first as g itself (add's VJP returns g): it must not
    be summed into in place, since g is shared with v's gradient."""
    x, y = _t(3, seed=1), _t(3, seed=2)
    u = x * 2
    v = y * 5
    w = u + v
    b = u * 3
    (w + b).sum().backward()
    np.testing.assert_allclose(x.grad, np.full(3, 2.0 + 6.0))
    np.testing.assert_allclose(y.grad, np.full(3, 5.0))
    for make in (lambda u: u.sum(), lambda u: u.reshape(3, 1).sum(), lambda u: u[1:].sum()):
        x = _t(3, seed=3)
        u = x * 2
        (make(u) + (u * 3).sum()).backward()
        mask = np.ones(3) if make(db.tensor(np.ones(3))).item() == 3 else np.array([0.0, 1.0, 1.0])
        np.testing.assert_allclose(x.grad, 2 * mask + 6.0)


def test_torch_agrees_where_installed():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    a = rng.standard_normal((3, 4))
    x, tx = db.tensor(a, requires_grad=True, dtype=np.float64), torch.tensor(a, requires_grad=True)
    ours = (x.clamp(-0.5, 0.7) * x.std(dim=1, keepdim=True) + 2 ** x.softmax(dim=0)).norm(3, dim=1).sum()
    theirs = (tx.clamp(-0.5, 0.7) * tx.std(dim=1, keepdim=True) + 2 ** tx.softmax(dim=0)).norm(3, dim=1).sum()
    ours.backward()
    theirs.backward()
    np.testing.assert_allclose(ours.item(), theirs.item(), rtol=1e-12)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-10)
    assert math.isclose(float(x.var()), float(tx.var().detach()), rel_tol=1e-12)
