"""Input files read a chunk of rows at a time, and prediction files written the same way, so
that ``distbp-predict`` and ``distbp-eval`` work on inputs larger than memory. The formats
are those distbp trains on: CSV, npz, IDX (raw or .gz) and CoNLL; each reader raises
DataError naming the file and, for text, the line."""

from __future__ import annotations

import csv
import gzip
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from .dataset import DataError
from .loaders import _IDX_DTYPES, numeric, read_idx, sniff_delimiter


@dataclass
class Rows:
    """One chunk of an input: features ``x`` (raw, before preprocessing), the label of each
    row where the file has one (strings; None where it has no label column), and for CoNLL
    the sentences (each a list of its lines' fields)."""

    x: np.ndarray
    labels: list[str] | None
    sentences: list[list[list[str]]] | None = None


def kind_of(path: Path, trained_on: str) -> str:
    """The input's format: by its suffix (.csv, .npz, .conll), else the run's own."""
    name = path.name.lower()
    for suffix, kind in ((".csv", "csv"), (".npz", "npz"), (".conll", "conll")):
        if name.endswith(suffix):
            return kind
    return trained_on


# -- CSV ----------------------------------------------------------------------------------------

def csv_rows(path: Path, features: int, label: str | int | None, chunk: int, delimiter: str = "auto") -> Iterator[Rows]:
    """A CSV like the training file: an optional header; ``features`` feature columns, and
    optionally the label column (``label``: its name or index, by default the last)."""
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        reader = csv.reader(f, delimiter=sniff_delimiter(path, delimiter))
        header, col, width = None, None, None
        xs: list[list[float]] = []
        labels: list[str] = []
        try:
            for line, row in enumerate(reader, start=1):
                if not row or not any(c.strip() for c in row):
                    continue
                if width is None:  # as the training reader: a first row not all numbers is a header
                    header = None if numeric(row) else [c.strip() for c in row]
                    width = len(row)
                    col = _label_column(path, header, width, features, label)
                    if header is not None:
                        continue
                if len(row) != width:
                    raise DataError(f"{path}:{line}: expected {width} fields, got {len(row)}")
                try:
                    xs.append([float(c) for i, c in enumerate(row) if i != col])
                except ValueError:
                    bad = next(i for i, c in enumerate(row) if i != col and not numeric([c]))
                    name = header[bad] if header else f"#{bad}"
                    raise DataError(f"{path}:{line}: column {name}: {row[bad]!r} is not a number") from None
                if col is not None:
                    labels.append(row[col].strip())
                if len(xs) == chunk:
                    yield Rows(np.array(xs, dtype=np.float32), labels if col is not None else None)
                    xs, labels = [], []
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not a UTF-8 text file ({e.reason})") from None
        if width is None:
            raise DataError(f"{path}: no data rows")
        if xs:
            yield Rows(np.array(xs, dtype=np.float32), labels if col is not None else None)


def _label_column(path: Path, header: list[str] | None, width: int, features: int,
                  label: str | int | None) -> int | None:
    if width == features:
        return None  # no label column
    if width != features + 1:
        raise DataError(f"{path}: {width} columns; the model was trained on {features} features "
                        f"(plus, optionally, the label column)")
    if label is None:
        return width - 1
    if isinstance(label, int):
        return label % width
    if header is None or label not in header:
        raise DataError(f"{path}: no label column {label!r} (data.label of the run)")
    return header.index(label)


# -- npz --------------------------------------------------------------------------------------------

def _npy_member(zf: zipfile.ZipFile, key: str, path: Path) -> tuple[IO[bytes], tuple[int, ...], np.dtype]:
    name = f"{key}.npy"
    if name not in zf.namelist():
        raise DataError(f"{path}: no array named {key!r}; the file holds "
                        f"{', '.join(n[:-4] for n in zf.namelist()) or 'nothing'}")
    f = zf.open(name)
    version = np.lib.format.read_magic(f)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(f)
    if dtype.hasobject:
        raise DataError(f"{path}: array {key!r} holds Python objects; distbp never unpickles")
    if fortran and len(shape) > 1:
        raise DataError(f"{path}: array {key!r} is stored in Fortran order; save it C-ordered to stream it")
    return f, shape, dtype


def npz_rows(path: Path, x_key: str, y_key: str, chunk: int) -> Iterator[Rows]:
    """The ``x_key`` array of an .npz, ``chunk`` rows at a time (never unpickling); labels
    from ``y_key`` when the file has it."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path}: not an .npz file ({e})") from None
    with zf:
        f, shape, dtype = _npy_member(zf, x_key, path)
        labels = None
        if f"{y_key}.npy" in zf.namelist():
            with zf.open(f"{y_key}.npy") as g:
                y = np.lib.format.read_array(g, allow_pickle=False)
            labels = [str(v) for v in y.reshape(len(y), -1)[:, 0]] if y.ndim else None
        row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        with f:
            for lo in range(0, shape[0], chunk):
                n = min(chunk, shape[0] - lo)
                blob = f.read(n * row * dtype.itemsize)
                x = np.frombuffer(blob, dtype).reshape(n, row)
                yield Rows(x.astype(np.float32), None if labels is None else labels[lo:lo + n])


def npz_length(path: Path, x_key: str) -> int:
    with zipfile.ZipFile(path) as zf:
        f, shape, _ = _npy_member(zf, x_key, path)
        f.close()
        return int(shape[0])


# -- IDX ----------------------------------------------------------------------------------------------

def idx_rows(path: Path, labels: Path | None, chunk: int) -> Iterator[Rows]:
    """IDX images (raw or .gz) a chunk at a time; labels from ``labels`` when given."""
    opener = gzip.open if path.suffix == ".gz" else open
    names = None
    if labels is not None:
        names = [str(v) for v in read_idx(str(labels), "--labels")]
    with opener(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[0] or head[1] or head[2] not in _IDX_DTYPES:
            raise DataError(f"{path}: not an IDX file (bad magic number {head.hex() or '(empty)'})")
        dtype, ndim = np.dtype(_IDX_DTYPES[head[2]]), head[3]
        shape = tuple(int(d) for d in np.frombuffer(f.read(4 * ndim), ">i4"))
        row = int(np.prod(shape[1:]))
        if names is not None and len(names) != shape[0]:
            raise DataError(f"{path} holds {shape[0]} images but {labels} holds {len(names)} labels")
        for lo in range(0, shape[0], chunk):
            n = min(chunk, shape[0] - lo)
            blob = f.read(n * row * dtype.itemsize)
            if len(blob) != n * row * dtype.itemsize:
                raise DataError(f"{path}: truncated at image {lo + len(blob) // (row * dtype.itemsize)}")
            yield Rows(np.frombuffer(blob, dtype).reshape(n, row).astype(np.float32),
                       None if names is None else names[lo:lo + n])


# -- CoNLL ----------------------------------------------------------------------------------------------

def conll_sentences(path: Path, chunk: int) -> Iterator[Rows]:
    """Sentences of a CoNLL file (one token per line, its fields whitespace-separated; an
    empty line ends a sentence), about ``chunk`` tokens at a time. ``x`` is empty: the
    caller turns words into windows; a last column that is a tag is the label."""
    sentences: list[list[list[str]]] = []
    current: list[list[str]] = []
    tokens = 0
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        try:
            for line in f:
                fields = line.split()
                if not fields:
                    if current:
                        sentences.append(current)
                        tokens += len(current)
                        current = []
                        if tokens >= chunk:
                            yield Rows(np.zeros((0, 0)), None, sentences)
                            sentences, tokens = [], 0
                    continue
                if fields[0] == "-DOCSTART-":
                    continue
                current.append(fields)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    if current:
        sentences.append(current)
    if sentences:
        yield Rows(np.zeros((0, 0)), None, sentences)


# -- writing ----------------------------------------------------------------------------------------------

class NpzWriter:
    """Arrays of known shape written a chunk at a time into temporary .npy files on disk,
    then stored in one .npz: memory stays bounded by the chunk."""

    def __init__(self, out: Path, arrays: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
        self.out = out
        self._dir = tempfile.TemporaryDirectory(prefix=".distbp-npz-", dir=out.parent)
        self.maps = {k: np.lib.format.open_memmap(os.path.join(self._dir.name, f"{k}.npy"), "w+", dtype, shape)
                     for k, (shape, dtype) in arrays.items()}
        self.at = 0

    def write(self, **chunks: np.ndarray) -> None:
        n = len(next(iter(chunks.values())))
        for k, v in chunks.items():
            self.maps[k][self.at:self.at + n] = v
        self.at += n

    def close(self, extra: dict[str, np.ndarray]) -> None:
        for m in self.maps.values():
            m.flush()
        names = list(self.maps)
        self.maps.clear()
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for k in names:
                zf.write(os.path.join(self._dir.name, f"{k}.npy"), f"{k}.npy")
            for k, v in extra.items():
                with zf.open(f"{k}.npy", "w") as f:
                    np.lib.format.write_array(f, v, allow_pickle=False)
        os.replace(tmp, self.out)
        self._dir.cleanup()
