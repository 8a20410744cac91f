"""Data sets, preprocessing and the distributed sampler (numpy only; never imports autodiff)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from . import conll, loaders, synthetic
from .dataset import DataError, Dataset, check_finite
from .preprocess import KINDS as PREPROCESS_KINDS
from .preprocess import Preprocessor
from .sampler import DistributedSampler, slice_bounds, split_indices
from .source import BatchSource, DataInfo, Subset, as_source, data_info, num_classes

DATASETS = ("digits", "synthetic", "npz", "csv", "idx", "conll")
SYNTHETIC_KINDS = ("blobs", "spirals", "regression")


@dataclass
class Splits:
    """The training and validation sets, already preprocessed with training statistics."""

    train: Dataset
    val: Dataset
    preprocessor: Preprocessor


def _read(cfg: Mapping[str, Any], seed: int) -> Dataset:
    name = cfg["name"]
    task = cfg.get("task", "classification")
    if name == "digits":
        return loaders.load_digits()
    if name == "synthetic":
        kind = cfg.get("kind", "blobs")
        if kind == "blobs":
            return synthetic.blobs(cfg["samples"], cfg["features"], cfg["classes"], cfg["noise"], seed)
        if kind == "spirals":
            return synthetic.spirals(cfg["samples"], cfg["classes"], cfg["noise"], seed)
        if kind == "regression":
            return synthetic.regression(cfg["samples"], cfg["features"], cfg["noise"], seed)
        raise DataError(f"data.kind: unknown synthetic kind {kind!r}; choose one of {', '.join(SYNTHETIC_KINDS)}")
    if name == "npz":
        return loaders.load_npz(cfg["path"], cfg.get("x_key", "x"), cfg.get("y_key", "y"), task)
    if name == "csv":
        return loaders.load_csv(cfg["path"], cfg.get("label"), task)
    if name == "idx":
        if not cfg.get("labels"):
            raise DataError("data.labels: the idx data set needs the path of its label file")
        return loaders.load_idx(cfg["path"], cfg["labels"])
    raise DataError(f"data.name: unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


def _check_train(train_idx: np.ndarray, val_fraction: float, n: int, what: str) -> None:
    if len(train_idx) == 0:
        raise DataError(f"data.val_fraction: {val_fraction} of {n} {what} leaves none for training")


def load_data(cfg: Mapping[str, Any], seed: int, window: int = 2,
              preprocessor: Preprocessor | None = None) -> Splits:
    """Read the data set that the ``data`` config section names, split it deterministically
    and preprocess both splits with statistics of the training split (or with the given
    ``preprocessor``, restored from a checkpoint). ``window`` is the half-width for CoNLL."""
    val_fraction = float(cfg.get("val_fraction", 0.1))
    if cfg["name"] == "conll":
        # Split by sentence, and build the vocabulary from training sentences only, so
        # validation words the model never saw are genuinely unknown.
        sentences = conll.read_conll(cfg["path"])
        train_idx, val_idx = split_indices(len(sentences), val_fraction, seed)
        _check_train(train_idx, val_fraction, len(sentences), "sentence(s)")
        train_s = [sentences[i] for i in train_idx]
        val_s = [sentences[i] for i in val_idx]
        vocab = conll.build_vocab(train_s, int(cfg.get("min_count", 1)))
        tags = sorted({t for _, ts in sentences for t in ts})
        return Splits(conll.windows(train_s, vocab, tags, window, cfg["path"]),
                      conll.windows(val_s, vocab, tags, window, cfg["path"]), Preprocessor("none"))
    data = _read(cfg, seed)
    if len(data) < 2:
        raise DataError(f"{data.source or data.name}: {len(data)} sample(s); need at least 2")
    train_idx, val_idx = split_indices(len(data), val_fraction, seed)
    _check_train(train_idx, val_fraction, len(data), "sample(s)")
    train, val = data.subset(train_idx), data.subset(val_idx)
    if preprocessor is None:
        preprocessor = Preprocessor(cfg.get("preprocess", "standardize"),
                                    float(cfg.get("whiten_eps", 1e-5))).fit(train.x)
    train.x, val.x = preprocessor.transform(train.x), preprocessor.transform(val.x)
    return Splits(train, val, preprocessor)


__all__ = ["Dataset", "DataError", "Splits", "BatchSource", "DataInfo", "Subset", "as_source", "data_info",
           "num_classes", "load_data", "Preprocessor", "DistributedSampler",
           "split_indices", "slice_bounds", "check_finite", "DATASETS", "SYNTHETIC_KINDS",
           "PREPROCESS_KINDS"]
