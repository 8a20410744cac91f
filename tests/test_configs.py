"""Every config in configs/ trains, and the default run reaches >= 97%
validation accuracy on digits."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from distbp import cli
from distbp.train import defaults, list_checkpoints, load_config, read_checkpoint
from distbp.train.config import effective

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
BIN = Path(sys.executable).parent


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "i" * arr.ndim, *arr.shape) + arr.astype(">u1").tobytes()


def _mnist_like(tmp_path: Path) -> list[str]:
    """Small IDX files in the MNIST layout: 28x28 ubyte images, gzip-compressed like the originals."""
    import gzip

    rng = np.random.default_rng(0)
    labels = np.arange(120) % 10
    images = rng.integers(0, 60, (120, 28, 28))
    for i, c in enumerate(labels):  # a bright block whose position depends on the class
        images[i, 2 * c:2 * c + 6, 4:20] = 250
    img, lab = tmp_path / "train-images-idx3-ubyte.gz", tmp_path / "train-labels-idx1-ubyte.gz"
    img.write_bytes(gzip.compress(_idx(images.astype(np.uint8))))
    lab.write_bytes(gzip.compress(_idx(labels.astype(np.uint8))))
    return [f"data.path={img}", f"data.labels={lab}", "train.global_batch=32"]


def test_the_shipped_configs():
    names = {p.name for p in CONFIGS}
    assert {"default.yaml", "ner-window.yaml", "sigmoid-mse.yaml", "max-margin.yaml", "mnist-idx.yaml"} <= names


def test_configs_say_what_the_issue_asks(monkeypatch):
    monkeypatch.chdir(REPO)
    ner = load_config("configs/ner-window.yaml")
    assert ner["model"]["type"] == "window" and ner["data"]["name"] == "conll"
    assert (REPO / ner["data"]["path"]).is_file() and ner["data"]["path"].startswith("configs/data/")
    sig = load_config("configs/sigmoid-mse.yaml")
    assert sig["model"]["activation"] == "sigmoid" and sig["model"]["output_activation"] == "sigmoid"
    assert sig["model"]["loss"] == "mse" and sig["optimizer"]["name"] == "sgd"
    mm = load_config("configs/max-margin.yaml")
    assert mm["model"]["loss"] == "multi_margin" and mm["model"]["dropout"] > 0
    assert mm["optimizer"]["name"] == "adagrad" and mm["optimizer"]["weight_decay"] > 0
    assert mm["optimizer"]["decay_biases"] is False and mm["schedule"]["name"] == "annealing"
    mn = load_config("configs/mnist-idx.yaml", ["data.path=configs/default.yaml", "data.labels=configs/default.yaml"])
    assert mn["data"]["name"] == "idx" and mn["model"]["sizes"][0] == 784


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_trains(tmp_path, capsys, monkeypatch, config):
    monkeypatch.chdir(REPO)  # data paths in the configs are relative to the repository root
    overrides = ["train.max_steps=16", "train.log_every=4", "train.eval_every=8", "checkpoint.every=8"]
    if config.stem == "mnist-idx":
        overrides += _mnist_like(tmp_path)
    run = tmp_path / "run"
    args = ["--config", str(config.relative_to(REPO)), "--run-dir", str(run)]
    for s in overrides:
        args += ["--set", s]
    code = cli.train_main(args)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "done: 16 steps" in out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in logs] == [4, 8, 12, 16]
    assert [r["step"] for r in evals] == [8, 16]
    assert all(np.isfinite(r["loss"]) for r in logs)
    assert logs[-1]["loss"] < logs[0]["loss"], logs  # it learns
    ckpt = read_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    assert ckpt.step == 16 and np.isfinite(ckpt.arrays["params"]).all()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    # config.yaml records the run directory the run really used (--run-dir here).
    assert saved == effective(dict(load_config(config.relative_to(REPO), overrides), run_dir=str(run)))
    assert load_config(run / "config.yaml") == dict(load_config(config.relative_to(REPO), overrides), run_dir=str(run))


@pytest.mark.slow
def test_the_default_run_reaches_97_percent(tmp_path):
    """The README's main job: `distbp-train` with no arguments (the default config)."""
    proc = subprocess.run([str(BIN / "distbp-train")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "runs" / "digits-mlp"
    assert yaml.safe_load((run / "config.yaml").read_text()) == effective(defaults())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if "val_accuracy" in r][-1]
    steps = defaults()["train"]["epochs"] * -(-1617 // defaults()["train"]["global_batch"])
    assert final["step"] == steps
    assert final["val_accuracy"] >= 0.97, final
    assert list_checkpoints(run / "checkpoints")[-1].name == f"step-{steps:08d}.npz"
    assert f"val_accuracy {final['val_accuracy']:.4f}" in proc.stdout.splitlines()[-1]
