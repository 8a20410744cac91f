"""Loaders for the file formats distbp reads: npz, csv, idx (MNIST) and the embedded digits.
Each raises DataError naming the file and, for text formats, the line."""

from __future__ import annotations

import csv
import gzip
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from .dataset import DataError, Dataset, check_finite


def _labels_to_classes(raw: list[str] | np.ndarray, what: str) -> tuple[np.ndarray, list[str]]:
    """Class ids 0..K-1 for labels that may be numbers or names; numeric labels keep their
    numeric order, so "10" comes after "9"."""
    labels = np.asarray(raw)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise DataError(_real_labels(what, labels))
        labels = labels.astype(np.int64)
    if labels.dtype.kind in "iu":
        names, y = np.unique(labels, return_inverse=True)
        return y.astype(np.int64), [str(n) for n in names]
    text = [str(v) for v in labels]
    try:
        numeric = [float(v) for v in text]
    except ValueError:
        numeric = None
    if numeric is not None:
        return _labels_to_classes(np.asarray(numeric), what)  # integral: classes; real: refused
    names = sorted(set(text))
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[v] for v in text], dtype=np.int64), names


def _real_labels(what: str, labels: np.ndarray) -> str:
    bad = labels[~np.isfinite(labels) | (labels != np.round(labels))]
    return (f"{what}: the label column holds real numbers ({len(np.unique(labels))} distinct values, such as "
            f"{bad[0]:g}), not class labels; set data.label to the column of class labels, or data.task: "
            "regression to predict the numbers")


def _exists(path: str | os.PathLike, key: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{key}: no such file: {p}")
    return p


def load_digits() -> Dataset:
    """scikit-learn's embedded 8x8 digits: 1,797 images, 64 features in 0..16, 10 classes."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise DataError("data.name: digits needs scikit-learn; install it with "
                        "pip install 'distbp[digits]' (or pip install scikit-learn)") from None
    bunch = sk_load_digits()
    return Dataset("digits", bunch.data.astype(np.float32), bunch.target.astype(np.int64),
                   [str(c) for c in range(10)], source="sklearn.datasets.load_digits")


def load_npz(path: str, x_key: str = "x", y_key: str = "y", task: str = "classification") -> Dataset:
    """Arrays ``x_key`` (n, ...) and ``y_key`` (n,) from an .npz file, never unpickling."""
    p = _exists(path, "data.path")
    if not zipfile.is_zipfile(p):
        with open(p, "rb") as f:
            head = f.read(16)
        raise DataError(f"{p}: not an .npz file (an .npz is a zip archive of .npy arrays; this file starts with "
                        f"{head!r})")
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = [k for k in (x_key, y_key) if k not in f.files]
            if missing:
                raise DataError(f"{p}: no array named {missing[0]!r}; the file holds {', '.join(f.files) or 'nothing'}")
            x, y = f[x_key], f[y_key]
    except DataError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError for object arrays, OSError
        raise DataError(f"{p}: not a readable .npz file ({e})") from None
    if x.ndim == 0 or y.ndim == 0:
        raise DataError(f"{p}: {x_key!r} and {y_key!r} must hold one row per sample, not a single value")
    if x.dtype.kind not in "fiub":
        raise DataError(f"{p}: array {x_key!r} has dtype {x.dtype}; expected numbers")
    if len(x) != len(y):
        raise DataError(f"{p}: {x_key!r} has {len(x)} samples but {y_key!r} has {len(y)}")
    x = x.reshape(len(x), -1).astype(np.float32)
    check_finite(x, str(p))
    if task == "regression":
        y = y.reshape(len(y), -1).astype(np.float32)
        check_finite(y, f"{p} ({y_key})")
        return Dataset(p.stem, x, y, source=str(p))
    if y.size != len(y):
        raise DataError(f"{p}: {y_key!r} has shape {y.shape}; class labels need one value per sample "
                        "(multi-column targets need data.task: regression)")
    yi, classes = _labels_to_classes(y.reshape(-1), f"{p} ({y_key})")
    return Dataset(p.stem, x, yi, classes, source=str(p))


def numeric(cells: Sequence[str]) -> bool:
    """Whether every cell reads as a number (a first CSV row that does not is a header)."""
    try:
        [float(c) for c in cells]
        return True
    except ValueError:
        return False


def sniff_delimiter(path: Path, delimiter: str = "auto") -> str:
    """``delimiter``, or with "auto" the one of , ; tab | that splits the first lines into the
    most columns, equally many on each line."""
    if delimiter != "auto":
        return delimiter
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = [line for line in (f.readline() for _ in range(20)) if line.strip()]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    best, width = ",", 1
    for d in (",", ";", "\t", "|"):
        counts = {len(r) for r in csv.reader(lines, delimiter=d)}
        if len(counts) == 1 and (n := counts.pop()) > width:
            best, width = d, n
    return best


def load_csv(path: str, label: str | int | None = None, task: str = "classification",
             delimiter: str = "auto") -> Dataset:
    """A CSV of numbers with an optional header row (detected: a first row that is not all
    numbers is a header), its delimiter , ; tab or | (detected with "auto"). ``label`` is the
    label column's header name or index; by default the last column. Ragged rows,
    non-numeric values and empty labels are named by line."""
    p = _exists(path, "data.path")
    delimiter = sniff_delimiter(p, delimiter)
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = [(n, r) for n, r in enumerate(csv.reader(f, delimiter=delimiter), start=1)
                    if r and any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not a UTF-8 text file ({e.reason})") from None
    if not rows:
        raise DataError(f"{p}: the file is empty")

    header = None
    if not numeric(rows[0][1]):  # a header row
        header = [c.strip() for c in rows[0][1]]
        rows = rows[1:]
    if not rows:
        raise DataError(f"{p}: a header but no data rows")
    width = len(header) if header else len(rows[0][1])
    for line, r in rows:
        if len(r) != width:
            raise DataError(f"{p}:{line}: expected {width} fields, got {len(r)}")
    if label is None:
        col = width - 1
    elif isinstance(label, int):
        if not -width <= label < width:
            raise DataError(f"data.label: column {label} is outside the {width} columns of {p}")
        col = label % width
    else:
        if header is None:
            raise DataError(f"data.label: {label!r} names a column but {p} has no header row")
        if label not in header:
            raise DataError(f"data.label: no column {label!r} in {p}; columns: {', '.join(header)}")
        col = header.index(label)
    feat_cols = [c for c in range(width) if c != col]
    x = np.empty((len(rows), len(feat_cols)), dtype=np.float32)
    labels = []
    for i, (line, r) in enumerate(rows):
        for j, c in enumerate(feat_cols):
            try:
                x[i, j] = float(r[c])
            except ValueError:
                name = header[c] if header else f"#{c}"
                raise DataError(f"{p}:{line}: column {name}: {r[c]!r} is not a number") from None
            if not np.isfinite(x[i, j]):
                name = header[c] if header else f"#{c}"
                raise DataError(f"{p}:{line}: column {name}: {r[c]!r} (NaN or infinite values are not allowed)")
        labels.append(r[col].strip())
        if not labels[-1]:
            name = header[col] if header else f"#{col}"
            raise DataError(f"{p}:{line}: the label column {name} is empty")
        try:
            bad_label = not math.isfinite(float(labels[-1]))
        except ValueError:
            bad_label = False
        if bad_label:
            name = header[col] if header else f"#{col}"
            raise DataError(f"{p}:{line}: label column {name}: {labels[-1]!r} (NaN or infinite values are not allowed)")
    if task == "regression":
        try:
            y = np.array([float(v) for v in labels], dtype=np.float32)[:, None]
        except ValueError:
            raise DataError(f"{p}: regression targets must be numbers") from None
        return Dataset(p.stem, x, y, source=str(p))
    y, classes = _labels_to_classes(labels, str(p))
    return Dataset(p.stem, x, y, classes, source=str(p))


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str, key: str = "data.path") -> np.ndarray:
    """An IDX array (the MNIST format: magic 0x0000, a type byte, a rank byte, big-endian
    int32 dimensions, then the values), raw or gzip-compressed."""
    p = _exists(path, key)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            blob = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{p}: cannot read ({e})") from None
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] not in _IDX_DTYPES:
        raise DataError(f"{p}: bad magic number {blob[:4].hex() or '(empty)'}; an IDX file starts with "
                        "00 00, a type byte (08, 09, 0b, 0c, 0d, 0e) and the number of dimensions")
    dtype, ndim = np.dtype(_IDX_DTYPES[blob[2]]), blob[3]
    if len(blob) < 4 + 4 * ndim:
        raise DataError(f"{p}: truncated header ({len(blob)} bytes for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(blob, ">i4", ndim, 4))
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(blob) != expected:
        raise DataError(f"{p}: {len(blob)} bytes, but the header's shape {shape} of {dtype.name} needs {expected}")
    return np.frombuffer(blob, dtype, offset=4 + 4 * ndim).reshape(shape)


def load_idx(images: str, labels: str) -> Dataset:
    """MNIST-style image and label IDX files; pixels become float32 features."""
    x = read_idx(images, "data.path")
    y = read_idx(labels, "data.labels")
    if x.ndim == 0:
        raise DataError(f"{images}: holds a single value; expected one image per row")
    if len(x) != len(y):
        raise DataError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels")
    if y.ndim != 1:
        raise DataError(f"{labels}: labels must be one-dimensional, got shape {y.shape}")
    x = x.reshape(len(x), -1).astype(np.float32)
    check_finite(x, images)
    yi, classes = _labels_to_classes(y, labels)
    return Dataset(Path(images).name.split(".")[0], x, yi, classes, source=str(images))
