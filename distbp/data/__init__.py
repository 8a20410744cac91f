"""Data sets, preprocessing and the distributed sampler (numpy only; never imports autodiff)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from . import conll, loaders, synthetic
from .dataset import DataError, Dataset, check_finite
from .preprocess import KINDS as PREPROCESS_KINDS
from .preprocess import Preprocessor
from .sampler import DistributedSampler, slice_bounds, split_indices
from .source import BatchSource, DataInfo, Subset, as_source, data_info, num_classes



def _idx(cfg: Mapping[str, Any], seed: int) -> Dataset:
    if not cfg.get("labels"):
        raise DataError("data.labels: the idx data set needs the path of its label file")
    return loaders.load_idx(cfg["path"], cfg["labels"])


# One entry per data set a config may name (the schema's data.name reads these) and per
# synthetic kind (data.kind). CoNLL is read by sentence and split before windowing (load_splits).
SYNTHETIC: dict[str, Callable[[Mapping[str, Any], int], Dataset]] = {
    "blobs": lambda cfg, seed: synthetic.blobs(cfg["samples"], cfg["features"], cfg["classes"], cfg["noise"], seed),
    "spirals": lambda cfg, seed: synthetic.spirals(cfg["samples"], cfg["classes"], cfg["noise"], seed),
    "regression": lambda cfg, seed: synthetic.regression(cfg["samples"], cfg["features"], cfg["noise"], seed),
}
READERS: dict[str, Callable[[Mapping[str, Any], int], Dataset]] = {
    "digits": lambda cfg, seed: loaders.load_digits(),
    "synthetic": lambda cfg, seed: _synthetic(cfg, seed),
    "npz": lambda cfg, seed: loaders.load_npz(cfg["path"], cfg.get("x_key", "x"), cfg.get("y_key", "y"),
                                              cfg.get("task", "classification")),
    "csv": lambda cfg, seed: loaders.load_csv(cfg["path"], cfg.get("label"), cfg.get("task", "classification"),
                                              cfg.get("delimiter", "auto")),
    "idx": _idx,
}
DATASETS = (*READERS, "conll")
SYNTHETIC_KINDS = tuple(SYNTHETIC)


@dataclass
class Splits:
    """The training and validation sets, already preprocessed with training statistics."""

    train: Dataset
    val: Dataset
    preprocessor: Preprocessor
    test: Dataset | None = None


def _synthetic(cfg: Mapping[str, Any], seed: int) -> Dataset:
    kind = cfg.get("kind", "blobs")
    if kind not in SYNTHETIC:
        raise DataError(f"data.kind: unknown synthetic kind {kind!r}; choose one of {', '.join(SYNTHETIC_KINDS)}")
    return SYNTHETIC[kind](cfg, seed)


def _read(cfg: Mapping[str, Any], seed: int) -> Dataset:
    name = cfg["name"]
    if name not in READERS:
        raise DataError(f"data.name: unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return READERS[name](cfg, seed)


def _check_train(train_idx: np.ndarray, val_fraction: float, n: int, what: str) -> None:
    if len(train_idx) == 0:
        raise DataError(f"data.val_fraction: {val_fraction} of {n} {what} leaves none for training")


def _held_out(n: int, cfg: Mapping[str, Any], seed: int, labels: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(train, validation, test or None) indices: the test part carved first with its own
    draw, so that without one the train/validation split is what it always was."""
    val_fraction, test_fraction = float(cfg.get("val_fraction", 0.1)), float(cfg.get("test_fraction", 0.0))
    rest, test = np.arange(n), None
    if test_fraction:
        rest, test = split_indices(n, test_fraction, seed, labels, salt=0x7E57)
    keep, val = split_indices(len(rest), val_fraction, seed, None if labels is None else labels[rest])
    return rest[keep], rest[val], test


def load_data(cfg: Mapping[str, Any], seed: int, window: int = 2,
              preprocessor: Preprocessor | None = None) -> Splits:
    """Read the data set that the ``data`` config section names, split it deterministically
    (validation, and a test part with ``test_fraction``; CoNLL by sentence, never by token;
    stratified by class with ``stratify``) and preprocess every split with statistics of the
    training split (or with the given ``preprocessor``, restored from a checkpoint).
    ``window`` is the half-width for CoNLL. ``test_path`` is read as the test split."""
    val_fraction = float(cfg.get("val_fraction", 0.1))
    if cfg["name"] == "conll":
        # Split by sentence, and build the vocabulary from training sentences only, so
        # validation words the model never saw are genuinely unknown.
        sentences = conll.read_conll(cfg["path"])
        train_idx, val_idx, test_idx = _held_out(len(sentences), cfg, seed, None)
        _check_train(train_idx, val_fraction, len(sentences), "sentence(s)")
        train_s = [sentences[i] for i in train_idx]
        vocab = conll.build_vocab(train_s, int(cfg.get("min_count", 1)))
        tags = sorted({t for _, ts in sentences for t in ts})

        def windows(part: list) -> Dataset:
            return conll.windows(part, vocab, tags, window, cfg["path"])

        test = None
        if test_idx is not None:
            test = windows([sentences[i] for i in test_idx])
        elif cfg.get("test_path"):
            extra = conll.read_conll(cfg["test_path"])
            unseen = sorted({t for _, ts in extra for t in ts} - set(tags))
            if unseen:
                raise DataError(f"data.test_path: {cfg['test_path']}: tag {unseen[0]!r} is not in the training data")
            test = conll.windows(extra, vocab, tags, window, cfg["test_path"])
        return Splits(windows(train_s), windows([sentences[i] for i in val_idx]), Preprocessor("none"), test)
    data = _read(cfg, seed)
    if len(data) < 2:
        raise DataError(f"{data.source or data.name}: {len(data)} sample(s); need at least 2")
    stratify = bool(cfg.get("stratify")) and data.classes is not None
    train_idx, val_idx, test_idx = _held_out(len(data), cfg, seed, data.y if stratify else None)
    _check_train(train_idx, val_fraction, len(data), "sample(s)")
    train, val = data.subset(train_idx), data.subset(val_idx)
    test = data.subset(test_idx) if test_idx is not None else None
    if cfg.get("test_path"):
        test = _read({**cfg, "path": cfg["test_path"], "labels": cfg.get("test_labels") or cfg.get("labels")}, seed)
        test = _same_classes(test, data, cfg["test_path"])
    if preprocessor is None:
        preprocessor = Preprocessor(cfg.get("preprocess", "standardize"),
                                    float(cfg.get("whiten_eps", 1e-5))).fit(train.x)
    train.x, val.x = preprocessor.transform(train.x), preprocessor.transform(val.x)
    if test is not None:
        test.x = preprocessor.transform(test.x)
    return Splits(train, val, preprocessor, test)


def _same_classes(test: Dataset, train: Dataset, path: str) -> Dataset:
    """``test`` with its labels as ids of the training data's classes (by name)."""
    if test.num_features != train.num_features:
        raise DataError(f"data.test_path: {path} has {test.num_features} features; the training data {train.num_features}")
    if train.classes is None:
        return test
    index = {c: i for i, c in enumerate(train.classes)}
    unseen = sorted(set(test.classes or []) - set(index))
    if unseen:
        raise DataError(f"data.test_path: {path}: label {unseen[0]!r} is not one of the training data's classes")
    ids = np.array([index[c] for c in test.classes], dtype=np.int64)[test.y]
    return Dataset(test.name, test.x, ids, list(train.classes), test.vocab, test.source)


__all__ = ["Dataset", "DataError", "Splits", "BatchSource", "DataInfo", "Subset", "as_source", "data_info",
           "num_classes", "load_data", "Preprocessor", "DistributedSampler",
           "split_indices", "slice_bounds", "check_finite", "DATASETS", "SYNTHETIC_KINDS",
           "PREPROCESS_KINDS"]
