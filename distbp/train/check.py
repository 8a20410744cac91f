"""``distbp-gradcheck``: the configured model's gradients against central differences, in
float64, on a small batch of the configured data."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..autodiff import ParameterCheck, Tensor, check_parameters
from ..data import data_info, load_data
from .build import build_loss, build_model


def gradcheck_config(cfg: dict[str, Any], samples: int = 8, max_elements: int | None = 200,
                     eps: float = 1e-6) -> list[ParameterCheck]:
    """Check every parameter of the configured model on the first ``samples`` training samples.
    Dropout is switched off (eval mode) so the loss is a deterministic function."""
    splits = load_data(cfg["data"], cfg["seed"], cfg["model"]["window"])
    info = data_info(splits.train)
    model = build_model(cfg, info).to(np.float64).eval()
    x = splits.train.x[:samples]
    y = splits.train.y[:samples]
    inputs = x if x.dtype.kind in "iu" else Tensor(x, dtype=np.float64)
    loss_fn = build_loss(cfg, info.targets)
    y = y.astype(np.float64) if y.dtype.kind == "f" else y
    return check_parameters(lambda: loss_fn(model(inputs), y, 1.0 / len(x)), list(model.named_parameters()),
                            eps=eps, max_elements=max_elements, seed=cfg["seed"])
