"""Turn a resolved config and the loaded data into the model, loss, optimizer and schedule."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import functional as F
from .. import nn, optim
from ..autodiff.tensor import Tensor
from ..data import Splits
from .config import ConfigError

# A loss maps (outputs, targets, scale) to scale * (sum of per-sample losses): every worker
# scales by 1/global_batch, so summing workers' gradients gives the global mean's gradient.
LossFn = Callable[[Tensor, np.ndarray, float], Tensor]

_INIT = {"xavier_uniform": nn.init.xavier_uniform_, "xavier_normal": nn.init.xavier_normal_,
         "kaiming_normal": nn.init.kaiming_normal_}


def _one_hot(y: np.ndarray, k: int, dtype: Any) -> np.ndarray:
    out = np.zeros((len(y), k), dtype=dtype)
    out[np.arange(len(y)), y] = 1
    return out


def build_model(cfg: dict[str, Any], splits: Splits) -> nn.Module:
    """The configured model, its sizes checked against the data; initialized from the seed."""
    m, train = cfg["model"], splits.train
    rng = np.random.default_rng([cfg["seed"], 0x1417])
    if m["type"] == "window":
        model: nn.Module = nn.WindowClassifier(len(train.vocab or []), m["embed_dim"], m["window"],
                                               m["hidden"], train.num_classes or 1, m["activation"], rng=rng)
    else:
        sizes = m["sizes"]
        if sizes[0] != train.num_features:
            raise ConfigError(f"model.sizes: the input size is {sizes[0]} but the {train.name} data "
                              f"has {train.num_features} features")
        outputs = train.num_classes if train.num_classes is not None else train.y.shape[1]
        if sizes[-1] != outputs:
            what = "classes" if train.num_classes is not None else "target columns"
            raise ConfigError(f"model.sizes: the output size is {sizes[-1]} but the {train.name} data "
                              f"has {outputs} {what}")
        model = nn.MLP(sizes, m["activation"], m["dropout"], rng=rng)
        if m["output_activation"] == "sigmoid":
            model = nn.Sequential(*model, nn.Sigmoid())
    if m["init"] != "xavier_uniform":
        for name, p in model.named_parameters():
            if p.ndim == 2 and not name.endswith("embed.weight"):
                _INIT[m["init"]](p, rng=rng)
    return model


def build_loss(cfg: dict[str, Any], num_outputs: int) -> LossFn:
    """The configured training objective as a LossFn."""
    name, margin = cfg["model"]["loss"], cfg["model"]["margin"]
    if name == "cross_entropy":
        return lambda out, y, scale: F.cross_entropy(out, y, reduction="sum") * scale
    if name == "multi_margin":
        return lambda out, y, scale: F.multi_margin(out, y, margin, reduction="sum") * scale
    # Squared error, averaged over outputs as torch's MSELoss; class labels become one-hot
    # targets (the course notes' sigmoid network).
    def mse(out: Tensor, y: np.ndarray, scale: float) -> Tensor:
        target = y if y.ndim == 2 else _one_hot(y, num_outputs, out.dtype)
        return F.mse_loss(out, target, reduction="sum") * (scale / num_outputs)
    return mse


def build_optimizer(cfg: dict[str, Any], model: nn.Module) -> optim.Optimizer:
    """The configured optimizer over the model's flat parameter buffer (named order)."""
    o = cfg["optimizer"]
    name, lr, wd = o["name"], o["lr"], o["weight_decay"]
    nn.flatten_parameters(model.parameters())
    params: Any = model.parameters()
    if wd > 0 and not o["decay_biases"]:
        # The course notes regularize weights, not biases: two groups, each with its own decay.
        params = optim.split_decay(model.named_parameters(), wd)
    eps = o["eps"]
    if name == "sgd":
        return optim.SGD(params, lr=lr, weight_decay=wd)
    if name == "momentum":
        return optim.SGD(params, lr=lr, momentum=o["momentum"], nesterov=o["nesterov"], weight_decay=wd)
    if name == "adagrad":
        return optim.AdaGrad(params, lr=lr, eps=1e-10 if eps is None else eps, weight_decay=wd)
    if name == "rmsprop":
        return optim.RMSProp(params, lr=lr, alpha=o["alpha"], eps=1e-8 if eps is None else eps, weight_decay=wd)
    cls = optim.Adam if name == "adam" else optim.AdamW
    return cls(params, lr=lr, betas=tuple(o["betas"]), eps=1e-8 if eps is None else eps, weight_decay=wd)


def build_scheduler(cfg: dict[str, Any], opt: optim.Optimizer, total_steps: int):
    """The configured learning-rate schedule; cosine's horizon defaults to the run's length."""
    s = cfg["schedule"]

    def make(name: str, **extra: Any):
        if name == "step":
            return optim.lr_scheduler.build_scheduler("step", opt, step_size=s["step_size"], gamma=s["gamma"])
        if name == "annealing":
            return optim.lr_scheduler.build_scheduler("annealing", opt, tau=s["tau"])
        if name == "cosine":
            return optim.lr_scheduler.build_scheduler("cosine", opt, T_max=s["t_max"] or total_steps,
                                                      eta_min=s["eta_min"])
        return optim.lr_scheduler.build_scheduler(name, opt, **extra)

    if s["name"] == "warmup":
        return make("warmup", warmup_steps=s["warmup_steps"], after=make(s["after"]))
    return make(s["name"])
