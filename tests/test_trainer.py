"""The Trainer on one process: metrics.jsonl as README.md says, the run
directory, final checkpoints, bitwise resume at any step, and clear failures."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import distbp.functional as F
from distbp.autodiff.tensor import Tensor, no_grad
from distbp.comm import LocalCommunicator
from distbp.data import DataError, DistributedSampler
from distbp.train import (CheckpointError, ConfigError, Interrupted, Trainer, TrainingError, config_hash,
                          list_checkpoints, read_checkpoint, resolve)
from distbp.train import trainer as trainer_module
from distbp.train.checkpoint import write_checkpoint
from distbp.train.build import build_model
from distbp.train.config import effective
from distbp.data import data_info, load_data

REPO = Path(__file__).resolve().parents[1]

# 300 samples, 30 for validation: 270 training samples in global batches of 23 make a 12-step
# epoch whose last batch is short (17).
BASE = ["data.name=synthetic", "data.samples=300", "data.features=8", "data.classes=3", "data.noise=1.0",
        "model.sizes=[8, 16, 3]", "train.global_batch=23", "train.epochs=3", "train.max_steps=30",
        "train.log_every=4", "train.eval_every=6", "checkpoint.every=5", "checkpoint.keep=3",
        "optimizer.lr=0.01"]
STEPS_PER_EPOCH = 12
LOG_KEYS = {"step", "epoch", "loss", "lr", "samples_per_s", "world_size"}
EVAL_KEYS = {"step", "val_loss", "val_accuracy"}


def _cfg(*overrides: str) -> dict:
    base = BASE
    if any(o.startswith("data.name=") for o in overrides):  # the synthetic keys have no effect on files
        base = [b for b in BASE if b.split("=")[0] not in ("data.name", "data.samples", "data.features",
                                                           "data.classes", "data.noise")]
    return resolve(None, base + list(overrides))


def _run(run_dir: Path, *overrides: str, resume: str = "auto", cfg: dict | None = None, comm=None):
    cfg = cfg if cfg is not None else _cfg(*overrides)
    stream = io.StringIO()
    result = Trainer(cfg, run_dir=run_dir, resume=resume, comm=comm, stream=stream).run()
    return result, stream.getvalue()


def _final_params(run_dir: Path) -> np.ndarray:
    return read_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1]).arrays["params"]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def captured_models(monkeypatch):
    models = []

    def capture(cfg, info):
        model = build_model(cfg, info)
        # The Trainer's own data, loaded again (deterministic), for reference values.
        models.append((model, load_data(cfg["data"], cfg["seed"], cfg["model"]["window"])))
        return model

    monkeypatch.setattr(trainer_module, "build_model", capture)
    return models


# -- the run directory ------------------------------------------------------------------------------

def test_metrics_jsonl_exactly_as_design_says(tmp_path):
    result, out = _run(tmp_path / "run", "train.max_steps=26")
    assert result.step == 26
    records = _metrics(tmp_path / "run")
    logs = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert len(logs) + len(evals) == len(records)
    assert all(set(r) == LOG_KEYS for r in logs)
    assert all(set(r) == EVAL_KEYS for r in evals)
    assert [r["step"] for r in logs] == [4, 8, 12, 16, 20, 24, 26]
    assert [r["step"] for r in evals] == [6, 12, 18, 24, 26]
    assert [r["epoch"] for r in logs] == [0, 0, 0, 1, 1, 1, 2]  # the epoch of the step just done
    assert all(r["world_size"] == 1 for r in logs)
    for r in logs:
        assert isinstance(r["step"], int) and isinstance(r["epoch"], int)
        assert np.isfinite(r["loss"]) and r["loss"] > 0
        assert r["lr"] == 0.01
        assert r["samples_per_s"] > 0
    for r in evals:
        assert 0.0 <= r["val_accuracy"] <= 1.0 and r["val_loss"] > 0
    assert result.val_loss == evals[-1]["val_loss"] and result.val_accuracy == evals[-1]["val_accuracy"]
    # the loss falls on this easy problem
    assert logs[-1]["loss"] < logs[0]["loss"] and evals[-1]["val_accuracy"] > 0.8


def test_the_loss_logged_is_the_batch_mean(tmp_path, captured_models):
    _run(tmp_path / "run", "train.max_steps=1", "train.log_every=1", "optimizer.name=sgd")
    model, splits = captured_models[0]
    cfg = _cfg("train.max_steps=1", "optimizer.name=sgd")
    fresh = build_model(cfg, data_info(splits.train))
    idx = DistributedSampler(len(splits.train), 23, cfg["seed"]).global_batch_indices(0)
    loss = F.cross_entropy(fresh(Tensor(splits.train.x[idx])), splits.train.y[idx])
    loss.backward()
    logged = _metrics(tmp_path / "run")[0]
    assert logged["step"] == 1
    assert logged["loss"] == pytest.approx(loss.item(), rel=1e-5)
    # one SGD step on the global batch's mean gradient
    params0 = np.concatenate([p.data.ravel() for _, p in fresh.named_parameters()])
    grad = np.concatenate([p.grad.ravel() for _, p in fresh.named_parameters()])
    np.testing.assert_allclose(_final_params(tmp_path / "run"), params0 - 0.01 * grad, rtol=1e-5, atol=1e-7)


def test_evaluation_values(tmp_path, captured_models):
    result, _ = _run(tmp_path / "run")
    model, splits = captured_models[0]
    model.eval()
    with no_grad():
        out = model(Tensor(splits.val.x))
        val_loss = F.cross_entropy(out, splits.val.y).item()
    accuracy = float((out.data.argmax(axis=1) == splits.val.y).mean())
    assert result.val_accuracy == pytest.approx(accuracy, abs=1e-12)
    assert result.val_loss == pytest.approx(val_loss, rel=1e-5)


def test_config_yaml_with_hash(tmp_path):
    cfg = _cfg()
    _run(tmp_path / "run", cfg=cfg)
    text = (tmp_path / "run" / "config.yaml").read_text()
    first = text.splitlines()[0]
    assert first.startswith("# distbp ") and first.endswith(f"; config hash {config_hash(cfg)}")
    assert yaml.safe_load(text) == effective(dict(cfg, run_dir=str(tmp_path / "run")))


def test_final_checkpoint_holds_the_final_parameters(tmp_path, captured_models):
    cfg = _cfg("train.max_steps=27")
    result, _ = _run(tmp_path / "run", cfg=cfg)
    model, splits = captured_models[0]
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert result.checkpoint == ckpt_dir / "step-00000027.npz"
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["step-00000020.npz", "step-00000025.npz",
                                                            "step-00000027.npz"]
    c = read_checkpoint(result.checkpoint)
    flat = np.concatenate([p.data.ravel() for _, p in model.named_parameters()])
    assert c.arrays["params"].dtype == np.float32
    assert np.array_equal(c.arrays["params"], flat)
    meta = c.meta
    assert meta["step"] == 27 and meta["epoch"] == 2 and meta["position"] == 3
    assert meta["world_size"] == 1
    assert meta["config_hash"] == config_hash(cfg) and meta["config"] == dict(cfg, run_dir=str(tmp_path / "run"))
    assert meta["param_names"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert meta["param_shapes"] == [[8, 16], [16], [16, 3], [3]]
    assert {"optim.exp_avg", "optim.exp_avg_sq"} <= set(c.arrays)
    assert np.array_equal(c.arrays["preprocess.mean"], splits.preprocessor.mean)
    assert str(c.arrays["preprocess.kind"]) == "standardize"
    assert c.arrays["classes"].tolist() == ["0", "1", "2"]
    # loads with plain numpy, never unpickling
    with np.load(result.checkpoint, allow_pickle=False) as f:
        assert np.array_equal(f["params"], flat)


def test_final_checkpoint_when_the_epochs_end(tmp_path):
    result, _ = _run(tmp_path / "run", "train.max_steps=null", "train.epochs=2", "checkpoint.every=1000")
    assert result.step == 2 * STEPS_PER_EPOCH
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-00000024.npz"]


def test_log_lines_and_train_log(tmp_path):
    _, out = _run(tmp_path / "run", "train.max_steps=8")
    lines = out.splitlines()
    assert lines[0].startswith("distbp ") and "195 parameters" in lines[0] and "270 training" in lines[0]
    assert any(line.startswith("step 4/8 epoch 0 loss ") for line in lines)
    assert any(line.startswith("eval step 6: val_loss ") for line in lines)
    log = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert log[-1][:4].isdigit() and " done {" in log[-1]
    assert json.loads(log[-1].split(" done ", 1)[1])["step"] == 8


def test_progress_bar_when_asked(tmp_path):
    _, out = _run(tmp_path / "run", "train.max_steps=8", "train.progress=bar")
    assert "step/s" in out or "s/step" in out
    assert "8/8" in out


# -- resume -------------------------------------------------------------------------------------------

OPTIMIZERS = {
    "adam-dropout": ["model.dropout=0.3"],
    "adagrad-annealing": ["optimizer.name=adagrad", "optimizer.lr=0.1", "schedule.name=annealing",
                          "schedule.tau=5", "optimizer.weight_decay=0.001"],
    "momentum-nesterov": ["optimizer.name=momentum", "optimizer.nesterov=true", "model.dropout=0.1"],
    "rmsprop": ["optimizer.name=rmsprop", "optimizer.lr=0.003"],
    "sgd-warmup-cosine": ["optimizer.name=sgd", "optimizer.lr=0.2", "schedule.name=warmup",
                          "schedule.warmup_steps=6", "schedule.after=cosine", "schedule.t_max=30"],
    "adamw-step": ["optimizer.name=adamw", "schedule.name=step", "schedule.step_size=8",
                   "schedule.gamma=0.5", "model.activation=tanh"],
    "whiten-mse": ["data.preprocess=whiten", "model.loss=mse", "model.output_activation=sigmoid"],
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_resume_is_bitwise(tmp_path, name):
    extra = OPTIMIZERS[name]
    _run(tmp_path / "full", *extra, resume="never")
    full = _final_params(tmp_path / "full")
    full_metrics = [{k: v for k, v in r.items() if k != "samples_per_s"} for r in _metrics(tmp_path / "full")]
    for stop in (7, 13, 20):
        d = tmp_path / f"stop{stop}"
        first, _ = _run(d, *extra, f"train.max_steps={stop}", resume="never")
        assert first.step == stop
        result, out = _run(d, *extra)
        assert f"resumed from {d / 'checkpoints' / f'step-{stop:08d}.npz'} at step {stop}" in out
        assert result.step == 30
        assert np.array_equal(_final_params(d), full), f"{name}: stop at {stop}"
        # the log after the resume matches the uninterrupted log value for value
        resumed = [{k: v for k, v in r.items() if k != "samples_per_s"} for r in _metrics(d)
                   if r["step"] > stop]
        assert resumed == [r for r in full_metrics if r["step"] > stop]
    assert np.isfinite(full).all()


def test_resume_after_extending_the_epochs(tmp_path):
    _run(tmp_path / "full", "train.max_steps=null", "train.epochs=3", "model.dropout=0.2")
    _run(tmp_path / "part", "train.max_steps=null", "train.epochs=2", "model.dropout=0.2")
    _run(tmp_path / "part", "train.max_steps=null", "train.epochs=3", "model.dropout=0.2")
    assert np.array_equal(_final_params(tmp_path / "part"), _final_params(tmp_path / "full"))


def _interrupt_at(monkeypatch, stop_after: int) -> None:
    """Send this process SIGTERM during step ``stop_after`` (1-based), as an operator would."""
    original = Trainer._train_step

    def step(self, step, *args, **kwargs):
        if step == stop_after - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_step", step)


@pytest.mark.parametrize("extra", [
    ["schedule.name=cosine"],  # the cosine horizon is the run's length: only a real interruption keeps it
    ["schedule.name=warmup", "schedule.after=cosine", "schedule.warmup_steps=5", "model.dropout=0.2"],
], ids=["cosine", "warmup-cosine-dropout"])
@pytest.mark.parametrize("stop", [7, 13])
def test_interrupted_and_resumed_is_bitwise(tmp_path, monkeypatch, extra, stop):
    _run(tmp_path / "full", *extra)
    with monkeypatch.context() as m:
        _interrupt_at(m, stop)
        with pytest.raises(Interrupted) as info:
            _run(tmp_path / "run", *extra)
    assert info.value.signum == signal.SIGTERM and info.value.step == stop
    assert info.value.path == tmp_path / "run" / "checkpoints" / f"step-{stop:08d}.npz"
    assert "stopped by SIGTERM after step" in str(info.value)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert read_checkpoint(info.value.path).step == stop
    result, _ = _run(tmp_path / "run", *extra)
    assert result.step == 30
    assert np.array_equal(_final_params(tmp_path / "run"), _final_params(tmp_path / "full"))


def test_signal_on_the_last_step_just_finishes(tmp_path, monkeypatch):
    _interrupt_at(monkeypatch, 30)
    result, _ = _run(tmp_path / "run")
    assert result.step == 30


def test_resume_from_an_explicit_path(tmp_path):
    _run(tmp_path / "full")
    _run(tmp_path / "a", "train.max_steps=10", "checkpoint.keep=10")
    src = tmp_path / "a" / "checkpoints" / "step-00000005.npz"
    result, out = _run(tmp_path / "b", resume=str(src))
    assert f"resumed from {src} at step 5" in out
    assert np.array_equal(_final_params(tmp_path / "b"), _final_params(tmp_path / "full"))


def test_resume_truncates_metrics_after_the_checkpoint(tmp_path):
    d = tmp_path / "run"
    _run(d, "checkpoint.keep=10")
    before = _metrics(d)
    final = _final_params(d)
    ckpts = list_checkpoints(d / "checkpoints")
    assert [p.name for p in ckpts][-3:] == ["step-00000020.npz", "step-00000025.npz", "step-00000030.npz"]
    # damage the newest two: auto resume falls back to step 20 and keeps them on disk
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:100])
    blob = bytearray(ckpts[-2].read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    ckpts[-2].write_bytes(bytes(blob))
    result, out = _run(d, "checkpoint.keep=10")
    assert result.step == 30
    assert out.count("warning: skipping damaged checkpoint:") == 2
    assert f"resumed from {d / 'checkpoints' / 'step-00000020.npz'} at step 20" in out
    after = _metrics(d)
    keys = [(r["step"], "val_loss" in r) for r in after]
    assert len(keys) == len(set(keys))  # no duplicate steps
    assert keys == [(r["step"], "val_loss" in r) for r in before]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rs]  # noqa: E731
    assert strip(after) == strip(before)
    assert np.array_equal(_final_params(d), final)
    assert (d / "checkpoints" / "step-00000025.npz").exists()


def test_damaged_newest_checkpoint_falls_back_and_completes(tmp_path):
    _run(tmp_path / "full")
    d = tmp_path / "run"
    _run(d, "train.max_steps=13")
    newest = d / "checkpoints" / "step-00000013.npz"
    newest.write_bytes(newest.read_bytes()[:-50])
    result, out = _run(d)
    assert "warning: skipping damaged checkpoint" in out and str(newest) in out
    assert "at step 10" in out
    assert result.step == 30
    assert np.array_equal(_final_params(d), _final_params(tmp_path / "full"))
    log = (d / "train.log").read_text()
    assert "warning: skipping damaged checkpoint" in log


def _rewrite_with_params(path: Path, params: np.ndarray) -> None:
    """Rewrite a checkpoint with other params, verifying: its checksum is recomputed."""
    ckpt = read_checkpoint(path)
    path.unlink()
    write_checkpoint(path.parent, ckpt.step, dict(ckpt.arrays, params=params), ckpt.meta, keep=100)


def test_a_verified_checkpoint_with_the_wrong_parameter_count_is_skipped_or_refused(tmp_path):
    _run(tmp_path / "full")
    d = tmp_path / "run"
    _run(d, "train.max_steps=13")
    newest = d / "checkpoints" / "step-00000013.npz"
    _rewrite_with_params(newest, read_checkpoint(newest).arrays["params"][:-1])
    with pytest.raises(CheckpointError, match=rf"^{newest}: params hold \d+ float32 values; the model has \d+"):
        _run(tmp_path / "other", resume=str(newest))
    result, out = _run(d)
    assert f"warning: skipping damaged checkpoint: {newest}: params hold" in out
    assert "at step 10" in out and result.step == 30
    assert np.array_equal(_final_params(d), _final_params(tmp_path / "full"))


def test_resume_with_another_config_is_refused(tmp_path):
    _run(tmp_path / "run", "train.max_steps=10")
    with pytest.raises(CheckpointError) as info:
        _run(tmp_path / "run", "optimizer.lr=0.02")
    msg = str(info.value)
    assert "step-00000010.npz was written by another config" in msg
    assert "optimizer.lr: 0.01 -> 0.02" in msg
    with pytest.raises(CheckpointError, match=r"model\.sizes: \[8, 16, 3\] -> \[8, 32, 3\]"):
        _run(tmp_path / "run", "model.sizes=[8, 32, 3]")


def test_resume_never_refuses_existing_checkpoints(tmp_path):
    _run(tmp_path / "run", "train.max_steps=10")
    with pytest.raises(CheckpointError, match=r"already holds 2 checkpoint\(s\)"):
        _run(tmp_path / "run", resume="never")
    assert len(list_checkpoints(tmp_path / "run" / "checkpoints")) == 2


def test_resume_never_starts_fresh_in_a_new_dir(tmp_path):
    result, out = _run(tmp_path / "run", "train.max_steps=5", resume="never")
    assert result.step == 5 and "resumed" not in out


def test_resume_from_a_damaged_path_is_an_error(tmp_path):
    _run(tmp_path / "run", "train.max_steps=5")
    p = tmp_path / "run" / "checkpoints" / "step-00000005.npz"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=rf"^{p}: "):
        _run(tmp_path / "other", resume=str(p))


def test_rerunning_a_finished_run_changes_nothing(tmp_path):
    _run(tmp_path / "run")
    params = _final_params(tmp_path / "run")
    names = [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")]
    result, _ = _run(tmp_path / "run")
    assert result.step == 30
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == names
    assert np.array_equal(_final_params(tmp_path / "run"), params)


# -- failures -----------------------------------------------------------------------------------------

def test_non_finite_loss_names_the_step(tmp_path):
    with pytest.raises(TrainingError, match=r"^non-finite loss \((inf|nan)\) at step \d+; lower optimizer\.lr"):
        with np.errstate(all="ignore"):
            _run(tmp_path / "run", "data.kind=regression", "model.sizes=[8, 16, 1]", "model.loss=mse",
                 "optimizer.name=sgd", "optimizer.lr=1e6")
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == []


def test_huge_data_values(tmp_path):
    p = tmp_path / "huge.npz"
    rng = np.random.default_rng(0)
    np.savez(p, x=np.clip(rng.standard_normal((100, 8)), -3, 3) * 1e38, y=rng.integers(0, 3, 100))
    with pytest.raises(TrainingError, match=r"non-finite (loss|gradient) .*at step 1"):
        with np.errstate(all="ignore"):
            _run(tmp_path / "run", "data.name=npz", f"data.path={p}", "data.preprocess=none")


class _PoisonedComm(LocalCommunicator):
    """A communicator whose all-reduce returns a NaN in one parameter's gradient at one step."""

    def __init__(self, at_call: int, index: int) -> None:
        self.calls, self.at_call, self.index = 0, at_call, index

    def allreduce_sum_(self, flat):
        if flat.size > 100:  # the gradient buffer, not the per-step loss/signal statistics
            self.calls += 1
            if self.calls == self.at_call:
                flat[self.index] = np.nan
        return flat


@pytest.mark.parametrize("index, name", [(3, "0.weight"), (8 * 16 + 2, "0.bias"), (8 * 16 + 16 + 47, "2.weight")])
def test_non_finite_gradient_names_step_and_parameter(tmp_path, index, name):
    with pytest.raises(TrainingError) as info:
        _run(tmp_path / "run", comm=_PoisonedComm(4, index))
    assert str(info.value) == (f"non-finite gradient at step 4 in parameter {name}; "
                               "lower optimizer.lr or check the data")


def test_input_size_mismatch(tmp_path):
    with pytest.raises(ConfigError) as info:
        _run(tmp_path / "run", "model.sizes=[10, 16, 3]")
    assert str(info.value) == "model.sizes: the input size is 10 but the synthetic-blobs data has 8 features"
    with pytest.raises(ConfigError, match="model.sizes: the output size is 4 but .* has 3 classes"):
        _run(tmp_path / "run", "model.sizes=[8, 16, 4]")


def test_nan_in_npz_is_rejected(tmp_path):
    p = tmp_path / "nan.npz"
    x = np.ones((50, 8))
    x[7, 2] = np.nan
    np.savez(p, x=x, y=np.arange(50) % 3)
    with pytest.raises(DataError, match=rf"^{p}: nan at sample 7, column 2"):
        _run(tmp_path / "run", "data.name=npz", f"data.path={p}")


def test_nan_in_csv_is_rejected(tmp_path):
    p = tmp_path / "nan.csv"
    p.write_text("a,b,y\n" + "1,2,0\n" * 5 + "3,NaN,1\n")
    with pytest.raises(DataError, match=rf"^{p}:7: column b: 'NaN'"):
        _run(tmp_path / "run", "data.name=csv", f"data.path={p}", "model.sizes=[2, 4, 2]")


def test_csv_and_npz_train(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 3))
    y = (x[:, 0] > 0).astype(int)
    csv = tmp_path / "d.csv"
    csv.write_text("a,target,b,c\n" + "".join(f"{r[0]},{'yes' if t else 'no'},{r[1]},{r[2]}\n"
                                             for r, t in zip(x, y)))
    result, _ = _run(tmp_path / "csv", "data.name=csv", f"data.path={csv}", "data.label=target",
                     "model.sizes=[3, 8, 2]", "train.max_steps=10", "train.global_batch=10")
    assert result.step == 10 and result.val_accuracy is not None
    npz = tmp_path / "d.npz"
    np.savez(npz, x=x, y=y)
    result, _ = _run(tmp_path / "npz", "data.name=npz", f"data.path={npz}", "model.sizes=[3, 8, 2]",
                     "train.max_steps=10", "train.global_batch=10")
    assert result.step == 10


def test_regression_has_no_accuracy(tmp_path):
    result, _ = _run(tmp_path / "run", "data.kind=regression", "model.sizes=[8, 16, 1]", "model.loss=mse",
                     "train.max_steps=12")
    assert result.val_accuracy is None and result.val_loss > 0
    evals = [r for r in _metrics(tmp_path / "run") if "val_loss" in r]
    assert evals and all(r["val_accuracy"] is None and set(r) == EVAL_KEYS for r in evals)


def test_no_validation_split(tmp_path):
    result, _ = _run(tmp_path / "run", "data.val_fraction=0.0", "train.max_steps=12")
    assert result.val_loss is None and result.step == 12
    assert all("val_loss" not in r for r in _metrics(tmp_path / "run"))


# -- SIGTERM through the command line ---------------------------------------------------------------

SIGNAL_RUN = ["data.name=synthetic", "data.samples=300", "data.features=8", "model.sizes=[8, 64, 64, 3]",
              "model.dropout=0.1", "train.global_batch=4", "train.epochs=100000", "train.max_steps=1000000",
              "train.log_every=5", "train.eval_every=1000", "checkpoint.every=1000", "train.progress=plain"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_writes_a_checkpoint_and_resume_is_bitwise(tmp_path, sig):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "distbp.cli", "--run-dir", str(run_dir)]
    for s in SIGNAL_RUN:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    ckpts = list_checkpoints(run_dir / "checkpoints")
    assert len(ckpts) == 1
    stopped_at = read_checkpoint(ckpts[0]).step
    assert 10 <= stopped_at < 1000000
    assert err.strip() == (f"distbp-train: stopped by {signal.Signals(sig).name} after step {stopped_at}; "
                           f"checkpoint {ckpts[0]}; continue with --resume auto")
    assert "Traceback" not in err
    # resume 40 more steps through the CLI (max_steps is not part of the config hash), then
    # compare with an uninterrupted run of as many steps in-process
    end = f"train.max_steps={stopped_at + 40}"
    done = subprocess.run(cmd + ["--set", end], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert f"resumed from {ckpts[0]} at step {stopped_at}" in done.stdout
    assert f"done: {stopped_at + 40} steps" in done.stdout
    _run(tmp_path / "full", cfg=resolve(None, SIGNAL_RUN + [end]))
    assert np.array_equal(_final_params(run_dir), _final_params(tmp_path / "full"))
    steps = [(r["step"], "val_loss" in r) for r in _metrics(run_dir)]
    assert len(steps) == len(set(steps))


def test_keep_one_with_a_damaged_newer_checkpoint_still_saves(tmp_path, monkeypatch):
    _run(tmp_path / "full", "checkpoint.keep=1")
    d = tmp_path / "run"
    _run(d, "checkpoint.keep=1", "train.max_steps=20")
    newest = d / "checkpoints" / "step-00000020.npz"
    newest.write_bytes(newest.read_bytes()[:100])
    damaged = newest.read_bytes()
    # The only checkpoint is damaged: auto resume stops (no silent fresh start) and moves it
    # to damaged/; --resume never then starts over, and the damaged file is kept.
    with pytest.raises(CheckpointError, match="none of its 1 checkpoint"):
        _run(d, "checkpoint.keep=1")
    kept = d / "checkpoints" / "damaged" / "step-00000020.npz"
    assert not newest.exists() and kept.read_bytes() == damaged
    with monkeypatch.context() as m:
        _interrupt_at(m, 7)
        with pytest.raises(Interrupted) as info:
            _run(d, "checkpoint.keep=1", resume="never")
    assert info.value.path.exists() and read_checkpoint(info.value.path).step == 7
    assert kept.read_bytes() == damaged  # the damaged file is kept
    result, out = _run(d, "checkpoint.keep=1")
    assert "resumed from" in out and "at step 7" in out
    assert np.array_equal(_final_params(d), _final_params(tmp_path / "full"))


def test_extending_a_cosine_run_warns_that_its_horizon_moves(tmp_path):
    run = tmp_path / "run"
    _run(run, "schedule.name=cosine", "train.max_steps=10")
    _, out = _run(run, "schedule.name=cosine", "train.max_steps=20")
    assert "horizon follows the run's length, now 20 steps instead of 10" in out
    _, out = _run(tmp_path / "fixed", "schedule.name=cosine", "schedule.t_max=30", "train.max_steps=10")
    _, out = _run(tmp_path / "fixed", "schedule.name=cosine", "schedule.t_max=30", "train.max_steps=20")
    assert "horizon" not in out
