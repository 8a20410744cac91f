"""Using what was trained: distbp.load, distbp-predict (every input format, read a chunk at a
time) and distbp-eval (its JSON against the metrics computed directly), with the errors for
input that does not fit the model."""

from __future__ import annotations

import csv
import gzip
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest

import distbp
from distbp import cli
from runs import train_run
from distbp.data import split_indices
from distbp.metrics import classify, entity_metrics

REPO = Path(__file__).resolve().parents[1]
NER = REPO / "configs" / "data" / "ner-small.conll"
NAMES = ["cat", "dog", "emu"]


def _blobs(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 5)) * 3 + 10 + 2.5 * np.eye(3, 5)[y] * 3
    return x.round(3), y


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray | None) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"f{i}" for i in range(x.shape[1])] + (["animal"] if y is not None else []))
        for i, row in enumerate(x):
            w.writerow(list(row) + ([NAMES[y[i]]] if y is not None else []))
    return path


def _train(tmp: Path, *sets: str) -> Path:
    return train_run(tmp, *sets, steps=60)


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("csvrun")
    x, y = _blobs()
    data = _write_csv(tmp / "train.csv", x, y)
    run = _train(tmp, "data.name=csv", f"data.path={data}", "data.label=animal", "model.sizes=[auto, 16, auto]",
                 "data.preprocess=standardize")
    return run, x, y


def test_load_gives_the_trained_model_with_its_preprocessing(csv_run, capsys):
    run, x, y = csv_run
    p = distbp.load(run)
    assert p.classes == NAMES and p.vocab is None and p.config["data"]["label"] == "animal"
    assert not p.model.training
    # On the raw validation rows, the accuracy the Trainer logged at its last evaluation.
    _, val = split_indices(len(x), 0.1, 0)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "val_loss" in line][-1]
    assert np.mean(p.predict(x[val]) == np.asarray(NAMES)[y[val]]) == pytest.approx(logged["val_accuracy"], abs=1e-12)
    proba = p.predict_proba(x[:7])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert (np.asarray(NAMES)[proba.argmax(axis=1)] == p.predict(x[:7])).all()
    # A checkpoint file gives the same model as its run directory.
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    np.testing.assert_array_equal(distbp.load(ckpt).logits(x), p.logits(x))


@pytest.mark.parametrize("with_label", [True, False], ids=["label-column", "no-label"])
@pytest.mark.parametrize("chunk", [7, 4096])
def test_predict_csv_one_row_per_input_row(csv_run, tmp_path, capsys, with_label, chunk):
    run, x, y = csv_run
    inp = _write_csv(tmp_path / "in.csv", x[:50], y[:50] if with_label else None)
    out = tmp_path / "out.csv"
    assert cli.predict_main([str(run), str(inp), "-o", str(out), "--proba", "--chunk", str(chunk)]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["prediction", *NAMES] and len(rows) == 51
    p = distbp.load(run)
    assert [r[0] for r in rows[1:]] == list(p.predict(x[:50]))
    np.testing.assert_allclose(np.array([r[1:] for r in rows[1:]], dtype=float), p.predict_proba(x[:50]), atol=1e-5)


def test_predict_npz_writes_npz(csv_run, tmp_path, capsys):
    run, x, y = csv_run
    np.savez(tmp_path / "in.npz", x=x[:40], y=y[:40])
    assert cli.predict_main([str(run), str(tmp_path / "in.npz"), "--proba", "--chunk", "9"]) == 0
    p = distbp.load(run)
    with np.load(tmp_path / "in.pred.npz", allow_pickle=False) as f:
        assert f["prediction"].tolist() == p.predict(x[:40]).tolist() and f["classes"].tolist() == NAMES
        np.testing.assert_allclose(f["proba"], p.predict_proba(x[:40]), atol=1e-6)


def _idx(path: Path, a: np.ndarray, code: int) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}i", *a.shape) + a.tobytes())
    return path


def test_predict_and_eval_idx(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300).astype(np.uint8)
    images = (rng.integers(0, 60, (300, 4, 4)) + 60 * y[:, None, None]).astype(np.uint8)
    img, lab = _idx(tmp_path / "images-idx3-ubyte.gz", images, 0x08), _idx(tmp_path / "labels-idx1-ubyte.gz", y, 0x08)
    run = _train(tmp_path, "data.name=idx", f"data.path={img}", f"data.labels={lab}", "model.sizes=[auto, 8, auto]")
    out = tmp_path / "pred.csv"
    assert cli.predict_main([str(run), str(img), "-o", str(out), "--chunk", "64"]) == 0
    predicted = [r[0] for r in list(csv.reader(out.open()))[1:]]
    p = distbp.load(run)
    assert predicted == list(p.predict(images.reshape(300, -1)))
    capsys.readouterr()
    assert cli.eval_main([str(run), "--data", str(img), "--labels", str(lab), "--json", str(tmp_path / "m.json")]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    direct = classify(y.astype(np.int64), p.predict_ids(images.reshape(300, -1)), p.classes)
    assert report["accuracy"] == pytest.approx(direct["accuracy"]) and report["confusion"] == direct["confusion"]


def test_eval_json_has_the_documented_keys_and_values(csv_run, tmp_path, capsys):
    run, x, y = csv_run
    inp = _write_csv(tmp_path / "test.csv", x[:120], y[:120])
    assert cli.eval_main([str(run), "--data", str(inp), "--json", str(tmp_path / "m.json"), "--plot"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "m.json").read_text())
    assert {"accuracy", "macro_f1", "weighted_f1", "per_class", "confusion"} <= set(report)
    direct = classify(y[:120], distbp.load(run).predict_ids(x[:120]), NAMES)
    for key in ("accuracy", "macro_f1", "weighted_f1", "per_class", "confusion"):
        assert report[key] == direct[key], key
    assert f"accuracy {direct['accuracy']:.4f}" in out and "emu" in out
    png = (tmp_path / "m.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ner")
    return _train(tmp, "data.name=conll", f"data.path={NER}", "model.type=window", "train.max_steps=150",
                  "model.embed_dim=16", "model.hidden=32")


def test_predict_conll_keeps_columns_and_sentence_breaks(ner_run, tmp_path, capsys):
    lines = NER.read_text().splitlines()[2:200]  # after the -DOCSTART- line and its break
    while lines and lines[-1]:
        lines.pop()
    inp = tmp_path / "in.conll"
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.conll"
    assert cli.predict_main([str(ner_run), str(inp), "-o", str(out), "--chunk", "13"]) == 0
    got = out.read_text().splitlines()
    assert len(got) == len(lines)
    p = distbp.load(ner_run)
    sentences = [s.split("\n") for s in "\n".join(lines).strip().split("\n\n")]
    tags = p.tag([[line.split()[0] for line in s] for s in sentences])
    expected = []
    for sentence, predicted in zip(sentences, tags):
        expected += [f"{line} {t}" for line, t in zip(sentence, predicted)] + [""]
    assert got == expected
    assert [g for g in got if not g] == [line for line in lines if not line]  # the breaks, where they were


def test_eval_conll_gives_entity_metrics(ner_run, tmp_path, capsys):
    assert cli.eval_main([str(ner_run), "--data", str(NER), "--json", str(tmp_path / "m.json")]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert {"entity_f1", "entity_precision", "entity_recall", "per_type", "accuracy", "per_class"} <= set(report)
    p = distbp.load(ner_run)
    from distbp.data.conll import read_conll
    sentences = read_conll(str(NER))
    direct = entity_metrics([t for _, t in sentences], p.tag([w for w, _ in sentences]))
    assert report["entity_f1"] == pytest.approx(direct["entity_f1"]) and report["per_type"] == direct["per_type"]
    assert set(report["per_type"]) == {"LOC", "ORG", "PER"}


def test_regression_eval(tmp_path, capsys):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=300)
    np.savez(tmp_path / "r.npz", x=x, y=y)
    run = _train(tmp_path, "data.name=npz", f"data.path={tmp_path / 'r.npz'}", "data.task=regression",
                 "model.sizes=[auto, 16, auto]", "model.loss=mse", "train.max_steps=200", "optimizer.lr=0.01")
    assert cli.eval_main([str(run), "--data", str(tmp_path / "r.npz"), "--json", str(tmp_path / "m.json")]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    pred = distbp.load(run).predict(x)[:, 0]
    assert report["mse"] == pytest.approx(float(np.mean((pred - y) ** 2)), rel=1e-5)
    assert report["mae"] == pytest.approx(float(np.mean(np.abs(pred - y))), rel=1e-5)
    assert report["r2"] == pytest.approx(1 - np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2), rel=1e-5)


@pytest.mark.parametrize("make, message", [
    (lambda t, x, y: _write_csv(t / "wide.csv", np.hstack([x, x[:, :1]]), y),
     "{path}: 7 columns; the model was trained on 5 features (plus, optionally, the label column)"),
    (lambda t, x, y: _write_csv(t / "zebra.csv", x[:3], np.array([0, 1, 2])).write_text(
        (t / "zebra.csv").read_text().replace(",emu", ",zebra")) and t / "zebra.csv",
     "{path}: label 'zebra' is not one of the model's 3 classes (cat, dog, emu)"),
    (lambda t, x, y: NER, "{path}: a CoNLL file, but this model takes 5 numeric features"),
])
def test_input_that_does_not_fit_the_model(csv_run, tmp_path, capsys, make, message):
    run, x, y = csv_run
    path = make(tmp_path, x, y)
    assert cli.eval_main([str(run), "--data", str(path)]) == 1
    assert capsys.readouterr().err == f"distbp-eval: error: {message.format(path=path)}\n"


def test_a_tag_the_model_never_saw_is_named(ner_run, tmp_path, capsys):
    bad = tmp_path / "bad.conll"
    bad.write_text("John B-PER\nlives O\nin O\nRome B-CITY\n")
    assert cli.eval_main([str(ner_run), "--data", str(bad)]) == 1
    assert "label 'B-CITY' is not one of the model's" in capsys.readouterr().err


def test_a_model_passed_as_an_object_must_be_given_to_load(tmp_path):
    from distbp import nn
    from distbp.train import Trainer
    x, y = _blobs()
    model = nn.MLP([5, 8, 3])
    Trainer({"train": {"max_steps": 3, "progress": "plain"}}, model=model, train_data=(x.astype(np.float32), y),
            run_dir=tmp_path, stream=io.StringIO()).fit()
    with pytest.raises(Exception, match=r"the run's model was passed to the Trainer as an object \(distbp.nn.models.MLP\); "
                                        r"pass one of the same shape: distbp.load\(path, model=...\)"):
        distbp.load(tmp_path)
    p = distbp.load(tmp_path, model=nn.MLP([5, 8, 3]))
    np.testing.assert_array_equal(p.logits(x[:4]), model.eval()(distbp.tensor(x[:4].astype(np.float32))).data)


def test_load_names_what_is_missing(tmp_path):
    with pytest.raises(Exception, match="no such run directory or checkpoint"):
        distbp.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no checkpoint that verifies"):
        distbp.load(tmp_path / "empty")


def test_a_file_of_another_vocabulary_is_named(ner_run, tmp_path, capsys):
    other = tmp_path / "other.conll"
    other.write_text("".join(f"zzword{i} O\n" + ("\n" if i % 5 == 4 else "") for i in range(40)))
    for main, args in ((cli.eval_main, ["--data", str(other)]), (cli.predict_main, [str(other)])):
        assert main([str(ner_run), *args]) == 1
        err = capsys.readouterr().err
        assert err.endswith(f"{other}: none of its first 40 words is in the model's vocabulary of "
                            f"{len(distbp.load(ner_run).vocab):,}; was it made with another vocabulary "
                            "(language, tokenization)?\n"), err
