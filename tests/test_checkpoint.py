"""Checkpoints (docs/ARCHITECTURE.md, invariant 5): atomic writes with a checksum, the last K kept, damage
detected and named, never unpickled; latest_valid skips a damaged newest one."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from distbp.train import checkpoint as ck
from distbp.train.checkpoint import (CheckpointError, checkpoint_name, latest_valid, list_checkpoints,
                                     read_checkpoint, write_checkpoint)


def _arrays(step: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {
        "params": rng.standard_normal(257).astype(np.float32),
        "optim.exp_avg": rng.standard_normal(257).astype(np.float32),
        "optim.step_count": np.array([step], dtype=np.int64),
        "preprocess.kind": np.array("standardize"),
        "vocab": np.array(["<unk>", "<s>", "word"], dtype=str),
    }


def _write(tmp_path, step, keep=100):
    return write_checkpoint(tmp_path / "checkpoints", step, _arrays(step), {"epoch": 1, "note": "x"}, keep)


def test_name():
    assert checkpoint_name(200) == "step-00000200.npz"
    assert checkpoint_name(123456789) == "step-123456789.npz"


def test_round_trip(tmp_path):
    arrays = _arrays(3)
    path = write_checkpoint(tmp_path, 200, arrays, {"epoch": 4, "position": 7, "config": {"a": [1, 2]}}, 3)
    assert path == tmp_path / "step-00000200.npz"
    c = read_checkpoint(path)
    assert c.path == path and c.step == 200
    assert set(c.arrays) == set(arrays)
    for k, v in arrays.items():
        assert c.arrays[k].dtype == v.dtype and np.array_equal(c.arrays[k], v)
        assert c.arrays[k].tobytes() == v.tobytes()
    assert c.meta["epoch"] == 4 and c.meta["position"] == 7 and c.meta["config"] == {"a": [1, 2]}
    assert c.meta["format"] == ck.FORMAT and len(c.meta["checksum"]) == 64
    # loads with plain numpy, never unpickling; meta is a JSON string
    with np.load(path, allow_pickle=False) as f:
        assert set(f.files) == set(arrays) | {"meta"}
        assert json.loads(str(f["meta"]))["step"] == 200
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_keep_prunes_to_the_newest(tmp_path):
    d = tmp_path / "checkpoints"
    for step in (5, 10, 15, 20, 100):
        write_checkpoint(d, step, _arrays(step), {}, keep=3)
    assert [p.name for p in list_checkpoints(d)] == ["step-00000015.npz", "step-00000020.npz", "step-00000100.npz"]
    write_checkpoint(d, 101, _arrays(1), {}, keep=1)
    assert [p.name for p in list_checkpoints(d)] == ["step-00000101.npz"]


def test_list_checkpoints_orders_numerically_and_ignores_others(tmp_path):
    d = tmp_path
    for name in ("step-00000100.npz", "step-00000020.npz", "step-100000000.npz", "notes.txt",
                 ".step-00000300.npz.abc.tmp", "step-7.npz"):
        (d / name).write_bytes(b"")
    assert [p.name for p in list_checkpoints(d)] == ["step-00000020.npz", "step-00000100.npz", "step-100000000.npz"]
    assert list_checkpoints(d / "missing") == []


def test_failed_write_leaves_previous_checkpoints_and_no_temp_file(tmp_path, monkeypatch):
    d = tmp_path / "checkpoints"
    for step in (10, 20):
        write_checkpoint(d, step, _arrays(step), {}, keep=2)
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck.np, "savez", boom)
    with pytest.raises(CheckpointError, match=rf"^{d / 'step-00000030.npz'}: could not write the checkpoint: "
                                              r"disk full; the checkpoints already in .* are unchanged"):
        write_checkpoint(d, 30, _arrays(30), {}, keep=2)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # nothing pruned, nothing new

    def half_then_boom(f, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.np, "savez", half_then_boom)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(d, 30, _arrays(30), {}, keep=2)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_failed_rename_leaves_no_temp_file(tmp_path, monkeypatch):
    d = tmp_path / "checkpoints"
    write_checkpoint(d, 10, _arrays(10), {}, keep=2)

    def boom(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(CheckpointError, match="could not write the checkpoint: rename failed"):
        write_checkpoint(d, 20, _arrays(20), {}, keep=2)
    assert [p.name for p in d.iterdir()] == ["step-00000010.npz"]


# -- damage ---------------------------------------------------------------------------------------

def _read_error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    return msg


def test_missing_file(tmp_path):
    assert _read_error(tmp_path / "nope.npz").endswith("no such checkpoint file")


@pytest.mark.parametrize("keep", [0, 10, 100, 0.5, 0.9])
def test_truncated(tmp_path, keep):
    path = _write(tmp_path, 5)
    blob = path.read_bytes()
    n = int(keep * len(blob)) if isinstance(keep, float) else keep
    path.write_bytes(blob[:n])
    msg = _read_error(path)
    assert "truncated" in msg or "not a" in msg


def test_flipped_byte_in_the_middle(tmp_path):
    path = _write(tmp_path, 5)
    blob = bytearray(path.read_bytes())
    # a byte inside the params array's data
    start = bytes(blob).index(_arrays(5)["params"].tobytes()[:16])
    blob[start + 500] ^= 0x01
    path.write_bytes(bytes(blob))
    msg = _read_error(path)
    assert "CRC" in msg or "checksum" in msg


def test_altered_array_with_valid_zip_fails_the_checksum(tmp_path):
    path = _write(tmp_path, 5)
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["params"] = arrays["params"].copy()
    arrays["params"][3] += 1
    np.savez(path, **arrays)  # a well-formed zip, but not what was checksummed
    assert _read_error(path).endswith("checksum mismatch; the file was altered or damaged")


def test_every_single_byte_flip_is_detected_or_harmless(tmp_path):
    path = _write(tmp_path, 5)
    good = read_checkpoint(path)
    blob = path.read_bytes()
    detected = 0
    for i in range(0, len(blob), max(1, len(blob) // 600)):
        b = bytearray(blob)
        b[i] ^= 0xFF
        path.write_bytes(bytes(b))
        try:
            c = read_checkpoint(path)
        except CheckpointError as e:
            assert str(e).startswith(f"{path}: ")
            detected += 1
            continue
        # undetected flips may only touch zip bookkeeping (timestamps, ...), never the contents
        assert c.meta == good.meta and set(c.arrays) == set(good.arrays)
        assert all(np.array_equal(c.arrays[k], good.arrays[k]) for k in good.arrays)
    assert detected > 0


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "step-00000005.npz"
    meta = json.dumps({"step": 5, "format": ck.FORMAT, "checksum": "0" * 64})
    np.savez(path, params=np.array([{"evil": 1}], dtype=object), meta=np.array(meta))
    assert _read_error(path) == f"{path}: holds a pickled object; distbp never unpickles"


def test_wrong_format(tmp_path):
    path = _write(tmp_path, 5)
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    meta["format"] = 99
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    assert _read_error(path) == f"{path}: meta is not a distbp checkpoint of format {ck.FORMAT}"


def test_not_a_distbp_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, params=np.ones(3, np.float32))
    assert _read_error(path) == f"{path}: no 'meta' record; not a distbp checkpoint"
    np.savez(path, params=np.ones(3, np.float32), meta=np.array("not json {"))
    assert "unreadable meta record" in _read_error(path)
    np.savez(path, params=np.ones(3, np.float32), meta=np.array("[1, 2]"))
    assert "meta is not a distbp checkpoint" in _read_error(path)


def test_not_an_npz(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("hello\n")
    assert "not an .npz file" in _read_error(path)


def test_no_params(tmp_path):
    path = write_checkpoint(tmp_path, 1, {"optim.x": np.ones(2)}, {}, 3)
    assert _read_error(path) == f"{path}: no 'params' array"


# -- latest_valid -----------------------------------------------------------------------------------

def test_latest_valid_takes_the_newest(tmp_path):
    for step in (10, 20, 30):
        _write(tmp_path, step)
    c, warnings = latest_valid(tmp_path / "checkpoints")
    assert c.step == 30 and warnings == []


def test_latest_valid_skips_damaged_without_deleting(tmp_path):
    paths = [_write(tmp_path, step) for step in (10, 20, 30)]
    blob = paths[2].read_bytes()
    paths[2].write_bytes(blob[: len(blob) // 2])
    b = bytearray(paths[1].read_bytes())
    b[len(b) // 2] ^= 0x55
    paths[1].write_bytes(bytes(b))
    c, warnings = latest_valid(tmp_path / "checkpoints")
    assert c.step == 10
    assert np.array_equal(c.arrays["params"], _arrays(10)["params"])
    assert len(warnings) == 2
    assert warnings[0].startswith(f"skipping damaged checkpoint: {paths[2]}: ")
    assert warnings[1].startswith(f"skipping damaged checkpoint: {paths[1]}: ")
    assert all(p.exists() for p in paths)  # nothing deleted
    assert len(paths[2].read_bytes()) == len(blob) // 2


def test_latest_valid_with_nothing(tmp_path):
    assert latest_valid(tmp_path / "none") == (None, [])
    p = _write(tmp_path, 3)
    p.write_bytes(b"junk")
    c, warnings = latest_valid(tmp_path / "checkpoints")
    assert c is None and len(warnings) == 1 and os.path.exists(p)


def test_pruning_counts_back_from_the_checkpoint_just_written(tmp_path):
    # A resume that skipped a damaged newer checkpoint writes older steps next to it: the
    # damaged file stays (never deleted) and must not push out the good one just written.
    d = tmp_path / "checkpoints"
    damaged = write_checkpoint(d, 30, _arrays(30), {}, keep=1)
    damaged.write_bytes(damaged.read_bytes()[:64])
    damaged_bytes = damaged.read_bytes()
    for step in (5, 10):
        path = write_checkpoint(d, step, _arrays(step), {}, keep=1)
        assert path.exists()
    assert [p.name for p in list_checkpoints(d)] == ["step-00000010.npz", "step-00000030.npz"]
    c, warnings = latest_valid(d)
    assert c.step == 10 and len(warnings) == 1
    # reaching the damaged step writes the new one in its place, the damaged one moved to damaged/
    write_checkpoint(d, 30, _arrays(30), {}, keep=1)
    assert [p.name for p in list_checkpoints(d)] == ["step-00000030.npz"]
    assert read_checkpoint(d / "step-00000030.npz").step == 30
    assert (d / "damaged" / "step-00000030.npz").read_bytes() == damaged_bytes
