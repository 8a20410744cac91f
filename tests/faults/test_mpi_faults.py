"""MPI faults: a few trials of each fault (more: python -m tests.faults.report), and the same
faults injected at a chosen rank and step: SIGSTOP (a hung node), a NaN in the gradient, the
coordinator's long evaluation (which must not read as silence)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distbp.train import read_checkpoint

from .mpi_faults import (BASE, EXIT_WITHIN_S, MPICH_STACK, MPIEXEC, N, STOP_TIMEOUT_S, _proxies, _is_zombie,
                         kill_leftovers, kill_random_rank, processes_of, signal_job, stop_random_rank)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("mpi-faults")  # references shared by the trials


@pytest.mark.parametrize("seed", [0, 1])
def test_a_killed_rank_ends_the_job_and_the_checkpoint_resumes_bitwise(seed, tmp_root):
    f = kill_random_rank(tmp_root, seed)
    assert f["exited_nonzero"] and f["seconds_to_exit"] <= EXIT_WITHIN_S, f
    assert f["leftover_processes"] == 0, f
    # distbp's supervisor names the killed rank (mpiexec's own PID is sometimes a survivor's).
    assert f["names_rank"], f
    assert not f["mpich_stack"], f
    assert f["checkpoint_loads"] and f["checkpoint_step"] <= f["killed_after_step"] + 1, f
    assert f["resumed"] and f["bitwise_resume"], f


@pytest.mark.parametrize("seed", [0, 2])  # rank 1, rank 0
def test_a_killed_supervisor_is_named_by_its_child_and_the_job_ends(seed, tmp_root):
    f = kill_random_rank(tmp_root, seed, target="supervisor")
    assert f["exited_nonzero"] and f["seconds_to_exit"] <= EXIT_WITHIN_S, f
    assert f["leftover_processes"] == 0, f
    assert f["names_rank"], f
    assert not f["mpich_stack"], f
    assert f["checkpoint_loads"] and f["resumed"] and f["bitwise_resume"], f


@pytest.mark.parametrize("seed", [0, 2])  # rank 1 at step 18, rank 0 (the coordinator) at step 7
def test_a_stopped_rank_is_named_within_twice_the_timeout(seed, tmp_root):
    f = stop_random_rank(tmp_root, seed)
    assert f["exited_nonzero"] and f["within_2x_timeout"], f
    assert f["names_rank"], f
    assert f["leftover_processes"] == 0, f  # the stopped process too: mpiexec SIGKILLs it
    assert not f["mpich_stack"], f
    assert f["checkpoint_loads"] and f["resumed"] and f["bitwise_resume"], f
    if f["stopped_rank"] != 0:
        assert f["last_step_checkpointed"], f


@pytest.mark.parametrize("target", ["mpiexec", "rank0"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_checkpoints_the_last_step_exits_and_resumes_bitwise(signum, target, tmp_root):
    f = signal_job(tmp_root, 2, signum, target)
    assert f["exit_code"] is not None and f["seconds_to_exit"] <= EXIT_WITHIN_S, f
    assert f["exit_code"] in (128 + signal.SIGTERM, 128 + signum), f
    assert f["leftover_processes"] == 0, f
    assert f["checkpoint_loads"] and f["checkpoint_within_one_step"], f
    assert f["checkpoint_step"] >= f["signalled_after_step"], f
    assert f["resumed"] and f["bitwise_resume"], f


# ---- faults injected at a chosen rank and step ----------------------------------------------

HOOKS = """
import os, signal, sys, time
from pathlib import Path
import numpy as np
from distbp.train import trainer as T
from distbp.nn import flat as F

def _spec(name):
    value = os.environ.get(name)
    return value.split(":") if value else None

STOP, NAN, SLOW_EVAL = _spec("TEST_STOP"), _spec("TEST_NAN"), os.environ.get("TEST_SLOW_EVAL")
now = [None]  # (rank, 1-based step) in progress
step_of = T.Trainer._train_step

def train_step(self, step, run):
    now[0] = (self.comm.rank, step + 1)
    if STOP and now[0] == (int(STOP[0]), int(STOP[1])):
        # As if the node hung: first the time and pid for the test, then nothing more.
        Path(STOP[2]).write_text(f"{time.time()!r} {os.getpid()}")
        os.kill(os.getpid(), signal.SIGSTOP)
    if NAN and NAN[2] == "loss" and now[0] == (int(NAN[0]), int(NAN[1])):
        loss_fn = run.loss_fn
        run.loss_fn = lambda *a: loss_fn(*a) * float("nan")
        try:
            return step_of(self, step, run)
        finally:
            run.loss_fn = loss_fn
    return step_of(self, step, run)

flat_grad = F.FlatParameters.flat_grad

def poisoned(self):
    grad = flat_grad(self)
    if NAN and NAN[2] != "loss" and now[0] == (int(NAN[0]), int(NAN[1])):
        grad[int(NAN[2])] = np.nan
    return grad

evaluate = T.Trainer._evaluate

def slow_evaluate(self, run):
    time.sleep(float(SLOW_EVAL))
    return evaluate(self, run)

T.Trainer._train_step = train_step
F.FlatParameters.flat_grad = poisoned
if SLOW_EVAL:
    T.Trainer._evaluate = slow_evaluate
from distbp.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def _hooked(run_dir: Path, env: dict[str, str], *sets: str,
            timeout: float = 90) -> tuple[subprocess.CompletedProcess, float, int]:
    """distbp-train with HOOKS under mpiexec -n 3: (result, time it ended, processes left:
    of the run directory, and mpiexec's proxies)."""
    cmd = [str(MPIEXEC), "-n", str(N), sys.executable, "-c", HOOKS, "--run-dir", str(run_dir),
           *[a for o in BASE + ["train.max_steps=40", *sets] for a in ("--set", o)], "--resume", "never"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", **env)) as p:
        try:
            deadline, proxies = time.monotonic() + 30, []
            while not proxies and time.monotonic() < deadline and p.poll() is None:
                time.sleep(0.05)
                proxies = _proxies(p.pid)
            out, err = p.communicate(timeout=timeout)
        except BaseException:
            os.killpg(p.pid, signal.SIGKILL)
            raise
        ended = time.time()
    deadline = time.monotonic() + 3  # processes SIGKILLed as mpiexec ends take a moment to go
    while time.monotonic() < deadline and (any(not _is_zombie(pid) for pid in proxies) or processes_of(run_dir)):
        time.sleep(0.05)
    left = sum(not _is_zombie(pid) for pid in proxies) + kill_leftovers(run_dir)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err), ended, left


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err and not MPICH_STACK.search(err), err
    return lines[0]


@pytest.mark.parametrize("rank", [1, 0])
def test_a_rank_stopped_at_a_step_is_named_and_the_last_finished_step_kept(rank, tmp_path):
    mark = tmp_path / "stopped"
    res, ended, left = _hooked(tmp_path / "run", {"TEST_STOP": f"{rank}:9:{mark}"},
                               f"comm.timeout_s={STOP_TIMEOUT_S:g}")
    stopped_at, pid = mark.read_text().split()
    took = ended - float(stopped_at)
    assert res.returncode != 0 and took <= 2 * STOP_TIMEOUT_S, (took, res.stderr)
    assert left == 0, res.stderr  # the stopped process too: MPI_Abort makes mpiexec SIGKILL it
    line = _one_error_line(res.stderr)
    named = re.search(rf"rank {rank} \(pid (\d+) on \S+\) silent for 3 s \(comm.timeout_s\) during step 9", line)
    assert named and named.group(1) == pid, line
    ckpts = tmp_path / "run" / "checkpoints"
    if rank == 0:
        # The coordinator writes checkpoints; stopped, it writes none: the message says so.
        assert line.startswith("distbp-train[rank 1]: error: ") and "none was written now" in line, line
        assert not (ckpts / "step-00000008.npz").exists()
        assert read_checkpoint(ckpts / "step-00000005.npz").step == 5
    else:
        assert line.startswith("distbp-train[rank 0]: error: "), line
        assert f"checkpoint of step 8 written: {ckpts / 'step-00000008.npz'}" in res.stdout
        assert read_checkpoint(ckpts / "step-00000008.npz").step == 8


def test_the_coordinators_long_evaluation_is_not_silence(tmp_path):
    # Each evaluation takes more than twice comm.timeout_s while the other ranks wait for rank 0
    # in the next step's exchange: rank 0 answers for itself meanwhile, so the run finishes.
    res, _, left = _hooked(tmp_path / "run", {"TEST_SLOW_EVAL": "7"}, "comm.timeout_s=3", "train.eval_every=15",
                           "train.max_steps=20")
    assert res.returncode == 0, res.stderr
    assert "done: 20 steps" in res.stdout and left == 0


@pytest.mark.parametrize("overlap", [False, True])
def test_a_nan_on_one_rank_is_named_and_the_last_good_step_kept(overlap, tmp_path):
    # Element 300 of the [8, 32, 3] MLP's flat buffer lies in its second Linear's weight, 3.weight
    # (ReLU and Dropout are 1 and 2; 0.weight and 0.bias hold the first 256 + 32).
    # With overlap the buckets are reduced during backward: the NaN comes from the loss there.
    poison, what = ("loss", "non-finite loss (nan)") if overlap else ("300", "non-finite gradient")
    sets = ["comm.overlap=true", "comm.bucket_mb=0.0001"] if overlap else []
    res, _, left = _hooked(tmp_path / "run", {"TEST_NAN": f"1:7:{poison}"}, *sets)
    assert res.returncode == 1 and left == 0, res.stderr
    line = _one_error_line(res.stderr)
    where = "" if overlap else " in parameter 3.weight"
    assert re.fullmatch(rf"distbp-train\[rank 0\]: error: rank 1 \(pid \d+ on \S+\): {re.escape(what)} at step 7"
                        rf"{where}; lower optimizer.lr or check the data", line), line
    assert "Abort(" not in res.stderr  # every rank raised it together: no MPI_Abort needed
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000006.npz"
    assert f"checkpoint of step 6 written: {ckpt}" in res.stdout
    # The parameters before step 7's update: those of an uninterrupted run's step 6.
    clean, _, _ = _hooked(tmp_path / "clean", {}, *sets, "train.max_steps=6")
    assert clean.returncode == 0, clean.stderr
    assert np.array_equal(read_checkpoint(ckpt).arrays["params"],
                          read_checkpoint(tmp_path / "clean" / "checkpoints" / "step-00000006.npz").arrays["params"])
