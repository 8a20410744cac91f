"""The command line: exit codes 0/1/2, one clear message on stderr and
no traceback, --print-config, distbp-gradcheck and distbp-plot."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from distbp import cli
from distbp.train import list_checkpoints, load_config, read_checkpoint, resolve
from distbp.train.config import effective

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

SMALL = ["data.name=synthetic", "data.samples=200", "data.features=6", "model.sizes=[6, 8, 3]",
         "train.global_batch=20", "train.max_steps=12", "train.log_every=5", "train.eval_every=5",
         "checkpoint.every=5"]


def _sets(overrides: list[str]) -> list[str]:
    out = []
    for s in overrides:
        out += ["--set", s]
    return out


def _train(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.train_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_error(err: str, prog: str = "distbp-train") -> str:
    assert "Traceback" not in err
    assert err.startswith(f"{prog}: error: "), err
    lines = err.rstrip("\n").split("\n")
    # continuation lines (several config errors) are indented under the first
    assert all(line.startswith("  ") for line in lines[1:]), err
    return lines[0][len(f"{prog}: error: "):]


# -- success -----------------------------------------------------------------------------------------

def test_train_success(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = _train(capsys, "--run-dir", str(run), *_sets(SMALL))
    assert code == 0, err
    assert err == ""
    last = out.strip().splitlines()[-1]
    assert last.startswith("done: 12 steps in ") and f"checkpoint {run / 'checkpoints' / 'step-00000012.npz'}" in last
    assert "val_accuracy" in last
    assert {p.name for p in run.iterdir()} == {"config.yaml", "metrics.jsonl", "train.log", "checkpoints"}


def test_run_dir_from_the_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _train(capsys, *_sets(SMALL + ["run_dir=here/run"]))
    assert code == 0, err
    assert (tmp_path / "here" / "run" / "checkpoints" / "step-00000012.npz").is_file()


def test_print_config(tmp_path, capsys):
    code, out, err = _train(capsys, "--print-config", "--set", "optimizer.lr=0.5", "--set", "model.sizes=[64, 32, 10]")
    assert code == 0 and err == ""
    p = tmp_path / "printed.yaml"
    p.write_text(out)
    expected = resolve(None, ["optimizer.lr=0.5", "model.sizes=[64, 32, 10]"])
    assert load_config(p) == expected
    assert yaml.safe_load(out) == effective(expected)  # only the keys that take effect


def test_print_config_of_a_file(tmp_path, capsys):
    code, out, _ = _train(capsys, "--print-config", "--config", str(REPO / "configs" / "max-margin.yaml"))
    assert code == 0
    assert yaml.safe_load(out) == effective(load_config(REPO / "configs" / "max-margin.yaml"))
    assert yaml.safe_load(out)["optimizer"]["name"] == "adagrad"


# -- exit code 2 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--set", "optimizer.lrr=0.1"], "optimizer.lrr: unknown key; did you mean optimizer.lr?"),
    (["--set", "train.global_batch=abc"], "train.global_batch: expected an integer, got 'abc'"),
    (["--set", "train.global_batch=-5"], "train.global_batch: -5 is out of range; it must be >= 1"),
    (["--set", "optimizer.name=adamm"], "optimizer.name: 'adamm' is not one of sgd, momentum, adagrad, rmsprop, "
                                        "adam, adamw; did you mean adam?"),
    (["--set", "optimizer.lr"], "--set 'optimizer.lr': expected key.path=value"),
    (["--config", "/nonexistent/config.yaml"], "--config: no such file: /nonexistent/config.yaml"),
    (["--resume", "/nonexistent/step-00000010.npz"], "--resume: no such checkpoint file: /nonexistent/step-00000010.npz"),
    (["--set", "data.name=csv", "--set", "data.path=/nonexistent.csv"], "data.path: no such file: /nonexistent.csv"),
    (["--set", "model.type=window"], "model.type: 'window' does not fit data.name 'digits'; the window model "
                                     "reads CoNLL text, and an MLP reads numeric features"),
])
def test_usage_errors_exit_2(capsys, args, message):
    code, out, err = _train(capsys, *args)
    assert code == 2
    assert _assert_one_error(err) == message
    assert out == ""


def test_several_config_errors_in_one_message(capsys):
    code, _, err = _train(capsys, "--set", "optimizer.lrr=0.1", "--set", "train.epochs=0")
    assert code == 2
    assert err == ("distbp-train: error: optimizer.lrr: unknown key; did you mean optimizer.lr?\n"
                   "  train.epochs: 0 is out of range; it must be >= 1\n")


def test_yaml_error_exit_2(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  epochs: [1,\n")
    code, _, err = _train(capsys, "--config", str(p))
    assert code == 2
    assert _assert_one_error(err).startswith(f"{p}:")


def test_model_input_size_mismatch_exit_2(tmp_path, capsys):
    code, _, err = _train(capsys, "--run-dir", str(tmp_path / "run"), *_sets(SMALL + ["model.sizes=[5, 8, 3]"]))
    assert code == 2
    assert _assert_one_error(err) == "model.sizes: the input size is 5 but the synthetic-blobs data has 6 features"


def test_bad_option_exits_2():
    with pytest.raises(SystemExit) as info:
        cli.train_main(["--bogus"])
    assert info.value.code == 2


# -- exit code 1 -------------------------------------------------------------------------------------

def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "i" * arr.ndim, *arr.shape) + arr.astype(">u1").tobytes()


def test_ragged_csv_exit_1(tmp_path, capsys):
    p = tmp_path / "d.csv"
    p.write_text("a,b,y\n1,2,0\n3,4,1\n5,6\n7,8,0\n")
    code, _, err = _train(capsys, "--run-dir", str(tmp_path / "run"), "--set", "data.name=csv",
                          "--set", f"data.path={p}", "--set", "model.sizes=[2, 4, 2]")
    assert code == 1
    assert _assert_one_error(err) == f"{p}:4: expected 3 fields, got 2"


def test_idx_bad_magic_exit_1(tmp_path, capsys):
    img, lab = tmp_path / "img.gz", tmp_path / "lab.gz"
    img.write_bytes(gzip.compress(b"\x08\x03" + _idx(np.zeros((4, 2, 2), np.uint8))[2:]))
    lab.write_bytes(gzip.compress(_idx(np.array([0, 1, 0, 1], np.uint8))))
    code, _, err = _train(capsys, "--run-dir", str(tmp_path / "run"), "--set", "data.name=idx",
                          "--set", f"data.path={img}", "--set", f"data.labels={lab}", "--set", "model.sizes=[4, 2]")
    assert code == 1
    msg = _assert_one_error(err)
    assert msg.startswith(f"{img}: bad magic number 0803") and "magic" in msg


def test_conll_without_tag_exit_1(tmp_path, capsys):
    p = tmp_path / "d.conll"
    p.write_text("John B-PER\nruns O\n\nMary B-PER\nsleeps\n")
    code, _, err = _train(capsys, "--run-dir", str(tmp_path / "run"), "--set", "data.name=conll",
                          "--set", f"data.path={p}", "--set", "model.type=window")
    assert code == 1
    assert _assert_one_error(err).startswith(f"{p}:5: 'sleeps' has no tag")


@pytest.mark.parametrize("fmt", ["npz", "csv"])
def test_nan_in_data_exit_1(tmp_path, capsys, fmt):
    x = np.ones((20, 2))
    x[11, 1] = np.nan
    y = np.arange(20) % 2
    p = tmp_path / f"d.{fmt}"
    if fmt == "npz":
        np.savez(p, x=x, y=y)
    else:
        p.write_text("".join(f"{a},{b},{c}\n" for (a, b), c in zip(x, y)))
    code, _, err = _train(capsys, "--run-dir", str(tmp_path / "run"), "--set", f"data.name={fmt}",
                          "--set", f"data.path={p}", "--set", "model.sizes=[2, 4, 2]")
    assert code == 1
    msg = _assert_one_error(err)
    assert msg.startswith(f"{p}:") and "nan" in msg.lower()


def test_checkpoint_from_another_config_exit_1(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert _train(capsys, "--run-dir", run, *_sets(SMALL))[0] == 0
    code, _, err = _train(capsys, "--run-dir", run, *_sets(SMALL + ["optimizer.lr=0.5"]))
    assert code == 1
    msg = _assert_one_error(err)
    assert "was written by another config" in msg and "optimizer.lr: 0.001 -> 0.5" in msg


def test_resume_never_with_checkpoints_exit_1(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert _train(capsys, "--run-dir", run, *_sets(SMALL))[0] == 0
    code, _, err = _train(capsys, "--run-dir", run, "--resume", "never", *_sets(SMALL))
    assert code == 1
    assert "already holds 3 checkpoint(s)" in _assert_one_error(err)


def test_damaged_resume_path_exit_1(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(capsys, "--run-dir", str(run), *_sets(SMALL))[0] == 0
    p = run / "checkpoints" / "step-00000010.npz"
    blob = bytearray(p.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    p.write_bytes(bytes(blob))
    code, _, err = _train(capsys, "--run-dir", str(tmp_path / "other"), "--resume", str(p), *_sets(SMALL))
    assert code == 1
    assert _assert_one_error(err).startswith(f"{p}: ")


def test_resume_path_continues(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(capsys, "--run-dir", str(run), *_sets(SMALL))[0] == 0
    p = run / "checkpoints" / "step-00000005.npz"
    code, out, err = _train(capsys, "--run-dir", str(tmp_path / "other"), "--resume", str(p), *_sets(SMALL))
    assert code == 0, err
    assert f"resumed from {p} at step 5" in out
    a = read_checkpoint(list_checkpoints(run / "checkpoints")[-1]).arrays["params"]
    b = read_checkpoint(list_checkpoints(tmp_path / "other" / "checkpoints")[-1]).arrays["params"]
    assert np.array_equal(a, b)


def test_non_finite_loss_exit_1(tmp_path, capsys):
    code, _, err = _train(capsys, "--run-dir", str(tmp_path / "run"),
                          *_sets(SMALL + ["data.kind=regression", "model.sizes=[6, 8, 1]", "model.loss=mse",
                                          "optimizer.name=sgd", "optimizer.lr=1e6"]))
    assert code == 1
    msg = _assert_one_error(err)
    assert msg.startswith("non-finite loss") and "at step" in msg


# -- the real processes --------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("args, code, start", [
    (["--set", "optimizer.lrr=0.1"], 2, "distbp-train: error: optimizer.lrr: unknown key; did you mean optimizer.lr?"),
    (["--set", "train.global_batch=-1"], 2, "distbp-train: error: train.global_batch: -1 is out of range"),
    (["--config", "nope.yaml"], 2, "distbp-train: error: --config: no such file: nope.yaml"),
    (["--resume", "nope.npz"], 2, "distbp-train: error: --resume: no such checkpoint file: nope.npz"),
    (["--set", "data.name=synthetic", "--set", "data.kind=regression", "--set", "model.sizes=[16, 1]",
                  "--set", "model.loss=mse", "--set", "optimizer.name=sgd", "--set", "optimizer.lr=1e6",
                  "--set", "train.max_steps=20"], 1, "distbp-train: error: non-finite loss"),
])
def test_exit_codes_of_the_real_command(tmp_path, args, code, start):
    proc = subprocess.run([str(BIN / "distbp-train"), "--run-dir", str(tmp_path / "run"), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.startswith(start), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # one line: no warnings, no traceback
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_ragged_csv_through_python_m(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b,y\n1,2,0\n3,4\n")
    proc = subprocess.run([sys.executable, "-m", "distbp.cli", "--run-dir", str(tmp_path / "run"),
                           "--set", "data.name=csv", "--set", f"data.path={p}", "--set", "model.sizes=[2, 4, 2]"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == f"distbp-train: error: {p}:3: expected 3 fields, got 2\n"


# -- distbp-gradcheck ------------------------------------------------------------------------------

@pytest.mark.parametrize("config, names", [
    ("configs/sigmoid-mse.yaml", ["0.weight", "0.bias", "2.weight", "2.bias"]),
    ("configs/ner-window.yaml", ["embed.weight", "hidden.weight", "hidden.bias", "out.weight", "out.bias"]),
])
def test_gradcheck(capsys, monkeypatch, config, names):
    monkeypatch.chdir(REPO)
    code = cli.gradcheck_main(["--config", config])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["parameter", "shape"]
    rows = [line.split() for line in lines[1:-1]]
    assert [r[0] for r in rows] == names
    for r in rows:
        assert r[-1] == "ok"
        assert float(r[-2]) < 1e-4
    assert lines[-1] == f"all {len(names)} parameters within 0.0001 (float64, central differences)"


def test_gradcheck_reports_a_bad_config(capsys):
    code = cli.gradcheck_main(["--set", "optimizer.lrr=1"])
    _, err = capsys.readouterr()
    assert code == 2
    assert _assert_one_error(err, "distbp-gradcheck") == "optimizer.lrr: unknown key; did you mean optimizer.lr?"


@pytest.mark.slow
def test_gradcheck_command(tmp_path):
    proc = subprocess.run([str(BIN / "distbp-gradcheck"), "--config", "configs/sigmoid-mse.yaml"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "all 4 parameters within" in proc.stdout


# -- distbp-plot -----------------------------------------------------------------------------------

@pytest.fixture
def run_dir(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.train_main(["--run-dir", str(run), *_sets(SMALL)]) == 0
    capsys.readouterr()
    return run


def test_plot_writes_a_png(run_dir, capsys):
    pytest.importorskip("matplotlib")
    code = cli.plot_main([str(run_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    png = run_dir / "metrics.png"
    assert out.strip() == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(run_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    code = cli.plot_main([str(run_dir)])
    _, err = capsys.readouterr()
    assert code == 1
    msg = _assert_one_error(err, "distbp-plot")
    assert "matplotlib" in msg and "'distbp[plot]'" in msg
    assert not (run_dir / "metrics.png").exists()


def test_plot_of_a_directory_without_metrics(tmp_path, capsys):
    code = cli.plot_main([str(tmp_path)])
    _, err = capsys.readouterr()
    assert code == 1
    assert "metrics.jsonl: no such file" in _assert_one_error(err, "distbp-plot")


def test_plot_of_a_broken_metrics_file(run_dir, capsys):
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n")
    code = cli.plot_main([str(run_dir)])
    _, err = capsys.readouterr()
    assert code == 1
    msg = _assert_one_error(err, "distbp-plot")
    assert msg.startswith(f"{run_dir / 'metrics.jsonl'}:") and "not a JSON object" in msg
    assert "internal error" not in msg


def test_gradcheck_bad_arguments_exit_2():
    for args in (["--samples", "0"], ["--max-elements", "-1"]):
        with pytest.raises(SystemExit) as info:
            cli.gradcheck_main(args)
        assert info.value.code == 2


def test_run_dir_that_is_a_file_exit_2(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("")
    code, _, err = _train(capsys, "--run-dir", str(target), *_sets(SMALL))
    assert code == 2  # a bad --run-dir (config.RunDirError), refused before training
    msg = _assert_one_error(err)
    assert "afile" in msg and "internal error" not in msg


def test_plot_skips_a_last_line_cut_short_by_a_crash(run_dir, capsys):
    pytest.importorskip("matplotlib")
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "lo')
    assert cli.plot_main([str(run_dir), "--out", str(run_dir / "p.png")]) == 0
    assert (run_dir / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_version(capsys):
    from distbp import __version__
    with pytest.raises(SystemExit) as e:
        cli.train_main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"distbp {__version__}\n"


def test_help_names_the_config_sections_the_exit_codes_and_distbp_debug(capsys):
    from distbp.train.config import SCHEMA
    with pytest.raises(SystemExit) as e:
        cli.train_main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # the epilog is wrapped
    assert e.value.code == 0
    for section, keys in SCHEMA.items():
        assert (f"{section} (" + ", ".join(keys) + ")" if isinstance(keys, dict) else section) in out
    assert "exit codes: 0 done; 1 a run error" in out and "2 a bad command line or config" in out
    assert "128 + N when signal N (SIGINT 130, SIGTERM 143)" in out
    assert "DISTBP_DEBUG=1 prints the traceback" in out
