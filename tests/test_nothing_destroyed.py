"""Invariant 5, "Nothing lost", against a hostile run directory: a checkpoint that fails
verification is moved to checkpoints/damaged/ (never overwritten, never pruned); when none
verifies, --resume auto stops (exit 1) instead of starting over; a file's name must agree
with the step it holds; a crashed write's temporary file is cleared; what is not an .npz is
called so; and one job at a time holds the run directory (RUN/.lock). Damage is done by
writing bytes; nothing sleeps."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distbp import cli
from distbp.comm import LocalCommunicator
from distbp.train import CheckpointError, Trainer, list_checkpoints, read_checkpoint, resolve
from distbp.train import checkpoint as ck
from distbp.train.checkpoint import (DAMAGED, LOCK, RunDirLocked, latest_valid, lock_run_dir, move_damaged,
                                     newest_to_resume, remove_stale_temporaries, write_checkpoint)

REPO = Path(__file__).resolve().parents[1]
# 270 training samples in global batches of 27: 10 steps an epoch; a checkpoint every 5 steps.
SMALL = ["data.name=synthetic", "data.samples=300", "data.features=6", "data.classes=3", "model.sizes=[6, 8, 3]",
         "train.global_batch=27", "train.epochs=10", "train.max_steps=20", "train.log_every=5",
         "train.eval_every=10", "checkpoint.every=5", "checkpoint.keep=10", "comm.threads=1"]


def _run(run_dir: Path, *overrides: str, resume: str = "auto", comm=None):
    stream = io.StringIO()
    result = Trainer(resolve(None, SMALL + list(overrides)), run_dir=run_dir, resume=resume, comm=comm,
                     stream=stream).run()
    return result, stream.getvalue()


def _params(path: Path) -> np.ndarray:
    return read_checkpoint(path).arrays["params"]


def _flip(path: Path) -> bytes:
    """Flip one byte in the middle (a valid zip still, mostly; the CRC or checksum fails)."""
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    return bytes(blob)


def _arrays(step: int) -> dict[str, np.ndarray]:
    return {"params": np.random.default_rng(step).standard_normal(50).astype(np.float32)}


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.train_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _dead_pid() -> int:
    # No process has a pid at or above pid_max: dead for certain, with no race on pid reuse.
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def _write_lock(run_dir: Path, host: str, pid: int) -> bytes:
    run_dir.mkdir(parents=True, exist_ok=True)
    blob = (json.dumps({"host": host, "pid": pid, "since": "2024-01-01T00:00:00+0000"}) + "\n").encode()
    (run_dir / LOCK).write_bytes(blob)
    return blob


# -- 1. a checkpoint that fails verification goes to damaged/, never overwritten or pruned --------

def test_a_damaged_newest_checkpoint_is_moved_not_overwritten_and_the_log_says_where(tmp_path):
    _run(tmp_path / "full")
    d = tmp_path / "run"
    _run(d, "train.max_steps=15")
    newest = d / "checkpoints" / "step-00000015.npz"
    damaged = _flip(newest)
    result, out = _run(d)
    kept = d / "checkpoints" / DAMAGED / "step-00000015.npz"
    assert f"warning: skipping damaged checkpoint: {newest}: " in out and f"; moved to {kept}" in out
    assert f"; moved to {kept}" in (d / "train.log").read_text()
    assert "at step 10" in out and result.step == 20
    assert kept.read_bytes() == damaged  # byte for byte as found
    assert read_checkpoint(newest).step == 15  # the run wrote a good one where the damaged one was
    assert np.array_equal(_params(d / "checkpoints" / "step-00000020.npz"),
                          _params(tmp_path / "full" / "checkpoints" / "step-00000020.npz"))


def test_a_name_already_in_damaged_gets_a_suffix_and_nothing_there_is_overwritten(tmp_path):
    d = tmp_path / "checkpoints"
    blobs = []
    for i in range(3):
        p = d / "step-00000005.npz"
        blobs.append(f"damage {i}".encode())
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(blobs[-1])
        move_damaged(p)
    names = sorted(p.name for p in (d / DAMAGED).iterdir())
    assert names == ["step-00000005.1.npz", "step-00000005.2.npz", "step-00000005.npz"]
    assert [(d / DAMAGED / n).read_bytes() for n in ("step-00000005.npz", "step-00000005.1.npz",
                                                     "step-00000005.2.npz")] == blobs
    assert list_checkpoints(d / DAMAGED)[0].name == "step-00000005.npz"  # a suffixed name is no checkpoint name


def test_pruning_deletes_only_checkpoints_that_verify(tmp_path):
    d = tmp_path / "checkpoints"
    said = []
    write_checkpoint(d, 5, _arrays(5), {}, keep=2, log=said.append)
    write_checkpoint(d, 10, _arrays(10), {}, keep=2, log=said.append)
    damaged = _flip(d / "step-00000005.npz")
    write_checkpoint(d, 15, _arrays(15), {}, keep=2, log=said.append)  # 5 is due for pruning, and damaged
    assert (d / DAMAGED / "step-00000005.npz").read_bytes() == damaged
    assert len(said) == 1 and said[0].startswith(f"warning: moved damaged checkpoint {d / 'step-00000005.npz'} "
                                                 f"to {d / DAMAGED / 'step-00000005.npz'} instead of pruning it: ")
    write_checkpoint(d, 20, _arrays(20), {}, keep=2, log=said.append)  # 10 verifies: pruned
    assert [p.name for p in list_checkpoints(d)] == ["step-00000015.npz", "step-00000020.npz"]
    assert len(said) == 1


def test_a_damaged_file_is_never_written_over(tmp_path):
    d = tmp_path / "checkpoints"
    said = []
    best = write_checkpoint(d, 5, _arrays(5), {}, keep=2, name="best.npz")
    damaged = _flip(best)
    write_checkpoint(d, 10, _arrays(10), {}, keep=2, name="best.npz", log=said.append)
    assert (d / DAMAGED / "best.npz").read_bytes() == damaged and read_checkpoint(best).step == 10
    assert said[0].startswith(f"warning: moved damaged checkpoint {best} to {d / DAMAGED / 'best.npz'} before")
    # Where it cannot be moved, nothing is written over it.
    again = _flip(best)
    shutil.rmtree(d / DAMAGED)
    (d / DAMAGED).write_text("a file where the folder should be")
    with pytest.raises(CheckpointError, match=rf"^{best}: damaged, and could not be moved to {d / DAMAGED}: "):
        write_checkpoint(d, 15, _arrays(15), {}, keep=2, name="best.npz")
    assert best.read_bytes() == again
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


# -- 2. none verifies: --resume auto stops with exit 1; nothing deleted ---------------------------

def test_when_no_checkpoint_verifies_auto_resume_stops_with_exit_1_and_keeps_them_all(tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli(capsys, "--run-dir", str(run), *_sets(SMALL))[0] == 0
    ckpts = list_checkpoints(run / "checkpoints")
    assert len(ckpts) == 4
    blobs = {ckpts[0].name: b"", ckpts[1].name: b"\x00"}  # empty, one byte
    ckpts[0].write_bytes(b"")
    ckpts[1].write_bytes(b"\x00")
    blobs[ckpts[2].name] = _flip(ckpts[2])
    ckpts[3].write_bytes(ckpts[3].read_bytes()[:-40])  # truncated
    blobs[ckpts[3].name] = ckpts[3].read_bytes()
    metrics = (run / "metrics.jsonl").read_bytes()

    code, out, err = _cli(capsys, "--run-dir", str(run), *_sets(SMALL))
    assert code == 1 and "Traceback" not in err, err
    assert err.startswith("distbp-train: error: ") and err.count("distbp-train: error") == 1, err
    damaged = run / "checkpoints" / DAMAGED
    assert "none of its 4 checkpoint(s) verifies" in err and "--resume never" in err
    for name, blob in blobs.items():
        assert f"; moved to {damaged / name}" in err
        assert (damaged / name).read_bytes() == blob  # all kept, as they were
    assert list_checkpoints(run / "checkpoints") == []
    assert (run / "metrics.jsonl").read_bytes() == metrics  # nothing of the earlier run touched
    assert not (run / LOCK).exists()

    # What the message says works: --resume never starts over; the damaged files stay.
    code, out, err = _cli(capsys, "--run-dir", str(run), "--resume", "never", *_sets(SMALL))
    assert code == 0, err
    assert {p.name: p.read_bytes() for p in damaged.iterdir()} == blobs
    assert len(list_checkpoints(run / "checkpoints")) == 4


def test_resume_never_refuses_checkpoints_still_in_place_damaged_or_not(tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli(capsys, "--run-dir", str(run), *_sets(SMALL))[0] == 0
    for p in list_checkpoints(run / "checkpoints"):
        p.write_bytes(b"junk")
    code, _, err = _cli(capsys, "--run-dir", str(run), "--resume", "never", *_sets(SMALL))
    assert code == 1
    assert "already holds 4 checkpoint(s) of an earlier run (step-00000005.npz, " in err
    assert f"--resume auto (which moves any that are damaged to {run / 'checkpoints' / DAMAGED}" in err
    assert [p.read_bytes() for p in list_checkpoints(run / "checkpoints")] == [b"junk"] * 4


def test_newest_to_resume_in_an_empty_directory_is_a_fresh_start(tmp_path):
    assert newest_to_resume(tmp_path / "none") == (None, [])
    (tmp_path / "c").mkdir()
    assert newest_to_resume(tmp_path / "c") == (None, [])


# -- 3. a file's name must agree with the step it holds ------------------------------------------

def test_a_name_that_disagrees_with_the_meta_step_is_damaged(tmp_path):
    d = tmp_path / "run"
    _run(d, "train.max_steps=10")
    ckdir = d / "checkpoints"
    renamed = ckdir / "step-00000040.npz"
    shutil.copyfile(ckdir / "step-00000005.npz", renamed)  # verifies, but is not step 40
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(renamed)
    assert str(info.value) == (f"{renamed}: its name says step 40 but it holds step 5; renamed or copied "
                               "from another checkpoint")
    c, warnings = latest_valid(ckdir)
    assert c.step == 10 and len(warnings) == 1
    result, out = _run(d)
    assert f"skipping damaged checkpoint: {renamed}: its name says step 40" in out
    assert "resumed from" in out and "at step 10" in out and result.step == 20
    assert (ckdir / DAMAGED / "step-00000040.npz").exists()
    # A name outside the step-numbered series (a copy, best.npz) is not held to a step.
    shutil.copyfile(ckdir / "step-00000010.npz", tmp_path / "mine.npz")
    assert read_checkpoint(tmp_path / "mine.npz").step == 10


# -- 4. stale temporary files are removed at start -----------------------------------------------

def test_a_crashed_writes_temporary_files_are_removed_at_start_with_a_log_line(tmp_path):
    d = tmp_path / "run"
    _run(d, "train.max_steps=10")
    ckdir = d / "checkpoints"
    stale = [ckdir / ".step-00000015.npz.k2j3h4l5.tmp", ckdir / ".best.npz.a_b1c2d3.tmp"]
    for p in stale:
        p.write_bytes(b"PK\x03\x04 cut short")
    others = [ckdir / "notes.tmp", ckdir / ".step-00000015.npz.tmp", d / ".step-00000015.npz.k2j3h4l5.tmp"]
    for p in others:
        p.write_bytes(b"mine")
    result, out = _run(d)
    for p in stale:
        assert not p.exists()
        assert f"removed the stale temporary file {p} (" in out
    assert all(p.read_bytes() == b"mine" for p in others)  # not the atomic write's names, or elsewhere
    assert result.step == 20
    assert remove_stale_temporaries(ckdir) == [] and remove_stale_temporaries(tmp_path / "none") == []


# -- 5. what is not an .npz is called so --------------------------------------------------------

@pytest.mark.parametrize("kind", ["one byte", "empty", "text", "symlink to /etc/passwd", "npy"])
def test_what_is_not_an_npz_file_is_reported_as_such(tmp_path, kind):
    path = tmp_path / "step-00000005.npz"
    if kind == "one byte":
        path.write_bytes(b"\x80")  # a pickle's first byte: np.load took it for a pickle
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("step: 5\nparams: [1, 2, 3]\n")
    elif kind == "npy":
        np.save(tmp_path / "a.npy", np.ones(3))
        (tmp_path / "a.npy").rename(path)
    else:
        if not Path("/etc/passwd").is_file():
            pytest.skip("no /etc/passwd")
        path.symlink_to("/etc/passwd")
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: not an .npz file (") and "pickled" not in msg, msg
    if kind == "symlink to /etc/passwd":
        assert "a symbolic link to /etc/passwd" in msg
        # moved as a link: the target is untouched
        before = Path("/etc/passwd").read_bytes()
        moved = move_damaged(path)
        assert moved.is_symlink() and os.readlink(moved) == "/etc/passwd"
        assert Path("/etc/passwd").read_bytes() == before


def test_a_real_zip_holding_a_pickle_is_still_called_a_pickle(tmp_path):
    path = tmp_path / "step-00000005.npz"
    meta = json.dumps({"step": 5, "format": ck.FORMAT, "checksum": "0" * 64})
    np.savez(path, params=np.array([{"evil": 1}], dtype=object), meta=np.array(meta))
    with pytest.raises(CheckpointError, match="holds a pickled object; distbp never unpickles"):
        read_checkpoint(path)


# -- 6. one job per run directory ------------------------------------------------------------------

def test_a_live_holder_refuses_a_second_job_in_another_process(tmp_path):
    run = tmp_path / "run"
    host = socket.gethostname()
    lock = _write_lock(run, host, os.getpid())  # this test process: alive for certain
    res = subprocess.run([sys.executable, "-m", "distbp.cli", "--run-dir", str(run), *_sets(SMALL)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("distbp-train: error") == 1, res.stderr
    assert f"is in use by another job (pid {os.getpid()} on host {host}, since 2024-01-01" in res.stderr
    assert "use another --run-dir" in res.stderr
    assert (run / LOCK).read_bytes() == lock  # not taken, not removed
    assert sorted(p.name for p in run.iterdir()) == [LOCK]  # nothing written: no metrics, log or checkpoint


def test_a_lock_held_by_a_live_job_with_flock_is_refused(tmp_path):
    lock, warnings = lock_run_dir(tmp_path / "run")
    assert warnings == [] and lock.held
    held = json.loads((tmp_path / "run" / LOCK).read_text())
    assert held["host"] == socket.gethostname() and held["pid"] == os.getpid()
    with pytest.raises(RunDirLocked, match=rf"is in use by another job \(pid {os.getpid()} on host "):
        lock_run_dir(tmp_path / "run")
    assert RunDirLocked.exit_code == 1
    lock.release()
    assert not (tmp_path / "run" / LOCK).exists() and not lock.held
    lock_run_dir(tmp_path / "run")[0].release()


def test_a_stale_lock_on_this_host_is_taken_over_with_a_warning_and_released(tmp_path):
    run = tmp_path / "run"
    pid = _dead_pid()
    _write_lock(run, socket.gethostname(), pid)
    result, out = _run(run, "train.max_steps=5")
    assert result.step == 5
    assert f"warning: took over the stale lock {run / LOCK} of pid {pid} on host {socket.gethostname()}" in out
    assert not (run / LOCK).exists()  # released at exit


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path):
    run = tmp_path / "run"
    lock = _write_lock(run, "elsewhere.example", _dead_pid())
    with pytest.raises(RunDirLocked) as info:
        _run(run, "train.max_steps=5")
    msg = str(info.value)
    assert f"{run} is locked by pid {_dead_pid()} on host elsewhere.example" in msg
    assert "cannot tell whether that job still runs" in msg and f"remove {run / LOCK}" in msg
    assert (run / LOCK).read_bytes() == lock and sorted(p.name for p in run.iterdir()) == [LOCK]


@pytest.mark.parametrize("content", [b"", b"not json", b'{"host": "h"}'])
def test_a_lock_that_names_no_holder_is_refused(tmp_path, content):
    (tmp_path / LOCK).write_bytes(content)
    with pytest.raises(RunDirLocked, match=rf"{tmp_path / LOCK} exists but does not say which job holds"):
        lock_run_dir(tmp_path)
    assert (tmp_path / LOCK).read_bytes() == content


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    run = tmp_path / "run"
    _run(run, "train.max_steps=5")
    assert not (run / LOCK).exists()
    (run / "checkpoints" / "step-00000005.npz").write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        _run(run)
    assert not (run / LOCK).exists()


class _Replica(LocalCommunicator):
    """An MPI rank other than 0, as the Trainer sees it: not the coordinator."""

    @property
    def is_coordinator(self) -> bool:
        return False


def test_only_the_coordinator_takes_the_lock(tmp_path):
    run = tmp_path / "run"
    lock = _write_lock(run, socket.gethostname(), os.getpid())
    result, _ = _run(run, "train.max_steps=5", comm=_Replica())  # would be refused as rank 0
    assert result.step == 5
    assert (run / LOCK).read_bytes() == lock


# -- the fault-report trials (tests/faults/rundir_faults.py) ----------------------------------------

@pytest.mark.slow
def test_fault_trial_all_checkpoints_damaged(tmp_path):
    from faults.rundir_faults import all_damaged

    f = all_damaged(tmp_path, 0)
    assert f["exit_code"] == 1 and f["names_lost"] and f["checkpoint_loads"], f
    assert f["start_over_works"] and f["leftover_processes"] == 0, f


@pytest.mark.slow
def test_fault_trial_two_jobs(tmp_path):
    from faults.rundir_faults import two_jobs

    f = two_jobs(tmp_path, 0)
    assert f["exit_code"] == 1 and f["first_exit_code"] == 0 and f["names_lost"], f
    assert f["metrics_not_interleaved"] and f["bitwise_resume"] and f["leftover_processes"] == 0, f


def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path):
    # A restarted container reuses pids: the lock's pid runs, but it is not the process that
    # took the lock (its start time differs), so the lock is stale.
    from distbp.train.checkpoint import _started

    run = tmp_path / "run"
    run.mkdir()
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": "2024-01-01T00:00:00+0000",
          "started": _started(os.getpid()) - 1}
    (run / LOCK).write_text(json.dumps(me) + "\n")
    res = subprocess.run([sys.executable, "-m", "distbp.cli", "--run-dir", str(run), *_sets(SMALL)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert f"took over the stale lock {run / LOCK} of pid {os.getpid()}" in res.stdout + res.stderr
    me["started"] += 1  # the very process that took it: still held
    (run / LOCK).write_text(json.dumps(me) + "\n")
    res = subprocess.run([sys.executable, "-m", "distbp.cli", "--run-dir", str(run), *_sets(SMALL)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 1 and "is in use by another job" in res.stderr, res.stderr
