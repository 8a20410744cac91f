"""A torch-style training script, ported line by line (``torch`` -> ``distbp``), against the
same math written out by hand in numpy float64: forward, backward, clipping, AdamW with two
param groups, a schedule, a frozen block that is unfrozen, evaluation and a snapshot.

The torch original differs only in its imports and in Linear's weight layout (distbp's is
(in, out)): ``import torch, torch.nn as nn, torch.nn.functional as F``."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import numpy as np

import distbp as torch
import distbp.functional as F
from distbp import nn, optim

N, D, H, C = 24, 6, 10, 3
EPS_LN, SMOOTH, CLIP = 1e-5, 0.1, 0.25
LRS, WD, BETAS, EPS = (0.02, 0.05), 0.01, (0.9, 0.999), 1e-8
MILESTONES, GAMMA, STEPS, FROZEN_UNTIL = [4, 7], 0.5, 9, 3


# -- the ported program -----------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            nn.Sequential(OrderedDict([("fc", nn.Linear(D, H)), ("act", nn.GELU())])),
            nn.Sequential(OrderedDict([("fc", nn.Linear(H, H)), ("act", nn.GELU())])),
        ])
        self.norm = nn.LayerNorm(H, eps=EPS_LN)
        self.head = nn.Linear(H, C)
        self.register_buffer("seen", np.zeros(()))

    def forward(self, x):
        x = x.view(x.size(0), -1)
        for block in self.blocks:
            x = block(x)
        return self.head(F.silu(self.norm(x)))


def init_weights(m):
    if isinstance(m, nn.Linear):
        with torch.no_grad():
            m.bias.fill_(0.01)


def ported(x: np.ndarray, y: np.ndarray):
    model = Net().double()
    model.apply(init_weights)
    start = {k: v.copy() for k, v in model.state_dict().items()}
    criterion = nn.CrossEntropyLoss(label_smoothing=SMOOTH)
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = optim.AdamW([{"params": body}, {"params": model.head.parameters(), "lr": LRS[1]}],
                      lr=LRS[0], betas=BETAS, eps=EPS, weight_decay=WD)
    sched = optim.lr_scheduler.MultiStepLR(opt, milestones=MILESTONES, gamma=GAMMA)
    for p in model.blocks[0].parameters():
        p.requires_grad_(False)  # fine-tune the top first
    norms, losses = [], []
    for step in range(STEPS):
        if step == FROZEN_UNTIL:
            for p in model.blocks[0].parameters():
                p.requires_grad_(True)
        model.train()
        opt.zero_grad()
        loss = criterion(model(x), torch.tensor(y))
        loss.backward()
        norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), max_norm=CLIP)))
        opt.step()
        sched.step()
        model.seen += len(x)
        losses.append(loss.item())
    snapshot = copy.deepcopy(model)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        acc = (logits.argmax(dim=1) == torch.tensor(y)).float().mean().item()
    return start, model, snapshot, norms, losses, acc, sched.get_last_lr()


# -- the same math in numpy -----------------------------------------------------------------
_erf = np.vectorize(math.erf)


def _gelu(z):
    return z * 0.5 * (1 + _erf(z / math.sqrt(2)))


def _gelu_grad(z):
    return 0.5 * (1 + _erf(z / math.sqrt(2))) + z * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)


def _sig(z):
    return 1 / (1 + np.exp(-z))


def _forward_backward(P, x, y, frozen):
    acts, h = [], x
    for i in range(2):
        z = h @ P[f"blocks.{i}.fc.weight"] + P[f"blocks.{i}.fc.bias"]
        acts.append((h, z))
        h = _gelu(z)
    mu = h.mean(1, keepdims=True)
    var = ((h - mu) ** 2).mean(1, keepdims=True)
    hn = (h - mu) / np.sqrt(var + EPS_LN)
    u = hn * P["norm.weight"] + P["norm.bias"]
    s = u * _sig(u)
    logits = s @ P["head.weight"] + P["head.bias"]
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    q = np.full((N, C), SMOOTH / C)
    q[np.arange(N), y] += 1 - SMOOTH
    loss = -(q * logp).sum() / N
    G = {}
    dlogits = (np.exp(logp) - q) / N
    G["head.weight"], G["head.bias"] = s.T @ dlogits, dlogits.sum(0)
    du = (dlogits @ P["head.weight"].T) * (_sig(u) * (1 + u * (1 - _sig(u))))
    G["norm.weight"], G["norm.bias"] = (du * hn).sum(0), du.sum(0)
    dhn = du * P["norm.weight"]
    dh = (dhn - dhn.mean(1, keepdims=True) - hn * (dhn * hn).mean(1, keepdims=True)) / np.sqrt(var + EPS_LN)
    for i in (1, 0):
        if i == 0 and frozen:
            break
        h_in, z = acts[i]
        dz = dh * _gelu_grad(z)
        G[f"blocks.{i}.fc.weight"], G[f"blocks.{i}.fc.bias"] = h_in.T @ dz, dz.sum(0)
        dh = dz @ P[f"blocks.{i}.fc.weight"].T
    return loss, G, logits


def reference(start, x, y):
    P = {k: v.astype(np.float64) for k, v in start.items() if k != "seen"}
    state = {k: [np.zeros_like(v), np.zeros_like(v), 0] for k, v in P.items()}
    norms, losses = [], []
    for step in range(STEPS):
        loss, G, _ = _forward_backward(P, x, y, frozen=step < FROZEN_UNTIL)
        losses.append(loss)
        total = math.sqrt(sum(float((g * g).sum()) for g in G.values()))
        norms.append(total)
        coef = min(1.0, CLIP / (total + 1e-6))
        decay = GAMMA ** sum(m <= step for m in MILESTONES)
        for k, g in G.items():  # torch.optim.AdamW, each parameter with its own step count
            lr = (LRS[1] if k.startswith("head") else LRS[0]) * decay
            m, v, t = state[k]
            g = g * coef
            t += 1
            P[k] = P[k] * (1 - lr * WD)
            m = BETAS[0] * m + (1 - BETAS[0]) * g
            v = BETAS[1] * v + (1 - BETAS[1]) * g * g
            P[k] = P[k] - lr * (m / (1 - BETAS[0] ** t)) / (np.sqrt(v / (1 - BETAS[1] ** t)) + EPS)
            state[k] = [m, v, t]
    _, _, logits = _forward_backward(P, x, y, frozen=False)
    acc = float((logits.argmax(1) == y).mean())
    return P, norms, losses, acc, state


def test_the_ported_torch_script_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 2, D // 2))  # flattened by the model's view()
    y = rng.integers(0, C, N)
    start, model, snapshot, norms, losses, acc, last_lr = ported(x, y)
    P, ref_norms, ref_losses, ref_acc, state = reference(start, x.reshape(N, D), y)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-11)
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-11)
    assert min(norms) > CLIP  # clipping acted on every step
    params = dict(model.named_parameters())
    for k, v in P.items():
        np.testing.assert_allclose(params[k].data, v, rtol=1e-10, atol=1e-12, err_msg=k)
        np.testing.assert_array_equal(dict(snapshot.named_parameters())[k].data, params[k].data)
    assert abs(acc - ref_acc) < 1e-7  # .float().mean() is float32, as in torch
    assert last_lr == [LRS[0] * GAMMA ** 2, LRS[1] * GAMMA ** 2]
    assert float(model.state_dict()["seen"]) == STEPS * N
    # The frozen block took only the steps after it was unfrozen.
    assert state["blocks.0.fc.weight"][2] == STEPS - FROZEN_UNTIL
    assert state["head.weight"][2] == STEPS
