"""CoNLL-format text for the window classifier: one token per line with its tag in the last
column, blank lines between sentences; a vocabulary from the training split; windows of 2w+1
word ids around every token, padded at sentence edges."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from .dataset import DataError, Dataset

UNK, START, END = "<unk>", "<s>", "</s>"

Sentence = tuple[list[str], list[str]]  # (words, tags)


def read_conll(path: str) -> list[Sentence]:
    """Sentences of (words, tags). ``-DOCSTART-`` lines are skipped; a line with a single
    column has no tag and is an error naming the line."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data.path: no such file: {p}")
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    try:
        with open(p, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not a UTF-8 text file ({e.reason})") from None
    for line_no, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            if words:
                sentences.append((words, tags))
                words, tags = [], []
            continue
        if fields[0] == "-DOCSTART-":
            continue
        if len(fields) < 2:
            raise DataError(f"{p}:{line_no}: {line.strip()!r} has no tag; expected a token and "
                            "its tag separated by whitespace")
        words.append(fields[0])
        tags.append(fields[-1])
    if words:
        sentences.append((words, tags))
    if not sentences:
        raise DataError(f"{p}: no sentences found")
    _check_tag_column(p, sentences, lines)
    return sentences


def _check_tag_column(p: Path, sentences: list[Sentence], lines: list[str]) -> None:
    """A last column with more distinct values than the first, and more than any tag set
    has (CoNLL's NER has 9, the Penn POS tags 45), holds words: the columns are swapped."""
    tags = {t for _, ts in sentences for t in ts}
    if len(tags) <= 100 or len(tags) <= len({w for ws, _ in sentences for w in ws}):
        return
    first = next(i for i, line in enumerate(lines, 1) if line.split() and line.split()[0] != "-DOCSTART-")
    raise DataError(f"{p}:{first}: the last column, which distbp reads as the tag, has {len(tags):,} distinct values, "
                    f"more than the first column (such as {lines[first - 1].split()[-1]!r}): it holds words, not "
                    "tags; put the word first and the tag last on each line")


def normalize(word: str) -> str:
    # Lowercase, and map every digit to 0 so that numbers share embeddings (as the CS224N
    # NER assignment does).
    return "".join("0" if c.isdigit() else c for c in word.lower())


def build_vocab(sentences: list[Sentence], min_count: int = 1) -> list[str]:
    """Words of the training split seen at least ``min_count`` times, most frequent first,
    after the reserved ids 0 = <unk>, 1 = <s> (left padding), 2 = </s> (right padding)."""
    counts = Counter(normalize(w) for words, _ in sentences for w in words)
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return [UNK, START, END] + kept


def window_ids(words: list[str], index: dict[str, int], w: int) -> np.ndarray:
    """The (len(words), 2w+1) word ids of the windows centred on each word: padded with <s>
    and </s>, normalized, unknown words as <unk> (id 0)."""
    ids = [index[START]] * w + [index.get(normalize(t), 0) for t in words] + [index[END]] * w
    return np.array([ids[i:i + 2 * w + 1] for i in range(len(words))], dtype=np.int64).reshape(-1, 2 * w + 1)


def windows(sentences: list[Sentence], vocab: list[str], tag_names: list[str], w: int,
            source: str) -> Dataset:
    """One sample per token: the ids of the 2w+1 words centred on it, and its tag id."""
    index = {word: i for i, word in enumerate(vocab)}
    tag_index = {t: i for i, t in enumerate(tag_names)}
    xs, ys = [], []
    for words, tags in sentences:
        xs.append(window_ids(words, index, w))
        ys.extend(tag_index[tag] for tag in tags)
    x = np.concatenate(xs) if xs else np.zeros((0, 2 * w + 1), dtype=np.int64)
    # Sentence lengths let entity metrics cut the tokens back into sentences.
    return Dataset(Path(source).stem, x, np.array(ys, dtype=np.int64), list(tag_names), list(vocab),
                   source=source, extra={"sentence_lengths": [len(words) for words, _ in sentences]})
