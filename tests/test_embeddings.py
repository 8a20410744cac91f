"""Pretrained word vectors for the window model: GloVe and word2vec text (optionally .gz),
the words the file lacks keeping their initial vectors, the coverage logged, frozen vectors
that no optimizer moves, and a dimension that disagrees refused."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest

from distbp.data import DataError, load_data
from distbp.train import ConfigError, Trainer, read_checkpoint, resolve

REPO = Path(__file__).resolve().parents[1]
NER = REPO / "configs" / "data" / "ner-small.conll"


def _sets(vectors: Path, *more: str) -> list[str]:
    return ["data.name=conll", f"data.path={NER}", "model.type=window", "model.embed_dim=4", "model.hidden=8",
            f"model.embeddings={vectors}", "train.max_steps=20", "train.progress=plain", *more]


def _vocab() -> list[str]:
    cfg = resolve(None, ["data.name=conll", f"data.path={NER}", "model.type=window"])
    return load_data(cfg["data"], cfg["seed"], 2).train.vocab


def _glove(path: Path, words: list[str], dim: int = 4, header: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    vecs = {w: rng.normal(size=dim).astype(np.float32) for w in words}
    text = (f"{len(vecs)} {dim}\n" if header else "") + "".join(
        w + " " + " ".join(f"{v:.6f}" for v in vec) + "\n" for w, vec in vecs.items())
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return {w: np.array([float(f"{v:.6f}") for v in vec], dtype=np.float32) for w, vec in vecs.items()}


def _embedding(run: Path, step: int = 20) -> np.ndarray:
    return read_checkpoint(run / "checkpoints" / f"step-{step:08d}.npz").named_parameters()["embed.weight"]


@pytest.mark.parametrize("name, header", [("glove.txt", False), ("vectors.txt.gz", False), ("w2v.txt", True)])
def test_vectors_are_loaded_and_the_coverage_logged(tmp_path, name, header):
    vocab = _vocab()
    present = vocab[3:3 + len(vocab) // 2]  # half the words; the reserved <unk>, <s>, </s> absent
    vecs = _glove(tmp_path / name, [w.upper() for w in present] + ["notaword"], header=header)  # cased, as GloVe isn't
    sets = _sets(tmp_path / name, "train.max_steps=1", "optimizer.name=sgd", "optimizer.lr=1e-9")
    Trainer(resolve(None, sets), run_dir=tmp_path / "run", stream=io.StringIO()).fit()
    weight = _embedding(tmp_path / "run", 1)
    for i, w in enumerate(vocab):
        if w in present:
            np.testing.assert_allclose(weight[i], vecs[w.upper()], atol=1e-6)  # lr 1e-9: one step moves nothing visible
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"embeddings: {len(present):,} of {len(vocab):,} vocabulary words ({len(present) / len(vocab):.1%}) " \
           f"found in {tmp_path / name}" in log


def test_missing_words_keep_their_initial_vectors(tmp_path):
    vocab = _vocab()
    _glove(tmp_path / "g.txt", vocab[3:10])
    base = _sets(tmp_path / "g.txt", "train.max_steps=1", "optimizer.lr=1e-9", "optimizer.name=sgd")
    Trainer(resolve(None, base), run_dir=tmp_path / "with", stream=io.StringIO()).fit()
    without = [s for s in base if not s.startswith("model.embeddings")]
    Trainer(resolve(None, without), run_dir=tmp_path / "without", stream=io.StringIO()).fit()
    a, b = _embedding(tmp_path / "with", 1), _embedding(tmp_path / "without", 1)
    np.testing.assert_allclose(a[10:], b[10:], atol=1e-7)
    assert not np.allclose(a[3:10], b[3:10])


def test_frozen_vectors_do_not_move_while_the_rest_trains(tmp_path):
    vocab = _vocab()
    vecs = _glove(tmp_path / "g.txt", vocab)
    sets = _sets(tmp_path / "g.txt", "model.freeze_embeddings=true", "optimizer.name=adamw", "optimizer.weight_decay=0.1",
                 "optimizer.lr=0.05")
    Trainer(resolve(None, sets), run_dir=tmp_path / "run", stream=io.StringIO()).fit()
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000020.npz").named_parameters()
    np.testing.assert_array_equal(ckpt["embed.weight"][3], vecs[vocab[3]])
    moved = read_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000020.npz")
    assert "frozen" in (tmp_path / "run" / "train.log").read_text()
    # The hidden layer trained (it is not its Xavier start any more than the frozen one is its file's).
    unfrozen = [s for s in sets if not s.startswith("model.freeze")]
    Trainer(resolve(None, unfrozen), run_dir=tmp_path / "free", stream=io.StringIO()).fit()
    assert not np.array_equal(_embedding(tmp_path / "free")[3], vecs[vocab[3]])
    assert moved.step == 20


def test_a_dimension_that_disagrees_with_embed_dim_is_refused(tmp_path):
    _glove(tmp_path / "g.txt", ["the", "of"], dim=6)
    with pytest.raises(DataError) as e:
        Trainer(resolve(None, _sets(tmp_path / "g.txt")), run_dir=tmp_path / "run", stream=io.StringIO()).fit()
    assert str(e.value) == f"model.embeddings: {tmp_path / 'g.txt'}:1: vectors of 6 dimensions, but model.embed_dim is 4"


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"model.embeddings: no such file: .*missing.txt"):
        resolve(None, _sets(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="model.freeze_embeddings: freezes pretrained vectors; set model.embeddings"):
        resolve(None, ["data.name=conll", f"data.path={NER}", "model.type=window", "model.freeze_embeddings=true"])
