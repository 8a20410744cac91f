"""The metrics each task needs, on numpy arrays only: classification (accuracy, per-class
precision/recall/F1, macro and weighted F1, the confusion matrix), named-entity chunks with
the conlleval script's rules, and regression (MSE, MAE, R²).

Conventions follow scikit-learn's defaults where they apply: a precision or recall with a
zero denominator is 0; weighted F1 weighs each class by its support; R² of several outputs
is their plain average."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np


# -- classification ------------------------------------------------------------------------

def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j]: samples of true class i predicted as j."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def _prf(tp: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(actual > 0, tp / np.maximum(actual, 1), 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return precision, recall, f1


def classification_metrics(confusion: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """From a confusion matrix: ``accuracy``, ``macro_f1``, ``weighted_f1``, ``per_class``
    (name -> precision, recall, f1, support) and ``confusion`` (a list of lists)."""
    c = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(c).astype(np.float64)
    support = c.sum(axis=1)
    precision, recall, f1 = _prf(tp, c.sum(axis=0), support)
    total = int(c.sum())
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1.mean()) if len(f1) else 0.0,
        "weighted_f1": float((f1 * support).sum() / total) if total else 0.0,
        "per_class": {str(name): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(classes, precision, recall, f1, support)},
        "confusion": c.tolist(),
    }


def classify(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """``classification_metrics`` of label ids ``y_pred`` against ``y_true``."""
    return classification_metrics(confusion_matrix(y_true, y_pred, len(classes)), classes)


# -- named-entity chunks (conlleval) ------------------------------------------------------------

def _split(tag: str) -> tuple[str, str]:
    """conlleval's reading of a tag: "B-PER" -> ("B", "PER"); "O" -> ("O", ""); a tag with no
    dash is its own prefix with no type."""
    prefix, sep, kind = tag.partition("-")
    return (prefix, kind) if sep else (tag, "")


# conlleval's endOfChunk and startOfChunk, rule for rule (BIO/IOB2, and IOBE's E-).
_ENDS = {("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"), ("E", "E"), ("E", "I"), ("E", "O")}
_STARTS = {("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"), ("E", "E"), ("E", "I"), ("O", "E")}


def _ends(prev: str, tag: str, prev_type: str, kind: str) -> bool:
    return (prev, tag) in _ENDS or (prev not in ("O", ".") and prev_type != kind) or prev in ("[", "]")


def _starts(prev: str, tag: str, prev_type: str, kind: str) -> bool:
    # An I- after O, or after a chunk of another type, starts a chunk.
    return (prev, tag) in _STARTS or (tag not in ("O", ".") and prev_type != kind) or tag in ("[", "]")


def chunks(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """The chunks of one sentence's tags as (start, end exclusive, type), by conlleval's
    rules for BIO/IOB2: a chunk counts only with exact span and type, and an I- after O or
    after another type starts a chunk."""
    out: set[tuple[int, int, str]] = set()
    prev, prev_type, start = "O", "", -1
    for i, tag in enumerate([*tags, "O"]):  # the end of the sentence closes a chunk, as in conlleval
        cur, kind = _split(tag)
        if start >= 0 and _ends(prev, cur, prev_type, kind):
            out.add((start, i, prev_type))
            start = -1
        if _starts(prev, cur, prev_type, kind):
            start = i
        prev, prev_type = cur, kind
    return out


def entity_metrics(true_sentences: Iterable[Sequence[str]], pred_sentences: Iterable[Sequence[str]]) -> dict[str, Any]:
    """Entity-level ``entity_precision``, ``entity_recall``, ``entity_f1`` over all
    sentences, ``per_type`` (type -> precision, recall, f1, support), and the counts."""
    found: dict[str, list[int]] = {}  # type -> [correct, predicted, true]
    for true, pred in zip(true_sentences, pred_sentences):
        if len(true) != len(pred):
            raise ValueError(f"entity_metrics: a sentence of {len(true)} tags against {len(pred)} predictions")
        t, p = chunks(true), chunks(pred)
        for group, which in ((t & p, 0), (p, 1), (t, 2)):
            for _, _, kind in group:
                found.setdefault(kind, [0, 0, 0])[which] += 1
    counts = np.array([found[k] for k in sorted(found)], dtype=np.float64).reshape(-1, 3)
    total = counts.sum(axis=0)
    p, r, f = _prf(total[:1], total[1:2], total[2:3])
    tp, tr, tf = _prf(counts[:, 0], counts[:, 1], counts[:, 2])
    return {"entity_precision": float(p[0]), "entity_recall": float(r[0]), "entity_f1": float(f[0]),
            "per_type": {k: {"precision": float(a), "recall": float(b), "f1": float(c), "support": int(n)}
                         for k, a, b, c, n in zip(sorted(found), tp, tr, tf, counts[:, 2])},
            "chunks": {"correct": int(total[0]), "predicted": int(total[1]), "true": int(total[2])}}


# -- regression ---------------------------------------------------------------------------------

def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``mse``, ``mae`` and ``r2`` (1 - residual / total sum of squares, averaged over
    outputs; for a constant output, as scikit-learn: 1.0 if predicted exactly, else 0.0)."""
    t = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    residual = ((t - p) ** 2).sum(axis=0)
    total = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
    r2 = np.where(total > 0, 1 - residual / np.where(total > 0, total, 1), np.where(residual == 0, 1.0, 0.0))
    return {"mse": float(((t - p) ** 2).mean()), "mae": float(np.abs(t - p).mean()), "r2": float(r2.mean())}
