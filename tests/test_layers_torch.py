"""distbp.nn's torch names: the new layers (Identity, Flatten's dims, Softmax, LogSoftmax, GELU,
SiLU, ELU, Softplus, LayerNorm), torch's keyword names on existing layers (Embedding's
embedding_dim, Linear's init="torch"), and the loss modules of distbp.nn.loss. Values are
checked against numpy by hand; torch, where installed, in one optional test."""

from __future__ import annotations

import math

import numpy as np
import pytest

import distbp as db
import distbp.functional as F
from distbp import nn
from distbp.autodiff import ShapeError, gradcheck

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

RNG = np.random.default_rng(7)
NEW_LAYERS = ["Identity", "Softmax", "LogSoftmax", "GELU", "SiLU", "ELU", "Softplus", "LayerNorm"]
LOSSES = ["CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "BCEWithLogitsLoss",
          "BCELoss", "MultiMarginLoss", "KLDivLoss"]


def leaf(values):
    return db.tensor(values, requires_grad=True, dtype=np.float64)


def test_exported_from_distbp_nn():
    for name in NEW_LAYERS + LOSSES + ["Flatten", "Embedding", "Linear"]:
        assert name in nn.__all__ and isinstance(getattr(nn, name), type)
        assert issubclass(getattr(nn, name), nn.Module)


# -- Identity, Flatten --------------------------------------------------------------------------
def test_identity_returns_its_input_and_ignores_arguments():
    x = leaf([1.0, 2.0])
    assert nn.Identity(3, unused="x")(x) is x
    assert list(nn.Identity().parameters()) == []


def test_flatten_default_is_unchanged():
    x = db.tensor(RNG.standard_normal((2, 3, 4)))
    out = nn.Flatten()(x)
    assert out.shape == (2, 12)
    np.testing.assert_array_equal(out.data, x.data.reshape(2, -1))
    assert nn.Flatten()(db.tensor(np.ones(5))).shape == (5, 1)  # distbp's existing rule for 1-D input


@pytest.mark.parametrize("start, end, shape", [(0, -1, (120,)), (1, 2, (2, 12, 5)), (2, 3, (2, 3, 20)),
                                               (0, 1, (6, 4, 5)), (-2, -1, (2, 3, 20)), (1, 1, (2, 3, 4, 5))])
def test_flatten_start_and_end_dim(start, end, shape):
    x = leaf(RNG.standard_normal((2, 3, 4, 5)))
    out = nn.Flatten(start, end)(x)
    assert out.shape == shape
    np.testing.assert_array_equal(out.data, x.data.reshape(shape))
    g = RNG.standard_normal(shape)
    out.backward(g)
    np.testing.assert_array_equal(x.grad, g.reshape(2, 3, 4, 5))
    assert repr(nn.Flatten(start, end)) == f"Flatten(start_dim={start}, end_dim={end})"


def test_flatten_bad_dims():
    with pytest.raises(ShapeError, match=r"Flatten\(start_dim=3, end_dim=-1\).*\(2, 3\)"):
        nn.Flatten(3)(db.tensor(np.zeros((2, 3))))
    with pytest.raises(ShapeError, match="start_dim=2 comes after end_dim=1"):
        nn.Flatten(2, 1)(db.tensor(np.zeros((2, 3, 4))))


# -- activation modules -------------------------------------------------------------------------
X = RNG.standard_normal((3, 4)) * 2


def test_softmax_modules():
    x = leaf(X)
    e = np.exp(X - X.max(0))
    np.testing.assert_allclose(nn.Softmax(dim=0)(x).data, e / e.sum(0), rtol=1e-13)
    np.testing.assert_array_equal(nn.Softmax()(x).data, F.softmax(x, dim=-1).data)  # None: the last dim
    np.testing.assert_allclose(nn.LogSoftmax(dim=1)(x).data, X - X.max(1, keepdims=True)
                               - np.log(np.exp(X - X.max(1, keepdims=True)).sum(1, keepdims=True)), rtol=1e-13)
    assert repr(nn.LogSoftmax(1)) == "LogSoftmax(dim=1)"


@pytest.mark.parametrize("module, fn", [
    (nn.GELU(), lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))),
    (nn.GELU("tanh"), lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
    (nn.SiLU(), lambda x: x / (1 + np.exp(-x))),
    (nn.ELU(alpha=0.5), lambda x: np.where(x > 0, x, 0.5 * (np.exp(np.minimum(x, 0)) - 1))),
    (nn.Softplus(beta=2.0, threshold=3.0), lambda x: np.where(2 * x > 3, x, np.log1p(np.exp(2 * x)) / 2)),
])
def test_activation_modules(module, fn):
    np.testing.assert_allclose(module(leaf(X)).data, fn(X), rtol=1e-12)
    assert list(module.parameters()) == []
    assert gradcheck(module, X[np.abs(2 * X - 3) > 1e-2])  # away from Softplus's threshold


def test_activation_module_arguments():
    assert repr(nn.GELU()) == "GELU(approximate='none')"
    assert repr(nn.ELU(0.3)) == "ELU(alpha=0.3)"
    assert repr(nn.Softplus()) == "Softplus(beta=1.0, threshold=20.0)"
    with pytest.raises(ValueError, match="GELU: approximate must be 'none' or 'tanh'"):
        nn.GELU("fast")


# -- LayerNorm ------------------------------------------------------------------------------------
def test_layer_norm_parameters_and_forward():
    ln = nn.LayerNorm(4)
    assert [n for n, _ in ln.named_parameters()] == ["weight", "bias"]
    np.testing.assert_array_equal(ln.weight.data, np.ones(4))
    np.testing.assert_array_equal(ln.bias.data, np.zeros(4))
    assert ln.weight.dtype == np.float32 and ln.normalized_shape == (4,) and ln.eps == 1e-5
    ln.to(np.float64)
    ln.weight.data = np.array([1.0, 2.0, 0.5, -1.0])
    ln.bias.data = np.array([0.0, 0.1, 0.2, 0.3])
    x = leaf(X)
    out = ln(x)
    xhat = (X - X.mean(1, keepdims=True)) / np.sqrt(X.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out.data, xhat * ln.weight.data + ln.bias.data, rtol=1e-12)
    g = RNG.standard_normal(X.shape)
    out.backward(g)
    np.testing.assert_allclose(ln.weight.grad, (g * xhat).sum(0), rtol=1e-12)
    np.testing.assert_allclose(ln.bias.grad, g.sum(0), rtol=1e-12)
    assert gradcheck(lambda x: ln(x), X)


def test_layer_norm_options():
    assert list(nn.LayerNorm((2, 3), elementwise_affine=False).parameters()) == []
    no_bias = nn.LayerNorm([2, 3], bias=False)
    assert [n for n, _ in no_bias.named_parameters()] == ["weight"] and no_bias.weight.shape == (2, 3)
    x = RNG.standard_normal((4, 2, 3))
    m = x.mean((1, 2), keepdims=True)
    v = x.var((1, 2), keepdims=True)
    plain = nn.LayerNorm((2, 3), eps=0.5, elementwise_affine=False)
    np.testing.assert_allclose(plain(leaf(x)).data, (x - m) / np.sqrt(v + 0.5), rtol=1e-12)
    assert repr(plain) == "LayerNorm((2, 3), eps=0.5, elementwise_affine=False)"
    with pytest.raises(ShapeError, match="layer_norm"):
        plain(leaf(np.zeros((4, 3, 2))))


# -- Embedding: torch's embedding_dim -------------------------------------------------------------
def test_embedding_accepts_embedding_dim_and_dim():
    a = nn.Embedding(5, 3, rng=np.random.default_rng(1))
    b = nn.Embedding(5, embedding_dim=3, rng=np.random.default_rng(1))
    c = nn.Embedding(num_embeddings=5, dim=3, rng=np.random.default_rng(1))
    for e in (a, b, c):
        assert e.dim == e.embedding_dim == 3 and e.weight.shape == (5, 3)
        np.testing.assert_array_equal(e.weight.data, a.weight.data)
    # unchanged init: N(0, 1) from the generator, as before
    np.testing.assert_array_equal(a.weight.data, np.random.default_rng(1).normal(0.0, 1.0, (5, 3)).astype(np.float32))
    assert repr(a) == "Embedding(5, 3)"
    with pytest.raises(TypeError, match="embedding_dim=3 and dim=4 disagree"):
        nn.Embedding(5, 3, dim=4)
    with pytest.raises(TypeError, match="Embedding: missing"):
        nn.Embedding(5)


# -- Linear: layout and init ----------------------------------------------------------------------
def test_linear_default_init_is_unchanged():
    layer = nn.Linear(6, 4, rng=np.random.default_rng(3))
    a = math.sqrt(6.0 / (6 + 4))
    expected = np.random.default_rng(3).uniform(-a, a, (6, 4)).astype(np.float32)
    np.testing.assert_array_equal(layer.weight.data, expected)
    np.testing.assert_array_equal(layer.bias.data, np.zeros(4))
    np.testing.assert_array_equal(nn.Linear(6, 4, rng=np.random.default_rng(3), init="xavier").weight.data, expected)
    assert repr(layer) == "Linear(6, 4, bias=True)"


def test_linear_torch_init_distribution():
    fan_in = 50
    layer = nn.Linear(fan_in, 400, rng=np.random.default_rng(0), init="torch")
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)): sqrt(1/3) * sqrt(3 / fan_in)
    w, b = layer.weight.data, layer.bias.data
    assert w.shape == (fan_in, 400)  # distbp's (in, out) layout: torch's weight transposed
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.999 * bound  # fills the whole interval
    assert abs(w.std() - bound / math.sqrt(3)) < 0.01 * bound  # uniform: std = bound / sqrt(3)
    assert abs(w.mean()) < 0.01 * bound
    assert b.std() > 0.4 * bound  # the bias is drawn, not zero
    # deterministic for a seeded generator, and a different distribution from xavier's
    again = nn.Linear(fan_in, 400, rng=np.random.default_rng(0), init="torch")
    np.testing.assert_array_equal(again.weight.data, w)
    xavier = math.sqrt(6 / (fan_in + 400))  # 0.82 of torch's bound here
    assert 0.99 * xavier < np.abs(nn.Linear(fan_in, 400, rng=np.random.default_rng(0)).weight.data).max() <= xavier
    assert repr(layer) == "Linear(50, 400, bias=True, init='torch')"
    assert nn.Linear(3, 2, bias=False, init="torch").bias is None


def test_linear_init_errors():
    with pytest.raises(ValueError, match="Linear: init must be one of xavier, torch, not 'he'"):
        nn.Linear(2, 3, init="he")
    with pytest.raises(TypeError):
        nn.Linear(2, 3, True, None, "torch")  # init is keyword-only


# -- loss modules ---------------------------------------------------------------------------------
S = RNG.standard_normal((4, 3))
T = np.array([0, 2, 1, -100])
W = np.array([1.0, 0.5, 2.0])
P = RNG.uniform(0.1, 0.9, (4, 3))
Y = RNG.random((4, 3))


@pytest.mark.parametrize("module, call", [
    (nn.CrossEntropyLoss(), lambda x: F.cross_entropy(x, T)),
    (nn.CrossEntropyLoss(W, ignore_index=-100, reduction="sum", label_smoothing=0.1),
     lambda x: F.cross_entropy(x, T, W, ignore_index=-100, reduction="sum", label_smoothing=0.1)),
    (nn.NLLLoss(W, reduction="none"), lambda x: F.nll_loss(x, T, W, reduction="none")),
    (nn.MultiMarginLoss(p=2, margin=0.5, weight=W), lambda x: F.multi_margin_loss(x, T[:3], 2, 0.5, W)),
])
def test_class_loss_modules_call_functional(module, call):
    target = T[:3] if isinstance(module, nn.MultiMarginLoss) else T
    x = S[:3] if isinstance(module, nn.MultiMarginLoss) else S
    np.testing.assert_array_equal(module(leaf(x), target).data, call(leaf(x)).data)
    assert list(module.parameters()) == []


@pytest.mark.parametrize("module, call", [
    (nn.MSELoss(), lambda x: F.mse_loss(x, Y)),
    (nn.L1Loss(reduction="sum"), lambda x: F.l1_loss(x, Y, reduction="sum")),
    (nn.SmoothL1Loss(beta=0.3), lambda x: F.smooth_l1_loss(x, Y, beta=0.3)),
    (nn.HuberLoss("none", 0.3), lambda x: F.huber_loss(x, Y, "none", 0.3)),
    (nn.BCELoss(weight=W), lambda x: F.binary_cross_entropy(x, Y, W)),
    (nn.BCEWithLogitsLoss(pos_weight=W, reduction="sum"),
     lambda x: F.binary_cross_entropy_with_logits(x, Y, reduction="sum", pos_weight=W)),
    (nn.KLDivLoss(reduction="batchmean"), lambda x: F.kl_div(x, Y, reduction="batchmean")),
    (nn.KLDivLoss(log_target=True), lambda x: F.kl_div(x, np.log(Y), log_target=True)),
])
def test_pairwise_loss_modules_call_functional(module, call):
    target = np.log(Y) if getattr(module, "log_target", False) else Y
    np.testing.assert_array_equal(module(leaf(P), target).data, call(leaf(P)).data)


def test_cross_entropy_loss_module_value_by_hand():
    loss = nn.CrossEntropyLoss(weight=W)(leaf(S), T)
    logp = S - S.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    t = T[:3]
    expected = -(logp[np.arange(3), t] * W[t]).sum() / W[t].sum()
    assert loss.item() == pytest.approx(expected, rel=1e-13)


def test_loss_module_arguments_are_checked():
    with pytest.raises(ValueError, match="CrossEntropyLoss: reduction must be 'mean', 'sum' or 'none', not 'avg'"):
        nn.CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match="KLDivLoss: reduction must be .*'batchmean'"):
        nn.KLDivLoss(reduction="avg")
    with pytest.raises(ValueError, match="MultiMarginLoss: p must be 1 or 2"):
        nn.MultiMarginLoss(p=3)
    with pytest.raises(ValueError, match="HuberLoss: delta must be positive"):
        nn.HuberLoss(delta=-1.0)
    with pytest.raises(ValueError, match="CrossEntropyLoss: label_smoothing"):
        nn.CrossEntropyLoss(label_smoothing=2.0)
    with pytest.raises(TypeError):
        nn.CrossEntropyLoss(None, None, 5)  # torch's positional size_average slot is not taken
    assert repr(nn.CrossEntropyLoss()) == "CrossEntropyLoss(reduction='mean')"
    assert repr(nn.MultiMarginLoss()) == "MultiMarginLoss(p=1, margin=1.0, reduction='mean')"


def test_a_model_of_new_layers_trains_end_to_end():
    model = nn.Sequential(nn.Linear(4, 8, rng=np.random.default_rng(0), init="torch"), nn.GELU(), nn.LayerNorm(8),
                          nn.Linear(8, 3, rng=np.random.default_rng(1)), nn.Identity()).to(np.float64)
    x, y = RNG.standard_normal((6, 4)), np.array([0, 1, 2, 0, 1, 2])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    loss = loss_fn(model(db.tensor(x, dtype=np.float64)), y)
    loss.backward()
    assert all(p.grad is not None and np.all(np.isfinite(p.grad)) for p in model.parameters())
    before = loss.item()
    with db.no_grad():
        for p in model.parameters():
            p.data = p.data - 0.1 * p.grad
    assert loss_fn(model(db.tensor(x, dtype=np.float64)), y).item() < before


# -- optional: the same numbers as torch ------------------------------------------------------------
def test_layers_and_losses_against_torch_when_installed():
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    x = RNG.standard_normal((5, 6))

    # A torch Linear's parameters load into distbp's Linear as weight.T.
    t_lin = tnn.Linear(6, 3).double()
    ours = nn.Linear(6, 3).to(np.float64)
    ours.load_state_dict({"weight": t_lin.weight.detach().numpy().T, "bias": t_lin.bias.detach().numpy()})
    np.testing.assert_allclose(ours(leaf(x)).data, t_lin(torch.tensor(x)).detach().numpy(), rtol=1e-12)
    # torch's default init and init="torch" share their bounds
    bound = 1 / math.sqrt(6)
    assert np.abs(t_lin.weight.detach().numpy()).max() <= bound
    assert np.abs(nn.Linear(6, 3, init="torch").weight.data).max() <= bound

    t_ln = tnn.LayerNorm(6).double()
    with torch.no_grad():
        t_ln.weight.copy_(torch.tensor(RNG.standard_normal(6)))
        t_ln.bias.copy_(torch.tensor(RNG.standard_normal(6)))
    ln = nn.LayerNorm(6).to(np.float64)
    ln.load_state_dict({k: v.detach().numpy() for k, v in t_ln.state_dict().items()})
    np.testing.assert_allclose(ln(leaf(x)).data, t_ln(torch.tensor(x)).detach().numpy(), rtol=1e-12, atol=1e-14)

    e = tnn.Flatten(0, 1)(torch.zeros(2, 3, 4))
    assert nn.Flatten(0, 1)(db.tensor(np.zeros((2, 3, 4)))).shape == tuple(e.shape)

    tw = torch.tensor(W)
    pairs = [
        (nn.CrossEntropyLoss(W, label_smoothing=0.2), tnn.CrossEntropyLoss(tw, label_smoothing=0.2), S, T),
        (nn.NLLLoss(W), tnn.NLLLoss(tw), S, T),
        (nn.MultiMarginLoss(p=2, weight=W), tnn.MultiMarginLoss(p=2, weight=tw), S[:3], T[:3]),
        (nn.BCELoss(), tnn.BCELoss(), P, Y),
        (nn.BCEWithLogitsLoss(pos_weight=W), tnn.BCEWithLogitsLoss(pos_weight=tw), S, Y),
        (nn.SmoothL1Loss(beta=0.5), tnn.SmoothL1Loss(beta=0.5), S, Y),
        (nn.HuberLoss(delta=0.5), tnn.HuberLoss(delta=0.5), S, Y),
        (nn.L1Loss(), tnn.L1Loss(), S, Y), (nn.MSELoss(), tnn.MSELoss(), S, Y),
        (nn.KLDivLoss(reduction="batchmean"), tnn.KLDivLoss(reduction="batchmean"), S, Y),
    ]
    for ours, theirs, inp, target in pairs:
        expected = theirs(torch.tensor(inp), torch.tensor(target)).item()
        assert ours(leaf(inp), target).item() == pytest.approx(expected, rel=1e-12)
