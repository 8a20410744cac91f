"""nn: registration, modes, dropout, state dicts, initializers, and the two models' gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest

import distbp as db
import distbp.functional as F
from distbp import nn
from distbp.autodiff import ShapeError, gradcheck, no_grad, numeric_grad

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


# -- registration -----------------------------------------------------------------------------
class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(3, 4)
        self.scale = nn.Parameter(np.ones(4))
        self.head_a = nn.Linear(4, 2)
        self.head_b = self.head_a          # shared module
        self.tied = self.scale             # shared parameter under a second name

    def forward(self, x):
        h = self.trunk(x) * self.scale
        return self.head_a(h) + self.head_b(h)


def test_mlp_parameter_names_and_order():
    mlp = nn.MLP([3, 5, 4, 2])
    names = [n for n, _ in mlp.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert [p.shape for p in mlp.parameters()] == [(3, 5), (5,), (5, 4), (4,), (4, 2), (2,)]
    assert mlp.num_parameters() == 3 * 5 + 5 + 5 * 4 + 4 + 4 * 2 + 2
    with_dropout = nn.MLP([3, 5, 4, 2], dropout=0.5)
    assert [n for n, _ in with_dropout.named_parameters()][2::2] == ["3.weight", "6.weight"]


def test_registration_follows_assignment_order_and_shared_params_appear_once():
    model = TwoHeads()
    names = [n for n, _ in model.named_parameters()]
    # As torch: a module's own parameters first, then its submodules', each in assignment order.
    assert names == ["scale", "trunk.weight", "trunk.bias", "head_a.weight", "head_a.bias"]
    assert len(list(model.parameters())) == len({id(p) for p in model.parameters()}) == 5

    # The shared head is used twice: its gradient is the sum over both uses.
    x = np.random.default_rng(0).standard_normal((3, 3))
    model(db.tensor(x)).sum().backward()
    h = (x @ model.trunk.weight.data + model.trunk.bias.data) * model.scale.data
    np.testing.assert_allclose(model.head_a.weight.grad, 2 * h.T @ np.ones((3, 2)), rtol=1e-5)
    np.testing.assert_allclose(model.head_a.bias.grad, [6.0, 6.0], rtol=1e-6)


def test_reassigning_an_attribute_unregisters_it():
    layer = nn.Linear(2, 3)
    layer.bias = None
    assert [n for n, _ in layer.named_parameters()] == ["weight"]
    y = layer(db.tensor(np.ones((1, 2))))
    np.testing.assert_allclose(y.data, np.ones((1, 2)) @ layer.weight.data, rtol=1e-6)


def test_module_without_super_init_names_the_attribute():
    class Broken(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.ones(2))

    with pytest.raises(AttributeError, match="super\\(\\).__init__.*'w'"):
        Broken()


def test_linear_computes_x_w_plus_b():
    layer = nn.Linear(3, 2)
    layer.bias.data = np.array([0.5, -1.0])
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(layer(db.tensor(x)).data, x @ layer.weight.data + [0.5, -1.0], rtol=1e-6)
    assert layer.weight.shape == (3, 2)  # (in, out), as the notes write it


def test_linear_rejects_wrong_feature_count():
    with pytest.raises(ShapeError, match=r"Linear\(3, 2\).*\(4, 5\).*5 features, expected 3"):
        nn.Linear(3, 2)(db.tensor(np.ones((4, 5))))


def test_unknown_activation_lists_the_choices():
    with pytest.raises(ValueError, match="'swish'.*relu.*softsign"):
        nn.MLP([2, 2, 2], activation="swish")


# -- train / eval and dropout ------------------------------------------------------------------
def test_train_and_eval_propagate_to_every_submodule():
    model = nn.MLP([4, 8, 8, 2], dropout=0.3)
    assert all(m.training for _, m in model.named_modules())
    assert model.eval() is model
    assert not any(m.training for _, m in model.named_modules())
    model.train()
    assert all(m.training for _, m in model.named_modules())


def test_dropout_module_train_and_eval():
    drop = nn.Dropout(0.4, rng=np.random.default_rng(0))
    x = db.tensor(np.full((400, 500), 2.0))
    y = drop(x).data
    kept = y != 0
    np.testing.assert_allclose(y[kept], 2.0 / 0.6, rtol=1e-6)   # kept units scaled by 1 / (1 - p)
    assert abs(kept.mean() - 0.6) < 0.005
    assert abs(y.mean() - 2.0) < 0.01
    drop.eval()
    np.testing.assert_array_equal(drop(x).data, x.data)
    assert np.array_equal(nn.Dropout(0.0)(x).data, x.data)  # p = 0 is the identity in training too
    with pytest.raises(ValueError, match="1.0"):
        nn.Dropout(1.0)


def test_mlp_with_dropout_is_deterministic_only_in_eval():
    model = nn.MLP([4, 16, 2], dropout=0.5)
    x = db.tensor(np.random.default_rng(0).standard_normal((8, 4)))
    assert not np.array_equal(model(x).data, model(x).data)
    model.eval()
    np.testing.assert_array_equal(model(x).data, model(x).data)


# -- state dicts -----------------------------------------------------------------------------------
def test_state_dict_round_trip_with_copy_semantics():
    src, dst = nn.MLP([3, 4, 2]), nn.MLP([3, 4, 2])
    state = src.state_dict()
    assert list(state) == [n for n, _ in src.named_parameters()]
    x = db.tensor(np.random.default_rng(0).standard_normal((5, 3)))
    assert not np.allclose(src(x).data, dst(x).data)
    dst.load_state_dict(state)
    np.testing.assert_array_equal(dst(x).data, src(x).data)

    before = src(x).data.copy()
    for v in state.values():
        v += 100.0  # mutating the dict must not reach the model...
    np.testing.assert_array_equal(src(x).data, before)
    np.testing.assert_array_equal(dst(x).data, before)  # ...nor the model it was loaded into


def test_load_state_dict_names_every_problem_in_one_message():
    model = nn.MLP([3, 4, 2])
    state = model.state_dict()
    del state["0.bias"], state["2.weight"]
    state["extra.weight"] = np.zeros(2)
    state["0.weight"] = np.zeros((4, 3))
    with pytest.raises(ValueError) as err:
        model.load_state_dict(state)
    msg = str(err.value)
    for fragment in ("missing: 0.bias, 2.weight", "unexpected: extra.weight", "0.weight", "(4, 3)", "(3, 4)"):
        assert fragment in msg
    # Nothing was half-loaded.
    assert not np.array_equal(model.state_dict()["0.weight"], np.zeros((3, 4)))


def test_load_state_dict_non_strict_skips_names_but_not_shapes():
    model = nn.MLP([3, 4, 2])
    model.load_state_dict({"2.bias": np.array([1.0, 2.0]), "other": np.zeros(1)}, strict=False)
    np.testing.assert_array_equal(model.state_dict()["2.bias"], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"2.bias.*\(3,\)"):
        model.load_state_dict({"2.bias": np.zeros(3)}, strict=False)


# -- initializers ---------------------------------------------------------------------------------
def big(shape=(300, 500), dtype=np.float64) -> nn.Parameter:
    return nn.Parameter(np.zeros(shape), dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_xavier_uniform_bounds_and_variance(dtype):
    w = nn.init.xavier_uniform_(big(dtype=dtype), rng=np.random.default_rng(0))
    bound = math.sqrt(6.0 / (300 + 500))
    top = np.abs(w.data).max()
    assert top <= np.asarray(bound, dtype=dtype)  # float32 rounding may land exactly on the bound
    assert top > 0.999 * bound
    assert w.data.var() == pytest.approx(bound ** 2 / 3, rel=0.02)
    assert abs(w.data.mean()) < 0.01 * bound


def test_xavier_normal_std():
    w = nn.init.xavier_normal_(big(), rng=np.random.default_rng(0))
    assert w.data.std() == pytest.approx(math.sqrt(2.0 / 800), rel=0.01)


@pytest.mark.parametrize("mode, fan", [("fan_in", 300), ("fan_out", 500)])
def test_kaiming_normal_std_for_relu(mode, fan):
    w = nn.init.kaiming_normal_(big(), mode=mode, rng=np.random.default_rng(0))
    assert w.data.std() == pytest.approx(math.sqrt(2.0 / fan), rel=0.01)


def test_kaiming_normal_leaky_relu_gain():
    w = nn.init.kaiming_normal_(big(), a=0.2, nonlinearity="leaky_relu", rng=np.random.default_rng(0))
    assert w.data.std() == pytest.approx(math.sqrt(2.0 / (1 + 0.04)) / math.sqrt(300), rel=0.01)


def test_zeros_and_init_write_in_place_into_flat_views():
    model = nn.MLP([3, 4, 2])
    flat = nn.flatten_parameters(model.parameters())
    w = model[0].weight
    nn.init.zeros_(w)
    assert np.shares_memory(w.data, flat.data)
    np.testing.assert_array_equal(flat.data[:12], 0.0)
    nn.init.xavier_uniform_(w, rng=np.random.default_rng(0))
    assert np.shares_memory(w.data, flat.data)
    np.testing.assert_array_equal(flat.data[:12], w.data.reshape(-1))
    assert np.abs(flat.data[:12]).max() > 0


def test_linear_default_init_and_seeding():
    layer = nn.Linear(30, 20)
    assert np.abs(layer.weight.data).max() <= math.sqrt(6.0 / 50)
    np.testing.assert_array_equal(layer.bias.data, 0.0)
    db.manual_seed(5)
    a = nn.MLP([4, 6, 3]).state_dict()
    db.manual_seed(5)
    b = nn.MLP([4, 6, 3]).state_dict()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


# -- gradients of whole models --------------------------------------------------------------------------
def with_params(model: nn.Module, fn):
    """``fn`` run with each parameter of ``model`` replaced by the matching argument, so gradcheck
    can perturb the parameters as its own float64 inputs and still go through ``model.forward``."""
    names = [n for n, _ in model.named_parameters()]
    modules = dict(model.named_modules())

    def call(*tensors):
        saved = []
        for name, t in zip(names, tensors):
            owner, _, attr = name.rpartition(".")
            module = modules[owner]
            saved.append((module, attr, getattr(module, attr)))
            object.__setattr__(module, attr, t)  # bypass registration: a temporary swap
        try:
            return fn()
        finally:
            for module, attr, p in saved:
                object.__setattr__(module, attr, p)

    return call


@pytest.mark.parametrize("activation", sorted(nn.ACTIVATIONS))
def test_mlp_gradients_pass_gradcheck(activation):
    model = nn.MLP([3, 5, 4, 2], activation=activation, rng=np.random.default_rng(0)).to(np.float64)
    values = np.random.default_rng(1)
    for p in model.parameters():  # non-zero biases so that every parameter matters
        p.data = values.uniform(-0.5, 0.5, p.shape)
    x = db.tensor(np.random.default_rng(2).standard_normal((6, 3)), dtype=np.float64)
    t = np.array([0, 1, 1, 0, 1, 0])

    loss = F.cross_entropy(model(x), t)
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == np.float64 for p in model.parameters())

    params = [p.data.copy() for p in model.parameters()]
    assert gradcheck(with_params(model, lambda: F.cross_entropy(model(x), t)), *params)

    # The model's own backward agrees with the check's analytic gradients, parameter by parameter.
    inputs = [db.tensor(p, requires_grad=True, dtype=np.float64) for p in params]
    with_params(model, lambda: F.cross_entropy(model(x), t))(*inputs).backward()
    for p, q in zip(model.parameters(), inputs):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-15)


def numeric_grads(loss_fn, params, eps=1e-6):
    """Central differences of ``loss_fn()`` with respect to every element of each parameter."""
    def objective() -> float:
        with no_grad():
            return loss_fn().item()

    return [numeric_grad(objective, p.data, eps).reshape(p.shape) for p in params]


def test_window_classifier_shape_and_errors():
    model = nn.WindowClassifier(vocab_size=10, embed_dim=3, window=2, hidden=6, num_classes=4)
    assert model(np.array([[1, 2, 3, 4, 5], [0, 0, 9, 9, 9]])).shape == (2, 4)
    names = [n for n, _ in model.named_parameters()]
    assert names == ["embed.weight", "hidden.weight", "hidden.bias", "out.weight", "out.bias"]
    assert model.hidden.weight.shape == (5 * 3, 6)
    with pytest.raises(ShapeError, match=r"window=2.*\(2, 3\).*\(batch, 5\)"):
        model(np.array([[1, 2, 3], [4, 5, 6]]))
    with pytest.raises(ShapeError, match=r"\(5,\)"):
        model(np.array([1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="index 10"):
        model(np.array([[1, 2, 3, 4, 10]]))


@pytest.mark.parametrize("num_classes, loss", [(3, "cross_entropy"), (1, "max_margin")])
def test_window_classifier_gradients_match_central_differences(num_classes, loss):
    model = nn.WindowClassifier(vocab_size=6, embed_dim=2, window=1, hidden=4, num_classes=num_classes,
                                rng=np.random.default_rng(0)).to(np.float64)
    values = np.random.default_rng(1)
    for p in (model.hidden.bias, model.out.bias):
        p.data = values.uniform(-0.5, 0.5, p.shape)
    windows = np.array([[1, 2, 1], [2, 2, 3], [0, 1, 5]])  # ids 1 and 2 used several times; 4 unused
    if loss == "cross_entropy":
        def loss_fn():
            return F.cross_entropy(model(windows), [0, 2, 1])
    else:
        corrupt = np.array([[1, 4, 1], [2, 0, 3], [0, 3, 5]])  # the centre word replaced

        def loss_fn():
            return F.max_margin(model(windows).reshape(-1), model(corrupt).reshape(-1), margin=1.0)

    loss_fn().backward()
    params = list(model.parameters())
    for p, numeric in zip(params, numeric_grads(loss_fn, params)):
        np.testing.assert_allclose(p.grad, numeric, rtol=1e-5, atol=1e-8)
    if loss == "cross_entropy":  # id 4 appears in no window: its row gets exactly nothing
        np.testing.assert_array_equal(model.embed.weight.grad[4], 0.0)
    assert np.abs(model.embed.weight.grad[[1, 2]]).min() > 0


def test_module_to_casts_parameters_and_gradients():
    model = nn.MLP([2, 3, 1])
    model(db.tensor(np.ones((4, 2)))).sum().backward()
    model.to(np.float64)
    for p in model.parameters():
        assert p.dtype == np.float64 and p.grad.dtype == np.float64


# -- Linear + activation as one op ----------------------------------------------------------------
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_linear_act_is_the_unfused_ops_and_gradchecks(activation):
    rng = np.random.default_rng(0)
    x, w, b = (db.tensor(rng.standard_normal(s), requires_grad=True, dtype=np.float64) for s in ((5, 4), (4, 3), (3,)))
    fused = F.linear_act(x, w, b, activation)
    np.testing.assert_array_equal(fused.data, getattr(F, activation)(F.linear(x, w, b)).data)
    assert gradcheck(lambda x, w, b: F.linear_act(x, w, b, activation), x, w, b)
    with pytest.raises(ValueError, match="relu, tanh, sigmoid, not 'softsign'"):
        F.linear_act(x, w, b, "softsign")


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "softsign"])
def test_mlp_forward_is_its_layers_one_by_one(activation):
    """MLP.forward fuses Linear + activation where it can: the same bits, values and gradients,
    as calling the modules in order (softsign has no fused form and goes the plain way)."""
    rng = np.random.default_rng(0)
    x, y = db.tensor(rng.standard_normal((6, 4))), rng.integers(0, 3, 6)
    grads = []
    for fused in (True, False):
        model = nn.MLP([4, 8, 8, 3], activation=activation, rng=np.random.default_rng(1))
        h = model(x) if fused else x
        if not fused:
            for layer in model:
                h = layer(h)
        F.cross_entropy(h, y).backward()
        grads.append([h.data] + [p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)
