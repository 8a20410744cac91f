"""train.clip_grad_norm: torch's clip_grad_norm_ applied to the global gradient, after the
all-reduce, so the clipped step does not depend on the number of workers."""

from __future__ import annotations

import io

import numpy as np
import pytest

from distbp.train import Trainer, resolve
from distbp.train import trainer as trainer_module
from distbp.train.build import build_model
from distbp.train.checkpoint import list_checkpoints, read_checkpoint

BASE = ["data.name=synthetic", "data.samples=200", "data.features=8", "data.classes=3",
        "model.sizes=[8,16,3]", "train.global_batch=32", "train.max_steps=1", "optimizer.name=sgd",
        "optimizer.lr=0.5", "train.eval_every=1", "checkpoint.every=1"]


def _step_size(tmp_path, monkeypatch, *extra: str) -> float:
    """||p1 - p0|| after one SGD step: lr * ||clipped gradient||."""
    start = []

    def capture(cfg, info):
        model = build_model(cfg, info)
        start.append(np.concatenate([p.data.ravel() for p in model.parameters()]))
        return model

    monkeypatch.setattr(trainer_module, "build_model", capture)
    Trainer(resolve(None, BASE + list(extra)), run_dir=tmp_path, resume="never", stream=io.StringIO()).run()
    final = read_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1]).arrays["params"]
    return float(np.linalg.norm(final.astype(np.float64) - start[0]))


def test_one_step_moves_the_parameters_by_lr_times_the_clipped_norm(tmp_path, monkeypatch):
    free = _step_size(tmp_path / "free", monkeypatch)
    assert free > 0.5 * 0.05  # the gradient norm exceeds the clip below, so clipping acts
    clipped = _step_size(tmp_path / "clipped", monkeypatch, "train.clip_grad_norm=0.05")
    np.testing.assert_allclose(clipped, 0.5 * 0.05, rtol=1e-4)  # torch: scaled by clip / (norm + 1e-6)
    loose = _step_size(tmp_path / "loose", monkeypatch, "train.clip_grad_norm=1000")
    np.testing.assert_allclose(loose, free, rtol=1e-6)  # above the norm: no change


def test_a_bad_clip_value_is_a_config_error():
    from distbp.train.config import ConfigError

    with pytest.raises(ConfigError, match="train.clip_grad_norm"):
        resolve(None, ["train.clip_grad_norm=0"])
