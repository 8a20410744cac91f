"""Pretrained word vectors for the window model (the CS224N set-up): GloVe or word2vec text
format, optionally gzip-compressed, read a line at a time, keeping only the vocabulary's words."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .conll import normalize
from .dataset import DataError


def read_vectors(path: str | Path, vocab: list[str], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, found): row i is the file's vector for ``vocab[i]`` where ``found[i]``.
    Words are matched after the vocabulary's normalization (lowercase, digits as 0), the
    first occurrence winning (GloVe and word2vec files list frequent words first). A
    word2vec header line ("count dim") is recognized. A vector of another size than ``dim``
    is a DataError naming the file, line and both sizes."""
    p = Path(path)
    index = {w: i for i, w in enumerate(vocab)}
    vectors = np.zeros((len(vocab), dim), dtype=np.float32)
    found = np.zeros(len(vocab), dtype=bool)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                fields = line.rstrip().split(" ")
                if line_no == 1 and len(fields) == 2 and all(x.isdigit() for x in fields):
                    continue  # word2vec's "count dim" header
                if len(fields) < 2:
                    continue
                if len(fields) - 1 != dim:
                    raise DataError(f"model.embeddings: {p}:{line_no}: vectors of {len(fields) - 1} dimensions, "
                                    f"but model.embed_dim is {dim}")
                i = index.get(normalize(fields[0]))
                if i is None or found[i]:
                    continue
                try:
                    vectors[i] = np.array(fields[1:], dtype=np.float32)
                except ValueError:
                    raise DataError(f"model.embeddings: {p}:{line_no}: not a word and {dim} numbers") from None
                found[i] = True
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"model.embeddings: {p}: cannot read ({e})") from None
    return vectors, found
