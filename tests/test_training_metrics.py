"""The metrics each task needs while training: train.metrics logged per evaluation,
checkpoint.keep_best, train.early_stopping (the same decision for N workers as for one),
the test split into RUN/test_metrics.json, CoNLL split by sentence, stratified splits."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import distbp
from distbp.data import load_data, split_indices
from distbp.metrics import classify, entity_metrics
from distbp.train import Trainer, read_checkpoint, resolve

REPO = Path(__file__).resolve().parents[1]
NER = REPO / "configs" / "data" / "ner-small.conll"
BASE = ["data.name=synthetic", "data.samples=600", "data.features=8", "data.classes=3", "data.noise=2.0",
        "model.sizes=[8, 16, 3]", "train.global_batch=32", "train.max_steps=60", "train.eval_every=5",
        "train.progress=plain", "comm.threads=1", "optimizer.lr=0.01"]


def _run(run_dir: Path, *sets: str) -> dict:
    cfg = resolve(None, BASE + list(sets))
    return Trainer(cfg, run_dir=run_dir, resume="auto", stream=io.StringIO()).fit()


def _evals(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]


def test_train_metrics_are_logged_and_equal_the_metrics_of_the_saved_model(tmp_path):
    _run(tmp_path, "train.metrics=[macro_f1, weighted_f1, accuracy]")
    evals = _evals(tmp_path)
    assert all({"macro_f1", "weighted_f1", "accuracy"} <= set(e) for e in evals)
    assert evals[-1]["accuracy"] == evals[-1]["val_accuracy"]
    # Recomputed from the final checkpoint on the validation split:
    cfg = resolve(None, BASE)
    splits = load_data(cfg["data"], cfg["seed"])
    p = distbp.load(tmp_path)
    report = classify(splits.val.y, p.model(distbp.tensor(splits.val.x)).data.argmax(axis=1), splits.val.classes)
    assert evals[-1]["macro_f1"] == pytest.approx(report["macro_f1"], abs=1e-12)


def test_keep_best_holds_the_best_evaluation_beside_the_last_k(tmp_path):
    _run(tmp_path, "checkpoint.keep_best=val_loss", "checkpoint.every=20", "checkpoint.keep=2")
    evals = _evals(tmp_path)
    best = min(evals, key=lambda e: e["val_loss"])
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "best.npz")
    assert ckpt.step == best["step"] and ckpt.meta["tracking"]["best"] == best["val_loss"]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best.npz", "step-00000040.npz", "step-00000060.npz"]  # pruning leaves best alone
    # best.npz is a checkpoint like the others: it loads and predicts.
    assert distbp.load(tmp_path / "checkpoints" / "best.npz").step == best["step"]


def test_early_stopping_ends_after_patience_evaluations_without_improvement(tmp_path):
    result = _run(tmp_path, "train.max_steps=2000", "train.epochs=1000", "optimizer.lr=0.05",
                  "train.early_stopping={metric: val_loss, patience: 3}")
    evals = _evals(tmp_path)
    losses = [e["val_loss"] for e in evals]
    best_i = int(np.argmin(losses))
    # It stopped at the third evaluation after the best, which no later one beat.
    assert len(evals) == best_i + 4 and result["step"] == evals[-1]["step"] < 2000
    assert (tmp_path / "checkpoints" / f"step-{result['step']:08d}.npz").is_file()


def test_early_stopping_on_a_metric_to_maximize(tmp_path):
    result = _run(tmp_path, "train.max_steps=2000", "train.epochs=1000", "optimizer.lr=0.05",
                  "train.metrics=[macro_f1]", "train.early_stopping={metric: macro_f1, patience: 2, mode: max}")
    f1 = [e["macro_f1"] for e in _evals(tmp_path)]
    best = f1.index(max(f1))  # the first time it reached its best: a tie is no improvement
    assert len(f1) == best + 3 and result["step"] < 2000


def test_early_stopping_resumes_with_its_count(tmp_path):
    sets = ["train.max_steps=2000", "train.epochs=1000", "optimizer.lr=0.05", "checkpoint.every=5",
            "train.early_stopping={metric: val_loss, patience: 3}"]
    full = _run(tmp_path / "full", *sets)
    stop_at = _evals(tmp_path / "full")[-2]["step"]  # stopped one evaluation before the end
    _run(tmp_path / "part", *sets[1:], f"train.max_steps={stop_at}")
    rest = _run(tmp_path / "part", *sets)
    assert rest["step"] == full["step"]
    assert np.array_equal(read_checkpoint(tmp_path / "part" / "checkpoints" / f"step-{full['step']:08d}.npz").arrays["params"],
                          read_checkpoint(tmp_path / "full" / "checkpoints" / f"step-{full['step']:08d}.npz").arrays["params"])


def test_a_test_fraction_is_evaluated_once_into_test_metrics_json(tmp_path):
    _run(tmp_path, "data.test_fraction=0.2")
    report = json.loads((tmp_path / "test_metrics.json").read_text())
    assert report["step"] == 60 and report["samples"] == 120
    assert {"loss", "accuracy", "macro_f1", "weighted_f1", "per_class", "confusion"} <= set(report)
    assert sum(map(sum, report["confusion"])) == 120
    # The test part is held out: validation and training are cut from the other 480 samples.
    assert "432 training and 48 validation samples" in (tmp_path / "train.log").read_text()


def test_a_test_path_is_read_with_the_training_classes(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 3)), rng.integers(0, 2, 200)
    x[:, 0] += 3 * y
    for name, rows in (("train", slice(0, 150)), ("test", slice(150, 200))):
        (tmp_path / f"{name}.csv").write_text("a,b,c,label\n" + "".join(
            f"{r[0]},{r[1]},{r[2]},{'yes' if t else 'no'}\n" for r, t in zip(x[rows], y[rows])))
    cfg = resolve(None, ["data.name=csv", f"data.path={tmp_path / 'train.csv'}", f"data.test_path={tmp_path / 'test.csv'}",
                         "model.sizes=[auto, 8, auto]", "train.max_steps=30", "train.progress=plain"])
    Trainer(cfg, run_dir=tmp_path / "run", stream=io.StringIO()).fit()
    report = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    p = distbp.load(tmp_path / "run")
    direct = classify(y[150:], np.array([p.classes.index(c) for c in p.predict(x[150:])]), p.classes)
    assert report["samples"] == 50 and report["confusion"] == direct["confusion"]
    assert list(report["per_class"]) == ["no", "yes"]


def test_conll_splits_by_sentence_and_entity_f1_is_logged(tmp_path):
    sets = ["data.name=conll", f"data.path={NER}", "model.type=window", "model.embed_dim=8", "model.hidden=16",
            "train.metrics=[entity_f1, macro_f1]", "data.test_fraction=0.1", "train.max_steps=40",
            "train.eval_every=20", "train.progress=plain"]
    cfg = resolve(None, sets)
    Trainer(cfg, run_dir=tmp_path, stream=io.StringIO()).fit()
    splits = load_data(cfg["data"], cfg["seed"], cfg["model"]["window"])
    lengths = [splits.train.extra["sentence_lengths"], splits.val.extra["sentence_lengths"],
               splits.test.extra["sentence_lengths"]]
    assert [sum(n) for n in lengths] == [len(splits.train), len(splits.val), len(splits.test)]
    from distbp.data.conll import read_conll
    assert sum(len(n) for n in lengths) == len(read_conll(str(NER)))  # whole sentences in each part
    evals = _evals(tmp_path)
    p = distbp.load(tmp_path)
    tags = np.asarray(p.classes)
    pred = tags[p.model(splits.val.x).data.argmax(axis=1)]
    cuts = np.cumsum(lengths[1])[:-1]
    direct = entity_metrics([list(s) for s in np.split(tags[splits.val.y], cuts)],
                            [list(s) for s in np.split(pred, cuts)])
    assert evals[-1]["entity_f1"] == pytest.approx(direct["entity_f1"], abs=1e-12)
    test = json.loads((tmp_path / "test_metrics.json").read_text())
    assert {"entity_f1", "entity_precision", "entity_recall", "per_type"} <= set(test)


def test_a_stratified_split_keeps_each_class_share():
    y = np.array([0] * 90 + [1] * 10)
    keep, held = split_indices(100, 0.2, 0, labels=y)
    assert (y[held] == 1).sum() == 2 and (y[held] == 0).sum() == 18 and len(keep) == 80
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(100))
    # Without labels, the split is the one every earlier run made.
    assert np.array_equal(split_indices(100, 0.2, 0)[1], np.sort(np.random.default_rng([0, 0x5A17]).permutation(100)[:20]))


@pytest.mark.parametrize("sets, message", [
    (["checkpoint.keep_best=macro_f1"], "checkpoint.keep_best: 'macro_f1' is not computed by this run; choose one of "
                                        "val_accuracy, val_loss (or add it to train.metrics)"),
    (["train.early_stopping={metric: f1}"], "train.early_stopping.metric: 'f1' is not computed by this run; choose "
                                            "one of val_accuracy, val_loss (or add it to train.metrics)"),
])
def test_a_metric_the_run_does_not_compute_is_refused(tmp_path, sets, message):
    from distbp.train import ConfigError
    with pytest.raises(ConfigError) as e:
        _run(tmp_path, *sets)
    assert str(e.value) == message


@pytest.mark.slow
def test_early_stopping_under_mpirun_stops_where_one_process_does(tmp_path):
    sets = ["train.max_steps=2000", "train.epochs=1000", "optimizer.lr=0.05", "train.early_stopping={metric: val_loss, patience: 3}"]
    one = _run(tmp_path / "one", *sets)
    mpiexec = Path(sys.executable).parent / "mpiexec"
    args = [a for s in BASE + sets for a in ("--set", s)]
    res = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "distbp.cli", "--run-dir", str(tmp_path / "two"),
                          *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"done: {one['step']} steps" in res.stdout
    a = read_checkpoint(tmp_path / "one" / "checkpoints" / f"step-{one['step']:08d}.npz").arrays["params"]
    b = read_checkpoint(tmp_path / "two" / "checkpoints" / f"step-{one['step']:08d}.npz").arrays["params"]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_early_stopping_with_the_parameter_server_ends_every_process_normally(tmp_path):
    sys.path.insert(0, str(REPO / "tests"))
    from faults.zmq_faults import Job, free_endpoint
    sets = BASE + ["train.max_steps=2000", "train.epochs=1000", "optimizer.lr=0.05",
                   "train.early_stopping={metric: val_loss, patience: 3}"]
    one = _run(tmp_path / "one", *sets[len(BASE):])
    job = Job(tmp_path)
    endpoint = free_endpoint()
    try:
        server = job.server("server", endpoint, 2, tmp_path / "zmq", overrides=sets)
        workers = [job.worker(f"worker{i}", endpoint, overrides=sets) for i in range(2)]
        for p in [server, *workers]:
            assert p.wait(60) == 0, p.report()
        assert f"done: {one['step']} steps" in server.stdout
        a = read_checkpoint(tmp_path / "one" / "checkpoints" / f"step-{one['step']:08d}.npz").arrays["params"]
        b = read_checkpoint(tmp_path / "zmq" / "checkpoints" / f"step-{one['step']:08d}.npz").arrays["params"]
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
        job.assert_all_ended()
    finally:
        job.kill_all()
