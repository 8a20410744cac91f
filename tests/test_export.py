"""distbp-export: safetensors files that distbp.load reads back to bitwise the same logits,
in distbp's layout and in torch's, which a torch.nn.Sequential loads with strict=True."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import distbp
from distbp import cli
from runs import train_run
from distbp.train import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
NER = REPO / "configs" / "data" / "ner-small.conll"


def _train(tmp: Path, *sets: str) -> Path:
    return train_run(tmp, *sets, steps=30)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("mlp"), "model.sizes=[64, 32, 16, 10]", "model.dropout=0.1")


@pytest.mark.parametrize("layout", ["distbp", "torch"])
def test_export_then_load_gives_bitwise_the_same_logits(mlp_run, tmp_path, capsys, layout):
    out = tmp_path / "m.safetensors"
    assert cli.export_main([str(mlp_run), "-o", str(out), "--layout", layout]) == 0
    a, b = distbp.load(mlp_run), distbp.load(out)
    x = np.random.default_rng(0).uniform(0, 16, (50, 64))
    assert np.array_equal(a.logits(x), b.logits(x))
    assert b.classes == a.classes and b.config == a.config and (b.predict(x) == a.predict(x)).all()


def test_the_torch_layout_names_and_shapes_tensors_as_torch(mlp_run, tmp_path, capsys):
    from safetensors.numpy import load_file
    out = tmp_path / "t.safetensors"
    assert cli.export_main([str(mlp_run), "-o", str(out), "--layout", "torch"]) == 0
    tensors = load_file(str(out))
    # Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear: torch.nn.Sequential numbers them 0..6
    assert {k: v.shape for k, v in tensors.items() if not k.startswith("preprocess.")} == {
        "0.weight": (32, 64), "0.bias": (32,), "3.weight": (16, 32), "3.bias": (16,), "6.weight": (10, 16), "6.bias": (10,)}
    named = read_checkpoint(sorted((mlp_run / "checkpoints").iterdir())[-1]).named_parameters()
    assert np.array_equal(tensors["3.weight"], named["3.weight"].T)


def test_torch_loads_the_file_strictly_and_gives_the_same_logits(mlp_run, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    out = tmp_path / "t.safetensors"
    assert cli.export_main([str(mlp_run), "-o", str(out), "--layout", "torch"]) == 0
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 16),
                              torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 10))
    state = {k: v for k, v in load_file(str(out)).items() if not k.startswith("preprocess.")}
    net.load_state_dict(state, strict=True)
    p = distbp.load(mlp_run)
    x = np.random.default_rng(1).uniform(0, 16, (20, 64))
    z = p.preprocessor.transform(x)  # the run's preprocessing, as distbp applies it
    with torch.no_grad():
        logits = net.eval()(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(logits, p.logits(x), rtol=1e-5, atol=1e-5)


def test_the_window_model_exports_with_its_vocabulary(tmp_path, capsys):
    run = _train(tmp_path, "data.name=conll", f"data.path={NER}", "model.type=window", "model.embed_dim=8",
                 "model.hidden=16")
    out = tmp_path / "w.safetensors"
    assert cli.export_main([str(run), "-o", str(out)]) == 0
    a, b = distbp.load(run), distbp.load(out)
    assert b.vocab == a.vocab and b.classes == a.classes
    sentences = ["Maria Lopez visited Berlin", "nothing here"]
    assert b.tag(sentences) == a.tag(sentences)


def test_files_distbp_did_not_write_are_refused(tmp_path):
    from safetensors.numpy import save_file
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="not a readable safetensors file"):
        distbp.load(tmp_path / "junk.safetensors")
    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(Exception, match="a safetensors file, but not one distbp-export wrote"):
        distbp.load(tmp_path / "other.safetensors")
