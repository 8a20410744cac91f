"""What ``distbp-predict`` and ``distbp-eval`` do with a trained model and an input file, a
chunk at a time (``data.stream``), so that memory stays bounded by the chunk."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import metrics as M
from ..data import DataError
from ..data import stream
from .predictor import PredictError, Predictor


def _rows(p: Predictor, path: Path, chunk: int, labels: Path | None = None) -> tuple[str, Iterator[stream.Rows]]:
    d = p.config["data"]
    kind = stream.kind_of(path, d["name"])
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if p.info.integer_inputs and kind != "conll":
        raise PredictError(f"{path}: this model tags words; give it a CoNLL file (one token per line)")
    if kind == "conll":
        if not p.info.integer_inputs:
            raise PredictError(f"{path}: a CoNLL file, but this model takes {p.info.features} numeric features")
        return kind, stream.conll_sentences(path, chunk)
    if kind == "csv":
        return kind, stream.csv_rows(path, p.info.features, d.get("label"), chunk, d.get("delimiter", "auto"))
    if kind == "npz":
        return kind, stream.npz_rows(path, d.get("x_key", "x"), d.get("y_key", "y"), chunk)
    if kind == "idx":
        return kind, stream.idx_rows(path, labels, chunk)
    raise PredictError(f"{path}: cannot tell its format; name it .csv, .npz or .conll")


def _check_vocabulary(p: Predictor, sentences: list[list[list[str]]], path: Path) -> None:
    """Words map to <unk> when the model never saw them, as in training; but a file of which
    not one word is known was made with another vocabulary (language, casing, tokenization)."""
    words = [fields[0] for s in sentences for fields in s]
    if len(words) >= 20 and not (p.windows(words)[:, (p.info.shape[0] - 1) // 2] != 0).any():
        raise PredictError(f"{path}: none of its first {len(words):,} words is in the model's vocabulary of "
                           f"{len(p.vocab):,}; was it made with another vocabulary (language, tokenization)?")


def _bar(total: int | None, unit: str, show: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, disable=not show, dynamic_ncols=True)


def predict_file(p: Predictor, path: Path, out: Path | None, proba: bool, chunk: int = 4096,
                 progress: bool = True) -> Path:
    """Predictions for every row (or token) of ``path``, written to ``out`` (default: beside
    the input, ``<name>.pred.<suffix>``): CSV rows with ``prediction`` (class name) and, with
    ``proba``, a column per class; CoNLL with the predicted tag appended to each token's
    line, sentence breaks kept; npz with ``prediction`` (and ``proba``, ``classes``)."""
    kind, chunks = _rows(p, path, chunk)
    if proba and not p.is_classifier:
        raise PredictError("--proba: this model is a regression; it has no class probabilities")
    out = out or path.with_name(f"{path.stem}.pred{path.suffix}")
    if out.resolve() == path.resolve():
        raise PredictError(f"-o {out}: that is the input file")
    if kind == "conll":
        with open(out, "w", encoding="utf-8") as f, _bar(None, "sentence", progress) as bar:
            for i, rows in enumerate(chunks):
                if i == 0:
                    _check_vocabulary(p, rows.sentences, path)
                tags = p.tag([[fields[0] for fields in s] for s in rows.sentences])
                for sentence, predicted in zip(rows.sentences, tags):
                    f.write("".join(" ".join([*fields, t]) + "\n" for fields, t in zip(sentence, predicted)) + "\n")
                bar.update(len(rows.sentences))
        return out
    if kind == "npz":
        d = p.config["data"]
        n = stream.npz_length(path, d.get("x_key", "x"))
        names = np.asarray(p.classes, dtype=str) if p.is_classifier else None
        shapes: dict[str, Any] = {"prediction": ((n,), names.dtype) if names is not None
                                  else ((n, p.info.targets), np.dtype(np.float32))}
        if proba:
            shapes["proba"] = ((n, len(p.classes)), np.dtype(np.float32))
        writer = stream.NpzWriter(out, shapes)
        with _bar(n, "row", progress) as bar:
            for rows in chunks:
                writer.write(**_predicted(p, rows.x, proba))
                bar.update(len(rows.x))
        writer.close({"classes": names} if names is not None else {})
        return out
    with open(out, "w", newline="", encoding="utf-8") as f, _bar(None, "row", progress) as bar:
        w = csv.writer(f)
        targets = p.info.targets
        w.writerow(["prediction"] + (list(p.classes) if proba else []) if p.is_classifier or targets == 1
                   else [f"prediction_{i}" for i in range(targets)])
        for rows in chunks:
            got = _predicted(p, rows.x, proba)
            pred = got["prediction"]
            for i in range(len(pred)):
                w.writerow([pred[i]] + [f"{v:.6g}" for v in got["proba"][i]] if proba else
                           [pred[i]] if pred.ndim == 1 else [f"{v:.6g}" for v in pred[i]])
            bar.update(len(pred))
    return out


def _predicted(p: Predictor, x: np.ndarray, proba: bool) -> dict[str, np.ndarray]:
    if not p.is_classifier:
        return {"prediction": p.logits(x).astype(np.float32)}
    probs = p.predict_proba(x)
    out = {"prediction": np.asarray(p.classes, dtype=str)[probs.argmax(axis=1)]}
    if proba:
        out["proba"] = probs.astype(np.float32)
    return out


def _class_ids(p: Predictor, labels: list[str], path: Path) -> np.ndarray:
    index = {c: i for i, c in enumerate(p.classes)}
    ids = np.empty(len(labels), dtype=np.int64)
    for i, lab in enumerate(labels):
        j = index.get(lab)
        if j is None:
            try:  # "3.0" in a file where training saw "3"
                f = float(lab)
                j = index.get(str(int(f))) if f.is_integer() else None
            except ValueError:
                pass
        if j is None:
            shown = ", ".join(p.classes[:12]) + (", ..." if len(p.classes) > 12 else "")
            raise PredictError(f"{path}: label {lab!r} is not one of the model's {len(p.classes)} classes ({shown})")
        ids[i] = j
    return ids


def evaluate_file(p: Predictor, path: Path, chunk: int = 4096, labels: Path | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """The metrics of the model on a labelled file: classification (accuracy, per-class
    precision/recall/F1/support, macro and weighted F1, the confusion matrix), CoNLL (the
    same per tag, plus entity-level precision/recall/F1 by conlleval's rules), or regression
    (MSE, MAE, R²)."""
    kind, chunks = _rows(p, path, chunk, labels)
    if kind == "conll":
        return _evaluate_conll(p, path, chunks, progress)
    if not p.is_classifier:
        true, pred = [], []
        for rows in chunks:
            if rows.labels is None:
                raise PredictError(f"{path}: no target column to evaluate against")
            try:
                true.append(np.array(rows.labels, dtype=np.float64))
            except ValueError:
                raise PredictError(f"{path}: regression targets must be numbers") from None
            pred.append(p.logits(rows.x))
        report = M.regression_metrics(np.concatenate(true), np.concatenate(pred))
        return {"task": "regression", "samples": int(sum(len(t) for t in true)), **report}
    k = len(p.classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    with _bar(None, "row", progress) as bar:
        for rows in chunks:
            if rows.labels is None:
                raise PredictError(f"{path}: no label column to evaluate against")
            confusion += M.confusion_matrix(_class_ids(p, rows.labels, path), p.predict_ids(rows.x), k)
            bar.update(len(rows.x))
    return {"task": "classification", "samples": int(confusion.sum()), **M.classification_metrics(confusion, p.classes)}


def _evaluate_conll(p: Predictor, path: Path, chunks: Iterator[stream.Rows], progress: bool) -> dict[str, Any]:
    k = len(p.classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    gold_all, pred_all = [], []
    with _bar(None, "sentence", progress) as bar:
        for i, rows in enumerate(chunks):
            if i == 0:
                _check_vocabulary(p, rows.sentences, path)
            for sentence in rows.sentences:
                if any(len(fields) < 2 for fields in sentence):
                    raise PredictError(f"{path}: a token without a tag column; evaluation needs the gold tags")
            gold = [[fields[-1] for fields in s] for s in rows.sentences]
            pred = p.tag([[fields[0] for fields in s] for s in rows.sentences])
            flat_gold = [t for s in gold for t in s]
            confusion += M.confusion_matrix(_class_ids(p, flat_gold, path),
                                            np.array([p.classes.index(t) for s in pred for t in s], dtype=np.int64), k)
            gold_all.extend(gold)
            pred_all.extend(pred)
            bar.update(len(rows.sentences))
    entity = M.entity_metrics(gold_all, pred_all)
    return {"task": "conll", "samples": int(confusion.sum()), **M.classification_metrics(confusion, p.classes), **entity}


def format_report(report: dict[str, Any]) -> str:
    """The report as the table ``distbp-eval`` prints."""
    lines = []
    if report["task"] == "regression":
        lines.append(f"{report['samples']} samples: MSE {report['mse']:.6g}  MAE {report['mae']:.6g}  "
                     f"R² {report['r2']:.4f}")
        return "\n".join(lines)
    width = max([len("class")] + [len(c) for c in report["per_class"]])
    lines.append(f"{'class':<{width}}  precision  recall      f1  support")
    for name, r in report["per_class"].items():
        lines.append(f"{name:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  {r['support']:7d}")
    lines.append(f"{report['samples']} samples: accuracy {report['accuracy']:.4f}  macro F1 {report['macro_f1']:.4f}  "
                 f"weighted F1 {report['weighted_f1']:.4f}")
    if report["task"] == "conll":
        lines.append("")
        lines.append(f"{'entity':<{width}}  precision  recall      f1  support")
        for name, r in report["per_type"].items():
            lines.append(f"{name:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  "
                         f"{r['support']:7d}")
        c = report["chunks"]
        lines.append(f"{c['true']} entities, {c['predicted']} predicted, {c['correct']} correct: precision "
                     f"{report['entity_precision']:.4f}  recall {report['entity_recall']:.4f}  "
                     f"F1 {report['entity_f1']:.4f}")
    return "\n".join(lines)


def plot_confusion(report: dict[str, Any], out: Path) -> Path:
    """A PNG of the confusion matrix (rows: true class, columns: predicted)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PredictError("--plot needs matplotlib: pip install 'distbp[plot]'") from None
    c = np.array(report["confusion"])
    names = list(report["per_class"])
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(c, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(c[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if c[i, j] > c.max() / 2 else "black")
    ax.set_title(f"confusion matrix, accuracy {report['accuracy']:.4f}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_json(report: dict[str, Any], out: Path) -> Path:
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out
