"""``distbp.load``: a trained model, ready to use, from a run directory or a checkpoint.

    p = distbp.load("runs/digits-mlp")          # the newest checkpoint that verifies
    p.predict(x)                                # class names (or values, for regression)
    p.predict_proba(x)                          # softmax probabilities, one column per class
    p.tag([["John", "lives", "in", "Paris"]])   # the window model: one tag per word

The run's preprocessing is applied to ``x`` (raw features, as in the training file); the
model is rebuilt from the run's config (a ``model.factory`` is imported again) or, for a
model that was passed to the Trainer as an object, given as ``load(path, model=...)``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .. import nn
from ..autodiff.tensor import Tensor, no_grad
from ..data import DataInfo, Preprocessor
from ..data.conll import window_ids
from .build import build_model
from .checkpoint import Checkpoint, CheckpointError, check_fits, latest_valid, read_checkpoint, training_state

CHUNK = 4096  # rows per forward pass: bounds the memory of a prediction, whatever the input's size


class PredictError(CheckpointError):
    """The input does not fit the trained model (features, vocabulary, task); the message says how."""


@dataclass
class Predictor:
    """A trained model with what it needs to be used: ``model`` (in eval mode), ``classes``
    (names, None for regression), ``vocab`` (the window model's words), ``config`` (the run's
    resolved config), ``preprocessor`` (the run's statistics) and ``info`` (the data's shape)."""

    model: nn.Module
    config: dict[str, Any]
    classes: list[str] | None
    vocab: list[str] | None
    preprocessor: Preprocessor
    info: DataInfo
    source: Path
    step: int

    @property
    def is_classifier(self) -> bool:
        return self.classes is not None

    def _inputs(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        if self.info.integer_inputs:
            if x.dtype.kind not in "iu" or x.ndim != 2 or x.shape[1:] != self.info.shape:
                raise PredictError(f"input of shape {x.shape} and dtype {x.dtype}: this model takes windows of "
                                   f"{self.info.shape[0]} word ids; use tag(sentences) for words")
            return x
        x = x.reshape(len(x), -1) if x.ndim > 1 else x.reshape(1, -1)
        if x.shape[1] != self.info.features:
            raise PredictError(f"input has {x.shape[1]} features per row; the model was trained on "
                               f"{self.info.features}")
        if x.dtype.kind not in "fiub":
            raise PredictError(f"input of dtype {x.dtype}; expected numbers")
        return self.preprocessor.transform(x.astype(np.float32, copy=False))

    @no_grad()
    def logits(self, x: Any) -> np.ndarray:
        """The model's raw outputs for ``x``, computed CHUNK rows at a time."""
        x = self._inputs(x)
        dtype = next(self.model.parameters()).dtype
        out = []
        for lo in range(0, len(x), CHUNK):
            chunk = x[lo:lo + CHUNK]
            out.append(self.model(chunk if chunk.dtype.kind in "iu" else Tensor._wrap(chunk.astype(dtype))).data)
        return np.concatenate(out) if out else np.zeros((0, self.info.targets), dtype=np.float32)

    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities (softmax of the outputs), one column per name in ``classes``."""
        if not self.is_classifier:
            raise PredictError("predict_proba: this model is a regression; use predict")
        z = self.logits(x).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def predict_ids(self, x: Any) -> np.ndarray:
        """Class ids (the argmax of the outputs); for regression, the outputs."""
        out = self.logits(x)
        return out.argmax(axis=1) if self.is_classifier else out

    def predict(self, x: Any) -> np.ndarray:
        """Class names as in the training data (a string array); for regression, the outputs."""
        out = self.predict_ids(x)
        return np.asarray(self.classes, dtype=str)[out] if self.is_classifier else out

    def windows(self, words: Sequence[str]) -> np.ndarray:
        if self.vocab is None:
            raise PredictError("tag: this model has no vocabulary; it is not a window model over words")
        if not hasattr(self, "_index"):
            self._index = {w: i for i, w in enumerate(self.vocab)}
        return window_ids(list(words), self._index, (self.info.shape[0] - 1) // 2)

    def tag(self, sentences: Iterable[Sequence[str] | str]) -> list[list[str]]:
        """One predicted tag per word of each sentence (a list of words, or a string split on
        whitespace); unknown words read as <unk>, as in training."""
        out = []
        for s in sentences:
            words = s.split() if isinstance(s, str) else list(s)
            out.append([str(t) for t in self.predict(self.windows(words))] if words else [])
        return out


def checkpoint_of(path: Path) -> Checkpoint:
    """The newest checkpoint that verifies in a run directory, or the checkpoint file itself."""
    if path.is_dir():
        ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        ckpt, warnings = latest_valid(ckpt_dir)
        if ckpt is None:
            detail = "; ".join(warnings) or "it holds none"
            raise CheckpointError(f"{path}: no checkpoint that verifies in {ckpt_dir} ({detail})")
        return ckpt
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint")
    return read_checkpoint(path)


def load(path: str | Path, model: nn.Module | None = None) -> Predictor:
    """The trained model of a run directory (its newest checkpoint that verifies) or of one
    checkpoint file, with its preprocessing, class names and vocabulary. ``model`` is needed
    only when the run's model was passed to the Trainer as an object."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from .export import load_safetensors

        return load_safetensors(path, model)
    ckpt = checkpoint_of(path)
    return from_checkpoint(ckpt, model)


def _info(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> DataInfo:
    saved = meta.get("data_info")
    if not saved:
        raise CheckpointError(f"{meta.get('path', 'checkpoint')}: written by an older distbp without the data's "
                              "shape (meta 'data_info'); it cannot be rebuilt for prediction")
    return DataInfo(**{**saved, "shape": tuple(saved["shape"])})


def build_for(meta: dict[str, Any], arrays: dict[str, np.ndarray], where: str, model: nn.Module | None,
              load: bool = True) -> tuple[nn.Module, DataInfo]:
    """The model a checkpoint's meta describes (or ``model``), with its parameters
    (``arrays["params"]`` in named_parameters order) loaded and checked unless ``load`` is
    False; in eval mode."""
    info = _info(meta, arrays)
    objects = meta.get("objects") or {}
    if model is None:
        if objects.get("model"):
            raise CheckpointError(f"{where}: the run's model was passed to the Trainer as an object "
                                  f"({objects['model'][0]}); pass one of the same shape: "
                                  "distbp.load(path, model=...)")
        model = build_model(meta["config"], info)
    if not load:
        return model.eval(), info
    named = [(n, p.shape) for n, p in model.named_parameters()]
    params = arrays["params"]
    flat = np.concatenate([p.data.ravel() for _, p in model.named_parameters()])
    check_fits(Checkpoint(Path(where), arrays, meta), named, flat.astype(params.dtype))
    offset = 0
    for _, p in model.named_parameters():
        p.data[...] = params[offset:offset + p.size].reshape(p.shape)
        offset += p.size
    return model.eval(), info


def from_checkpoint(ckpt: Checkpoint, model: nn.Module | None = None) -> Predictor:
    model, info = build_for(ckpt.meta, ckpt.arrays, str(ckpt.path), model)
    state = training_state(ckpt)
    pre = Preprocessor.from_state(state.preprocess) if state.preprocess else Preprocessor("none")
    classes = ckpt.arrays["classes"].tolist() if "classes" in ckpt.arrays else None
    vocab = ckpt.arrays["vocab"].tolist() if "vocab" in ckpt.arrays else None
    return Predictor(model, ckpt.meta["config"], classes, vocab, pre, info, ckpt.path, ckpt.step)
