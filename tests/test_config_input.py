"""Config and command-line input that cannot hurt: a YAML bomb, deep nesting, a binary or
huge file, absurd sizes, an empty or unwritable run directory and YAML 1.1's booleans are
each one short config error (exit 2) naming the file or key, fast, never a traceback."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from distbp import cli
from distbp.train import Trainer, config, load_config, resolve
from distbp.train.build import build_model
from distbp.train.config import (MAX_CONFIG_BYTES, MAX_DEPTH, MAX_ERROR_LINES, MAX_NODES, SHOW_CHARS,
                                 ConfigError, LocalConfigError, RunDirError)
from distbp.data import DataInfo

from faults.config_faults import bomb_text, yaml_bomb

# A message is one line of a few hundred characters; the bound leaves room for tmp paths.
MESSAGE_BOUND = 1000
SMALL = ["data.name=synthetic", "data.samples=60", "data.features=4", "model.sizes=[4, 5, 3]",
         "train.global_batch=20", "train.max_steps=2", "checkpoint.every=2"]


def _sets(overrides: list[str]) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


def _train(capsys, *args: str) -> tuple[int, str]:
    code = cli.train_main(list(args))
    _, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    return code, err


def _message(path: Path | None = None, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# -- 1. the YAML reader: aliases, nesting, size, binary -----------------------------------------------

def test_yaml_bomb_is_refused_at_once_with_a_short_message(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(bomb_text(0))  # 8 ** 7 = 2 million values from 363 bytes
    assert bomb.stat().st_size < 400
    t0 = time.monotonic()
    code, err = _train(capsys, "--config", str(bomb), "--run-dir", str(tmp_path / "run"))
    took = time.monotonic() - t0
    assert code == 2
    assert took < 1.0, f"{took:.2f} s"  # a safety net, not a benchmark: it takes milliseconds
    assert len(err) < MESSAGE_BOUND and err.count("\n") == 1, err
    assert str(bomb) in err and f"more than {MAX_NODES:,} values" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seed", [1, 2])  # the bomb under seed:, model.sizes: and data.options:
def test_every_bomb_of_the_fault_report_is_refused(tmp_path, seed):
    msg = _message(_write(tmp_path / "bomb.yaml", bomb_text(seed)))
    assert "refused" in msg and len(msg) < MESSAGE_BOUND


def test_a_bomb_in_a_set_value_and_a_recursive_alias(tmp_path):
    levels = ["l0: &l0 [" + ", ".join(["x"] * 9) + "]"]
    levels += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 7)]  # 9 ** 7 values
    t0 = time.monotonic()
    msg = _message(overrides=("model.options={" + ", ".join(levels) + "}",))
    assert time.monotonic() - t0 < 1.0
    assert msg.startswith("--set model.options: refused: ") and len(msg) < MESSAGE_BOUND
    recursive = _write(tmp_path / "r.yaml", "model:\n  options: &a\n    me: *a\n")
    assert "recursive" in _message(recursive) and str(recursive) in _message(recursive)


def test_a_string_repeated_by_aliases_is_bounded_too(tmp_path):
    p = _write(tmp_path / "s.yaml", "a: &a '" + "x" * 100_000 + "'\nseed: [" + ", ".join(["*a"] * 20) + "]\n")
    msg = _message(p)
    assert msg == f"{p}:2: refused: its aliases expand it to more than 1 MiB of text"


def test_ordinary_anchors_and_merge_keys_still_work(tmp_path):
    p = _write(tmp_path / "ok.yaml", "optimizer: &opt\n  name: sgd\n  lr: 0.1\nschedule:\n  name: step\n"
               "model:\n  type: sequential\n  layers: &layers [{Linear: [auto, 16]}, ReLU, {Linear: [16, auto]}]\n"
               "train:\n  <<: {epochs: 2, progress: plain}\n  global_batch: 32\n")
    cfg = load_config(p)
    assert cfg["optimizer"]["lr"] == 0.1 and cfg["train"]["epochs"] == 2 and cfg["train"]["progress"] == "plain"
    assert cfg["model"]["layers"][1] == "ReLU"


def test_deep_nesting_is_a_config_error(tmp_path, capsys):
    # 1,200 levels: past Python's recursion limit for PyYAML's composer, a RecursionError before
    deep = _write(tmp_path / "deep.yaml", "model:\n  options:\n    x: " + "[" * 1200 + "]" * 1200 + "\n")
    code, err = _train(capsys, "--config", str(deep))
    assert code == 2 and str(deep) in err and f"more than {MAX_DEPTH} levels deep" in err
    ok = _write(tmp_path / "ok.yaml", "model:\n  type: custom\n  factory: a.b:c\n  options:\n    x: "
                + "[" * (MAX_DEPTH - 5) + "]" * (MAX_DEPTH - 5) + "\n")
    assert load_config(ok)["model"]["options"]["x"]  # nesting below the limit reads as before
    msg = _message(overrides=("model.options={x: " + "{a: " * 1200 + "1" + "}" * 1201,))
    assert msg.startswith("--set model.options: refused: it nests more than")


def test_a_binary_file_is_a_config_error_naming_it(tmp_path, capsys):
    exe = _write(tmp_path / "prog", b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)) * 4)
    code, err = _train(capsys, "--config", str(exe))
    assert code == 2 and f"{exe}: a binary file (a NUL byte at offset 7), not a YAML config" in err
    latin1 = _write(tmp_path / "latin1.yaml", "run_dir: caf\xe9\n".encode("latin-1"))
    assert _message(latin1) == f"{latin1}: not UTF-8 text (byte 0xe9 at offset 12), so not a YAML config"
    if os.path.exists("/bin/ls"):  # the report's case
        code, err = _train(capsys, "--config", "/bin/ls")
        assert code == 2 and "/bin/ls: " in err


def test_a_file_too_large_or_not_a_mapping(tmp_path):
    big = _write(tmp_path / "big.yaml", "# " + "x" * MAX_CONFIG_BYTES + "\n")
    assert _message(big) == (f"{big}: larger than 1 MiB; a config is a few kilobytes of YAML "
                             "(is this the right file?)")
    text = _write(tmp_path / "passwd", "root:x:0:0:root:/root:/bin/bash\n" * 200)
    msg = _message(text)
    assert msg.startswith(f"{text}: expected a mapping of config keys") and len(msg) < 2 * SHOW_CHARS + 100


# -- 2. echoed values are cut -------------------------------------------------------------------------

def test_echoed_values_and_long_messages_are_cut(tmp_path):
    msg = _message(overrides=("seed='" + "x" * 20_000 + "'",))
    assert msg.startswith("seed: expected an integer, got 'xxx") and "..." in msg and len(msg) < 300
    msg = _message(overrides=("model.sizes=[" + ", ".join(["[1, 2, 3]"] * 100) + "]",))
    assert msg.startswith("model.sizes[0]: expected an integer, got [1, 2, 3]")
    msg = _message(overrides=("optimizer=[" + ", ".join(["{a: [1, 2, 3]}"] * 100) + "]",))
    head = "optimizer: expected a mapping of keys, got "
    assert msg.startswith(head + "[{'a': [1, 2, 3]}, ") and len(msg) <= len(head) + SHOW_CHARS
    many = _write(tmp_path / "many.yaml", "".join(f"key{i}: 1\n" for i in range(500)))
    lines = _message(many).split("\n")
    assert len(lines) == MAX_ERROR_LINES + 1 and lines[-1] == f"... and {500 - MAX_ERROR_LINES} more"
    assert _message(overrides=("k" * 10_000 + "=1",)).startswith("k" * 50) and len(_message(overrides=(
        "k" * 10_000 + "=1",))) < 300
    assert len(str(ConfigError("x" * 10**6))) <= 1000  # the net under every ConfigError


# -- 3. absurd sizes ----------------------------------------------------------------------------------

def test_absurd_model_size_is_refused_before_anything_is_allocated(tmp_path, capsys):
    t0 = time.monotonic()
    code, err = _train(capsys, "--run-dir", str(tmp_path / "run"), "--set", "model.sizes=[64, 2000000000, 10]")
    assert code == 2 and time.monotonic() - t0 < 5
    assert err.startswith("distbp-train: error: model.sizes: a model of 150,000,000,010 parameters (with "
                          "gradients and adam's state) needs at least ") and " bytes) of memory" in err, err
    assert not (tmp_path / "run").exists()


def test_absurd_synthetic_data_is_refused(tmp_path, capsys):
    code, err = _train(capsys, "--run-dir", str(tmp_path / "run"),
                       *_sets(SMALL[:1] + ["data.samples=1000000000000", "model.sizes=[16, 8, 3]"]))
    assert code == 2 and "data.samples: a synthetic data set of 1,000,000,000,000 samples" in err, err


def test_sizes_from_the_data_and_sequential_layers_are_checked_when_built(monkeypatch):
    cfg = resolve(None, ["model.type=sequential", "model.layers=[{Linear: [auto, 64]}, ReLU, "
                         "{Linear: [64, 3000000000]}, {Linear: [auto, auto]}]"])
    info = DataInfo(features=8, classes=3, vocab_size=None, shape=(8,), targets=3, integer_inputs=False)
    with pytest.raises(LocalConfigError, match=r"^model\.layers\[2\]: a model of 195,000,000,576 parameters"):
        build_model(cfg, info)
    monkeypatch.setattr(config, "available_memory", lambda: 10 * 2**20)  # 10 MiB
    wide = DataInfo(features=1_000_000, classes=3, vocab_size=None, shape=(1_000_000,), targets=3,
                    integer_inputs=False)
    with pytest.raises(LocalConfigError, match=r"^model\.sizes: a model of 64,000,259 parameters .* more than "
                                               r"the 10\.0 MiB available here$"):
        build_model(resolve(None, ["model.sizes=[auto, 64, auto]"]), wide)
    config.check_memory(resolve(None))  # the default config fits in 10 MiB
    monkeypatch.setattr(config, "available_memory", lambda: None)  # unknown: nothing is refused
    config.check_memory(resolve(None, ["model.sizes=[64, 2000000000, 10]"]))


def test_memory_errors_are_not_collective():
    # Another host may have the memory: one rank alone must end the job, not wait in a collective.
    assert LocalConfigError.exit_code == RunDirError.exit_code == 2
    assert not LocalConfigError.collective and not RunDirError.collective and ConfigError.collective


# -- 4. the run directory -----------------------------------------------------------------------------

def test_an_empty_run_dir_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _train(capsys, "--run-dir", "", *_sets(SMALL))
    assert code == 2 and "--run-dir: an empty path, which would mean the working directory" in err
    p = _write(tmp_path / "c.yaml", 'run_dir: ""\n')
    code, err = _train(capsys, "--config", str(p), *_sets(SMALL))
    assert code == 2 and "run_dir: must not be empty (the default is runs/digits-mlp)" in err
    code, err = _train(capsys, *_sets(SMALL + ["run_dir=' '"]))
    assert code == 2 and "run_dir: must not be empty" in err
    with pytest.raises(ConfigError, match=r"^Trainer\(run_dir=\.\.\.\): an empty path"):
        Trainer(resolve(None, SMALL), run_dir="")
    assert sorted(os.listdir(tmp_path)) == ["c.yaml"]  # nothing trained into the working directory


def test_a_run_dir_under_a_file_is_one_sentence(tmp_path, capsys):
    afile = _write(tmp_path / "afile", "")
    code, err = _train(capsys, "--run-dir", str(afile / "run"), *_sets(SMALL))
    assert code == 2 and "Errno" not in err
    assert err == (f"distbp-train: error: run directory {afile / 'run'}: cannot write there: it cannot be "
                   f"created, since {afile} is a file\n")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only directories (the test above fails for root too)")
def test_a_read_only_run_dir_is_one_sentence(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, err = _train(capsys, "--run-dir", str(ro / "run"), *_sets(SMALL))
        assert code == 2 and "Errno" not in err
        assert err == (f"distbp-train: error: run directory {ro / 'run'}: cannot write there: {ro} is not "
                       "writable by this user (permission denied)\n")
    finally:
        ro.chmod(0o700)


def test_a_run_dir_without_write_permission_as_any_user_sees_it(tmp_path, capsys, monkeypatch):
    # The same refusal as above, for root too: os.access as a user without write permission
    # answers it, on a file system that is not read-only.
    monkeypatch.setattr(config.os, "access", lambda path, mode, **kw: False)
    code, err = _train(capsys, "--run-dir", str(tmp_path / "run"), *_sets(SMALL))
    assert code == 2
    assert err == (f"distbp-train: error: run directory {tmp_path / 'run'}: cannot write there: {tmp_path} is "
                   "not writable by this user (permission denied)\n")


def test_a_write_failing_later_is_one_sentence_too():
    err = config.run_dir_error(Path("/r"), OSError(30, "Read-only file system", "/r/config.yaml"))
    assert isinstance(err, RunDirError)
    assert str(err) == "run directory /r: cannot write there: Read-only file system (/r/config.yaml)"


# -- 5. YAML 1.1's booleans and numbers where a string is expected ------------------------------------

def test_off_is_the_string_off_where_a_string_is_expected(tmp_path, capsys):
    code, err = _train(capsys, "--print-config", "--set", "train.progress=off")
    assert code == 2
    assert err == "distbp-train: error: train.progress: 'off' is not one of auto, bar, plain\n"
    p = _write(tmp_path / "c.yaml", "train:\n  progress: off\n")
    assert _message(p) == "train.progress: 'off' is not one of auto, bar, plain"
    cfg = resolve(None, ["data.name=npz", "data.x_key=off", "data.y_key=1.50", "run_dir=2024",
                         "data.path=" + str(_write(tmp_path / "d.npz", b""))])
    assert (cfg["data"]["x_key"], cfg["data"]["y_key"], cfg["run_dir"]) == ("off", "1.50", "2024")
    assert _message(overrides=("train.metrics=[yes]",)).startswith("train.metrics: 'yes' is not one of")
    # where the schema wants a boolean or a number, YAML's reading stands
    cfg = resolve(None, ["optimizer.name=sgd", "optimizer.momentum=0.9", "optimizer.nesterov=yes", "seed=7"])
    assert cfg["optimizer"]["nesterov"] is True and cfg["seed"] == 7
    assert resolve(None, ["data.name=csv", "data.label=3", "data.path=" + str(_write(tmp_path / "d.csv", "")),
                          ])["data"]["label"] == 3  # a column index stays a number


# -- 7. the fault report's trial ---------------------------------------------------------------------

def test_the_fault_report_trial(tmp_path):
    fig = yaml_bomb(tmp_path, 0)
    assert fig["exit_code"] == 2 and fig["names_rank"] is True and fig["leftover_processes"] == 0
    assert fig["message_bytes"] < MESSAGE_BOUND and not fig["traceback"] and not fig["run_dir_written"]
    assert {"seconds_to_exit", "checkpoint_loads", "bitwise_resume"} <= set(fig)


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path
