"""The course notes' 3-4-2 sigmoid network with squared loss L = 1/2 Σ (a - y)²: autodiff's
gradients equal the hand-derived node errors (δ) of backpropagation.

    δ_out    = (a - y) ⊙ a (1 - a)                 σ'(z) = σ(z) (1 - σ(z))
    δ_hidden = (δ_out W2ᵀ) ⊙ h (1 - h)
    ∇W2 = hᵀ δ_out,  ∇b2 = Σ_batch δ_out,  ∇W1 = xᵀ δ_hidden,  ∇b1 = Σ_batch δ_hidden

with weights of shape (in, out), so a layer is z = x W + b.
"""

from __future__ import annotations

import numpy as np
import pytest

import distbp as db
from distbp import nn

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def sigmoid_network(dtype) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2), nn.Sigmoid())
    rng = np.random.default_rng(1)
    for p in net.parameters():  # non-zero biases too, so that ∇b is not trivially checked
        p.data = rng.uniform(-1.0, 1.0, p.shape)
    return net.to(dtype)


def hand_derived(net: nn.Sequential, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Backprop as the notes write it, in float64 numpy, from the network's own weights."""
    W1, b1, W2, b2 = (p.data.astype(np.float64) for p in net.parameters())
    h = 1 / (1 + np.exp(-(x @ W1 + b1)))
    a = 1 / (1 + np.exp(-(h @ W2 + b2)))
    delta_out = (a - y) * a * (1 - a)
    delta_hidden = (delta_out @ W2.T) * h * (1 - h)
    return {"loss": 0.5 * np.sum((a - y) ** 2),
            "0.weight": x.T @ delta_hidden, "0.bias": delta_hidden.sum(0),
            "2.weight": h.T @ delta_out, "2.bias": delta_out.sum(0)}


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-6), (np.float32, 1e-5)])
@pytest.mark.parametrize("flat", [False, True], ids=["params", "flat-buffer"])
def test_autodiff_gradients_equal_node_error_formulas(dtype, tol, flat):
    net = sigmoid_network(dtype)
    if flat:
        nn.flatten_parameters(net.parameters())
    rng = np.random.default_rng(2)
    x = rng.uniform(-2.0, 2.0, (5, 3))          # a batch of five samples
    y = rng.uniform(0.0, 1.0, (5, 2))

    a = net(db.tensor(x, dtype=dtype))
    loss = 0.5 * ((a - y) ** 2).sum()
    loss.backward()

    expected = hand_derived(net, x, y)
    assert loss.dtype == dtype
    assert loss.item() == pytest.approx(expected["loss"], rel=tol)
    names = [name for name, _ in net.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for name, p in net.named_parameters():
        assert p.grad.dtype == dtype and p.grad.shape == p.shape, name
        np.testing.assert_allclose(p.grad, expected[name], rtol=tol, atol=tol, err_msg=name)


def test_gradient_step_lowers_the_loss_by_the_first_order_amount():
    # One step of size lr along -∇L changes L by about -lr ‖∇L‖²: ties the gradients to the loss.
    net = sigmoid_network(np.float64)
    rng = np.random.default_rng(3)
    x, y = db.tensor(rng.uniform(-2, 2, (5, 3)), dtype=np.float64), rng.uniform(0, 1, (5, 2))

    def loss() -> db.Tensor:
        return 0.5 * ((net(x) - y) ** 2).sum()

    before = loss()
    before.backward()
    lr = 1e-4
    sq_norm = sum(float((p.grad ** 2).sum()) for p in net.parameters())
    for p in net.parameters():
        p.data = p.data - lr * p.grad
    after = loss().item()
    assert after - before.item() == pytest.approx(-lr * sq_norm, rel=1e-3)
