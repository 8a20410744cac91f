"""Flat buffers (docs/ARCHITECTURE.md, invariant 4): every parameter a view of one buffer, every gradient a view
of another, zero_grad in O(1) without stale gradients."""

from __future__ import annotations

import numpy as np
import pytest

import distbp as db
import distbp.functional as F
from distbp import nn
from distbp.autodiff import ShapeError

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


class TwoBranches(nn.Module):
    """Two linear branches; ``forward(x, use_b)`` can leave branch b out of the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(3, 2)

    def forward(self, x, use_b: bool = True):
        out = self.a(x)
        return out + self.b(x) if use_b else out


def twin_models(cls=nn.MLP, *args):
    """Two identical models (same seed); the second one flattened."""
    db.manual_seed(11)
    plain = cls(*args)
    db.manual_seed(11)
    flat_model = cls(*args)
    return plain, flat_model, nn.flatten_parameters(flat_model.parameters())


def batch(seed=0, shape=(4, 3)):
    return db.tensor(np.random.default_rng(seed).standard_normal(shape))


def test_parameters_are_views_in_named_parameters_order():
    model = nn.MLP([3, 5, 2])
    before = [p.data.copy() for p in model.parameters()]
    flat = nn.flatten_parameters(model.parameters())
    params = [p for _, p in model.named_parameters()]
    assert flat.params == params
    assert flat.data.dtype == np.float32 and flat.data.flags.c_contiguous
    assert list(flat.offsets) == [0, 15, 20, 30, 32] and flat.numel == 32
    for p, start, end, old in zip(params, flat.offsets[:-1], flat.offsets[1:], before):
        assert np.shares_memory(p.data, flat.data)
        np.testing.assert_array_equal(p.data, old)  # values preserved
        np.testing.assert_array_equal(flat.data[start:end], old.reshape(-1))
    flat.data[15] = 42.0  # a write to the buffer is a write to the parameter
    assert params[1].data[0] == 42.0


def test_gradients_are_views_and_equal_the_unflattened_model():
    plain, model, flat = twin_models(nn.MLP, [3, 5, 2])
    x, t = batch(), [0, 1, 1, 0]
    F.cross_entropy(plain(x), t).backward()
    F.cross_entropy(model(x), t).backward()
    for (name, p), q, start, end in zip(model.named_parameters(), plain.parameters(),
                                        flat.offsets[:-1], flat.offsets[1:]):
        assert np.shares_memory(p.grad, flat.grad), name
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)
        np.testing.assert_array_equal(flat.grad[start:end], q.grad.reshape(-1), err_msg=name)
    np.testing.assert_array_equal(flat.flat_grad(),
                                  np.concatenate([q.grad.reshape(-1) for q in plain.parameters()]))


def test_zero_grad_is_o1_and_leaves_no_stale_gradient():
    plain, model, flat = twin_models(TwoBranches)
    model(batch(0)).sum().backward()          # both branches get a gradient
    stale = flat.grad.copy()
    flat.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    np.testing.assert_array_equal(flat.grad, stale)  # O(1): nothing was written

    model(batch(1), use_b=False).sum().backward()   # branch b unused this time
    plain(batch(1), use_b=False).sum().backward()
    assert model.b.weight.grad is None and model.b.bias.grad is None
    g = flat.flat_grad()
    n_a = model.a.weight.size + model.a.bias.size
    np.testing.assert_array_equal(g[n_a:], 0.0)
    np.testing.assert_array_equal(g[:n_a], np.concatenate([plain.a.weight.grad.reshape(-1), plain.a.bias.grad]))
    assert np.any(stale[:n_a] != g[:n_a])


def test_module_zero_grad_also_forgets_flat_gradients():
    model = nn.MLP([3, 4, 2])
    flat = nn.flatten_parameters(model.parameters())
    model(batch()).sum().backward()
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    np.testing.assert_array_equal(flat.flat_grad(), 0.0)


def test_gradients_accumulate_without_zero_grad():
    plain, model, flat = twin_models(nn.MLP, [3, 4, 2])
    for seed in (0, 1):
        plain(batch(seed)).sum().backward()
        model(batch(seed)).sum().backward()
    single = nn.MLP([3, 4, 2])
    single.load_state_dict(plain.state_dict())
    single(batch(0)).sum().backward()
    for p, q, s in zip(model.parameters(), plain.parameters(), single.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-6)
        assert not np.allclose(p.grad, s.grad)  # the second backward really added something
        assert np.shares_memory(p.grad, flat.grad)


def test_assigning_data_copies_into_the_view():
    model = nn.MLP([3, 4, 2])
    flat = nn.flatten_parameters(model.parameters())
    p = model[0].bias
    p.data = np.array([1.0, 2.0, 3.0, 4.0])
    assert np.shares_memory(p.data, flat.data)
    np.testing.assert_array_equal(flat.data[12:16], [1, 2, 3, 4])
    with pytest.raises(ShapeError, match=r"\(3,\).*\(4,\)"):
        p.data = np.zeros(3)


def test_assigning_grad_copies_into_the_gradient_view():
    model = nn.MLP([3, 4, 2])
    flat = nn.flatten_parameters(model.parameters())
    model[0].bias.grad = np.full(4, 7.0)
    np.testing.assert_array_equal(flat.grad[12:16], 7.0)
    np.testing.assert_array_equal(model[0].bias.grad, 7.0)


def test_flattening_again_returns_the_same_buffer_and_subsets_are_rejected():
    model = nn.MLP([3, 4, 2])
    flat = nn.flatten_parameters(model.parameters())
    assert nn.flatten_parameters(model.parameters()) is flat
    with pytest.raises(ValueError, match="parameter 0 .*\\(3, 4\\).*another flat buffer"):
        nn.flatten_parameters(list(model.parameters())[:2])
    with pytest.raises(ValueError, match="twice"):
        nn.flatten_parameters([model[0].weight, model[0].weight])
    with pytest.raises(ValueError, match="no parameters"):
        nn.flatten_parameters([])
    with pytest.raises(TypeError, match="several dtypes"):
        nn.flatten_parameters([nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2), dtype=np.float64)])


def test_parameter_gradient_before_flattening_is_kept():
    model = nn.MLP([3, 4, 2])
    model(batch()).sum().backward()
    grads = [p.grad.copy() for p in model.parameters()]
    flat = nn.flatten_parameters(model.parameters())
    for p, g in zip(model.parameters(), grads):
        assert np.shares_memory(p.grad, flat.grad)
        np.testing.assert_array_equal(p.grad, g)


def test_module_to_refuses_a_dtype_change_once_the_parameters_are_in_a_buffer():
    """Casting would leave the optimizer's buffer stale (its next step would fail or update
    nothing): refused at the .to call, as the message says, with the buffer untouched."""
    model = nn.MLP([3, 4, 2])
    flat = nn.flatten_parameters(model.parameters())
    with pytest.raises(RuntimeError, match="cast the model before creating the optimizer"):
        model.to(np.float64)
    assert model.to(np.float32) is model  # a cast that changes nothing is fine
    assert all(p.dtype == np.float32 and np.shares_memory(p.data, flat.data) for p in model.parameters())


def test_grad_setter_rejects_wrong_shape_and_counts_written_views():
    from distbp.autodiff import ShapeError
    lin = nn.Linear(3, 4)
    flat = nn.flatten_parameters(lin.parameters())
    with pytest.raises(ShapeError, match=r"\(4,\).*\(3, 4\)"):
        lin.weight.grad = np.ones(4)
    lin.weight.grad = np.ones((3, 4))
    assert flat.written == 1
    lin.weight.grad = np.full((3, 4), 2.0)  # rewriting the same view does not count twice
    assert flat.written == 1
    lin.weight.grad = None
    assert flat.written == 0 and lin.weight.grad is None
    lin.bias.grad = np.arange(4.0)
    g = flat.flat_grad()  # fills the weight's view with zeros and counts it
    assert flat.written == 2
    np.testing.assert_array_equal(g, np.concatenate([np.zeros(12), np.arange(4.0)]))
    flat.zero_grad()
    assert flat.written == 0 and lin.bias.grad is None


def _grads_flat_and_plain(build, forward):
    """The same model twice, one packed into a flat buffer: their gradients must be equal."""
    db.manual_seed(1)
    plain = build()
    db.manual_seed(1)
    packed = build()
    nn.flatten_parameters(packed.parameters())
    for m in (plain, packed):
        forward(m).backward()
    return [(n, p.grad) for n, p in plain.named_parameters()], [(n, p.grad) for n, p in packed.named_parameters()]


def test_direct_writes_into_the_flat_buffer_equal_the_plain_gradients():
    # Linear (matmul + bias written in place), embedding rows used twice (scatter into the view),
    # and a weight used by two layers (a second contribution added to the first).
    ids = np.array([[1, 2, 1], [3, 1, 0]])

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.window = nn.WindowClassifier(5, 4, 1, 6, 3)
            self.shared = nn.Linear(3, 3)

        def forward(self, x):
            return self.shared(self.shared(self.window(x)))

    plain, packed = _grads_flat_and_plain(Tied, lambda m: F.cross_entropy(m(ids), np.array([0, 2])))
    for (name, a), (_, b) in zip(plain, packed):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7, err_msg=name)
    emb = dict(packed)["window.embed.weight"]
    assert np.all(emb[4] == 0) and np.any(emb[1] != 0)  # id 4 unused: its rows are zero, not stale
