"""Your own code named in a config (model.factory, model.loss, data.factory), the
sequential model written as a list of layers with `auto` sizes, and examples/factory: each
bad factory fails with one message naming the key, the import path and the cause (exit 2)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distbp import cli
from distbp.train import read_checkpoint, list_checkpoints

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHORT = ["train.max_steps=6", "train.eval_every=3", "train.progress=plain", "comm.threads=1"]
_names = itertools.count()

MODULE = '''
import numpy as np
import distbp.functional as F
from distbp import nn

CALLS = []

def build(data_info, width=16):
    CALLS.append((data_info.features, data_info.classes, data_info.vocab_size, width))
    return nn.MLP([data_info.features, width, data_info.classes], rng=np.random.default_rng(0))

def wrong_width(data_info):
    return nn.MLP([data_info.features, 8, 5])

def not_a_module(data_info):
    return {"layers": 2}

def raises(data_info, width):
    raise TypeError("width must be even")

def per_sample(output, target):
    return F.cross_entropy(output, target, reduction="none")

def scalar(output, target):
    return F.cross_entropy(output, target)

def blobs(n=300, features=6):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = (rng.normal(size=(n, features)) + 3 * np.eye(3, features)[y]).astype(np.float32)
    return x, y

def junk():
    return "a file name"

VALUE = 3
'''


@pytest.fixture
def mod(tmp_path, monkeypatch):
    """A fresh module of factories in the working directory; its import name."""
    name = f"userfactories{next(_names)}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    (tmp_path / "broken.py").write_text("x = 1 / 0\n")
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


def _train(capsys, *sets: str) -> tuple[int, str, str]:
    args = [a for s in [*SHORT, *sets] for a in ("--set", s)]
    code = cli.train_main(["--run-dir", "run", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_model_factory_is_called_with_the_data_info_and_options(mod, capsys, tmp_path):
    code, out, err = _train(capsys, "model.type=custom", f"model.factory={mod}:build", "model.options.width=24")
    assert code == 0, err
    assert sys.modules[mod].CALLS == [(64, 10, None, 24)]
    ckpt = read_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    assert ckpt.meta["param_shapes"] == [[64, 24], [24], [24, 10], [10]]
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert f"factory: {mod}:build" in config and "sizes" not in config  # only keys that take effect


def test_a_loss_factory_gives_the_built_in_result(mod, capsys, tmp_path):
    common = ["model.type=custom", f"model.factory={mod}:build"]
    assert _train(capsys, *common)[0] == 0
    (tmp_path / "builtin").mkdir()
    (tmp_path / "run").rename(tmp_path / "builtin" / "run")
    assert _train(capsys, *common, f"model.loss={mod}:per_sample")[0] == 0
    a = read_checkpoint(tmp_path / "builtin" / "run" / "checkpoints" / "step-00000006.npz").arrays["params"]
    b = read_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000006.npz").arrays["params"]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # mean of per-sample CE == the fused CE


def test_a_data_factory_is_split_by_val_fraction(mod, capsys, tmp_path):
    code, out, _ = _train(capsys, "data.name=custom", f"data.factory={mod}:blobs", "data.options={n: 200}",
                          "model.sizes=[auto, 16, auto]", "data.val_fraction=0.25")
    assert code == 0
    assert "150 training and 50 validation samples" in out


@pytest.mark.parametrize("sets, message", [
    (["model.factory=nomodule:build"], "model.factory: cannot import nomodule:build: no module named 'nomodule' in "
                                       "the working directory ({cwd}) or on PYTHONPATH"),
    (["model.factory=broken:build"], "model.factory: importing broken:build failed: ZeroDivisionError: division by zero"),
    (["model.factory={mod}:nothere"], "model.factory: {mod}:nothere: module '{mod}' has no attribute 'nothere'"),
    (["model.factory={mod}:VALUE"], "model.factory: {mod}:VALUE is not a function or class but an object of type int"),
    (["model.factory={mod}:not_a_module"], "model.factory: {mod}:not_a_module returned a dict, not an nn.Module"),
    (["model.factory={mod}:raises", "model.options.width=3"],
     "model.factory: {mod}:raises(data_info, width=3) raised TypeError: width must be even"),
    (["model.factory={mod}:build", "model.options.depth=3"],
     "model.factory: {mod}:build(data_info, depth=3) raised TypeError: build() got an unexpected keyword argument 'depth'"),
    (["model.factory={mod}:wrong_width"],
     "model.factory: {mod}:wrong_width: the model's output has shape (2, 5) for a batch of 2, but the data has 10 "
     "classes; model.loss cross_entropy needs (2, 10)"),
    (["model.factory={mod}:build", "model.loss={mod}:scalar"],
     "model.loss: {mod}:scalar: returned shape () for a batch of 2; it must return one loss per sample, shape (2,), "
     "like torch's reduction='none'. The Trainer takes the mean over the global batch itself: with N workers each "
     "holds a slice of it, and a mean per slice would weigh samples differently for each N"),
    (["model.factory={mod}:build", "model.loss={mod}:missing"],
     "model.loss: {mod}:missing: module '{mod}' has no attribute 'missing'"),
    (["model.factory={mod}:build", "model.loss=my loss"],
     "model.loss: 'my loss' is not one of cross_entropy, multi_margin, mse or a function of your own as pkg.module:function"),
    (["model.factory=build"], "model.factory: expected pkg.module:function, got 'build'"),
])
def test_each_bad_model_factory_has_one_message(mod, capsys, tmp_path, sets, message):
    code, out, err = _train(capsys, "model.type=custom", *[s.format(mod=mod) for s in sets])
    assert code == 2
    assert err == f"distbp-train: error: {message.format(mod=mod, cwd=tmp_path)}\n"
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("sets, message", [
    (["data.name=custom", "data.factory={mod}:junk"],
     "data.factory: {mod}:junk: expected a distbp.data.Dataset, an (x, y) pair of numpy arrays, or an object with "
     "__len__ and batch(indices) -> (x, y); got str; return the training data, or a (train, validation) pair"),
    (["data.name=custom"], "data.factory: data.name custom needs pkg.module:function"),
    (["model.type=custom"], "model.factory: model.type custom needs pkg.module:function"),
    (["model.factory={mod}:build"], "model.factory: has no effect with model.type: mlp; it applies to model.type: "
                                    "custom (remove the key, or choose that variant)"),
])
def test_factory_keys_without_their_variant(mod, capsys, sets, message):
    code, _, err = _train(capsys, *[s.format(mod=mod) for s in sets])
    assert (code, err) == (2, f"distbp-train: error: {message.format(mod=mod)}\n")


# -- model.type: sequential ---------------------------------------------------------------------

def test_sequential_layers_with_auto_sizes(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _train(capsys, "model.type=sequential",
                            "model.layers=[{Linear: [auto, 32]}, ReLU, {Dropout: 0.1}, "
                            "{Linear: {in_features: 32, out_features: auto}}]")
    assert code == 0, err
    ckpt = read_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    assert ckpt.meta["param_names"] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert ckpt.meta["param_shapes"] == [[64, 32], [32], [32, 10], [10]]


def test_sequential_embedding_for_conll_windows(capsys, tmp_path, monkeypatch):
    conll = REPO / "configs" / "data" / "ner-small.conll"
    monkeypatch.chdir(tmp_path)
    code, out, err = _train(capsys, "data.name=conll", f"data.path={conll}", "model.type=sequential",
                            "model.layers=[{Embedding: [auto, 8]}, Flatten, {Linear: [auto, 16]}, Tanh, "
                            "{Linear: [16, auto]}]")
    assert code == 0, err
    shapes = read_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1]).meta["param_shapes"]
    assert shapes[0][1] == 8 and shapes[1] == [40, 16]  # 5 words of 8 dims


def test_mlp_sizes_auto_equal_the_written_sizes(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _train(capsys, "model.sizes=[auto, 32, auto]")[0] == 0
    (tmp_path / "run").rename(tmp_path / "auto")
    assert _train(capsys, "model.sizes=[64, 32, 10]")[0] == 0
    a = read_checkpoint(tmp_path / "auto" / "checkpoints" / "step-00000006.npz").arrays["params"]
    b = read_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000006.npz").arrays["params"]
    assert np.array_equal(a, b)


@pytest.mark.parametrize("layers, message", [
    ("[{Linear: [auto, 32]}, Relu]", "model.layers[1]: unknown layer 'Relu'; choose one of Linear, ReLU, Tanh, "
                                     "Sigmoid, LeakyReLU, Hardtanh, Softsign, Dropout, Embedding, Flatten; did you mean ReLU?"),
    ("[{Linear: [auto, 32]}, {Linear: [16, auto]}]",
     "model.layers[1]: Linear takes 16 features, but the layer before gives samples of shape (32,)"),
    ("[{Linear: [auto, 32, 7, 8, 9]}]", "model.layers[0]: Linear: too many positional arguments"),
    ("[{Embedding: [auto, 4]}]", "model.layers[0]: Embedding: num_embeddings cannot be auto here (the data gives "
                                 "no value for it)"),
    ("[{Linear: [auto, 32]}, [ReLU]]", "model.layers[1]: expected a layer name (ReLU) or one mapping of a name to "
                                       "its arguments (Linear: [auto, 128]), got ['ReLU']"),
])
def test_bad_layers(capsys, tmp_path, monkeypatch, layers, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = _train(capsys, "model.type=sequential", f"model.layers={layers}")
    assert (code, err) == (2, f"distbp-train: error: {message}\n")


# -- examples/factory, as its README says to run it -----------------------------------------------

@pytest.mark.slow
def test_the_factory_example_config_trains(tmp_path):
    res = subprocess.run([str(BIN / "distbp-train"), "--config", "gated.yaml", "--run-dir", str(tmp_path / "g"),
                          "--set", "train.epochs=4", "--set", "train.progress=plain"],
                         cwd=REPO / "examples" / "factory", capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    evals = [json.loads(x) for x in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    assert evals[-1]["val_accuracy"] > 0.9


@pytest.mark.slow
def test_the_factory_example_under_mpirun_matches_one_process(tmp_path):
    sets = ["--set", "train.max_steps=20", "--set", "comm.threads=1"]
    one = subprocess.run([str(BIN / "distbp-train"), "--config", "gated.yaml", "--run-dir", str(tmp_path / "1"), *sets],
                         cwd=REPO / "examples" / "factory", capture_output=True, text=True, timeout=120)
    two = subprocess.run([str(BIN / "mpiexec"), "-n", "2", str(BIN / "distbp-train"), "--config", "gated.yaml",
                          "--run-dir", str(tmp_path / "2"), *sets],
                         cwd=REPO / "examples" / "factory", capture_output=True, text=True, timeout=120)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    a, b = (read_checkpoint(tmp_path / d / "checkpoints" / "step-00000020.npz").arrays["params"] for d in "12")
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_the_sequential_example_config_trains(tmp_path):
    res = subprocess.run([str(BIN / "distbp-train"), "--config", str(REPO / "examples" / "factory" / "sequential.yaml"),
                          "--run-dir", str(tmp_path / "s"), "--set", "train.progress=plain"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "val_accuracy 0.9" in res.stdout
