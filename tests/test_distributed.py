"""distbp.distributed, the API for a training loop of your own: examples/own_loop.py under
mpirun against one process, abort on error, and launchers that are not MPI refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import distbp.distributed as dist
from distbp import nn, optim
from distbp.comm import LaunchError, LocalCommunicator, check_launcher

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "own_loop.py"
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "OMPI_", "SLURM_", "MPI_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return dict(env, **extra)


# -- one process ------------------------------------------------------------------------------

def test_one_process_is_the_identity(monkeypatch):
    monkeypatch.setattr(dist, "_state", {})
    with pytest.raises(RuntimeError, match=r"call distbp.distributed.init\(\) first"):
        dist.rank()
    dist.init(LocalCommunicator())
    assert (dist.rank(), dist.size(), dist.is_initialized()) == (0, 1, True)
    model = nn.Linear(3, 2)
    opt = dist.DistributedOptimizer(optim.SGD(model.parameters(), lr=0.5))
    before = model.weight.data.copy()
    opt.zero_grad()
    (model(np.ones((4, 3), dtype=np.float32)).sum()).backward()
    grad = model.weight.grad.copy()
    opt.step()
    np.testing.assert_allclose(model.weight.data, before - 0.5 * grad, rtol=1e-6)
    assert opt.param_groups[0]["lr"] == 0.5  # the wrapped optimizer's attributes
    s = dist.DistributedSampler(10, 4, seed=1)
    assert (s.rank, s.world_size, s.steps_per_epoch) == (0, 1, 3)
    with pytest.raises(ValueError, match="op must be 'sum' or 'average'"):
        dist.DistributedOptimizer(opt.optimizer, op="mean")


# -- launchers that are not MPI ---------------------------------------------------------------

TORCHRUN = ("distbp-train: error: started by torchrun (or another launcher setting WORLD_SIZE=2, RANK=1) without "
            "MPI, so each of the 2 processes would train alone; distbp's workers run under MPI: launch "
            "`mpirun -n 2 <command>` instead (or the parameter server: launch/zmq-local 2)\n")
SLURM = ("started as one of 4 tasks of a Slurm step without MPI (no PMI in the environment), so each would train "
         "alone; run `srun --mpi=pmi2 <command>` (see launch/slurm.sbatch) or `mpirun -n 4 <command>` inside "
         "the allocation")


def test_torchrun_environment_is_refused_with_how_to_launch(tmp_path):
    env = _clean_env(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1")
    res = subprocess.run([sys.executable, "-m", "distbp.cli", "--run-dir", str(tmp_path / "run")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stderr) == (2, TORCHRUN)
    assert not (tmp_path / "run").exists()


def test_slurm_step_without_pmi_is_refused(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("PMI_", "PMIX_", "OMPI_")) or k in ("WORLD_SIZE", "RANK"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    with pytest.raises(LaunchError) as e:
        check_launcher()
    assert str(e.value) == SLURM and e.value.exit_code == 2
    monkeypatch.setenv("PMI_SIZE", "4")  # srun --mpi=pmi2: MPI is there
    monkeypatch.setenv("PMI_RANK", "0")
    check_launcher()


def test_one_torchrun_process_is_fine(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    check_launcher()


# -- under mpirun -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["--overlap"]], ids=["blocking", "overlap"])
def test_own_loop_under_mpirun_matches_one_process(tmp_path, flags):
    one, two = tmp_path / "one.npy", tmp_path / "two.npy"
    res = subprocess.run([sys.executable, str(EXAMPLE), "--out", str(one)], capture_output=True, text=True,
                         timeout=60, env=_clean_env())
    assert res.returncode == 0, res.stderr
    res = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, str(EXAMPLE), "--out", str(two), *flags],
                         capture_output=True, text=True, timeout=120, env=_clean_env())
    assert res.returncode == 0, res.stderr
    assert "done: 50 steps on 2 rank(s)" in res.stdout
    a, b = np.load(one), np.load(two)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
    assert not np.array_equal(a, np.zeros_like(a))


FAILING_RANK = """
import numpy as np
import distbp.distributed as dist
dist.init()
buf = np.ones(4, dtype=np.float32)
dist.allreduce_(buf)                   # one collective, as in a training loop
if dist.rank() == 1:
    raise ValueError("bad batch on this rank")
dist.allreduce_(buf)                   # rank 0 waits here for rank 1, which has failed
print("rank 0 must not get past its collective")
"""


@pytest.mark.slow
def test_an_exception_on_rank_1_ends_every_rank_within_5_s():
    t0 = time.monotonic()
    res = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-c", FAILING_RANK], capture_output=True,
                         text=True, timeout=60, env=_clean_env())
    elapsed = time.monotonic() - t0
    assert res.returncode != 0 and elapsed < 5 + 2, (elapsed, res.stderr)  # 2 s: two interpreters starting
    assert "must not get past" not in res.stdout
    lines = res.stderr.splitlines()
    named = [line for line in lines if line.startswith("distbp: rank 1 (pid ")]
    assert len(named) == 1, res.stderr
    assert named[0].endswith(" raised ValueError: bad batch on this rank; ending all 2 ranks")
    assert "[rank 1] Traceback (most recent call last):" in lines
    assert "[rank 1] ValueError: bad batch on this rank" in lines


STOPPED_RANK = """
import os, signal
import numpy as np
import distbp.distributed as dist
dist.init(timeout_s=2)
x = np.ones(1000, dtype=np.float32)
for step in range(100):
    if dist.rank() == 1 and step == 5:
        print("stopping", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)  # a hung node: alive, silent
    dist.allreduce_(x, op="average")
print("must not get past", flush=True)
"""


@pytest.mark.slow
def test_init_timeout_names_a_stopped_rank_and_ends_the_job():
    t0 = time.monotonic()
    res = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-c", STOPPED_RANK], capture_output=True,
                         text=True, timeout=60, env=_clean_env())
    elapsed = time.monotonic() - t0
    assert res.returncode != 0 and elapsed < 2 + 2 + 3, (elapsed, res.stderr)  # timeout, grace, two starts
    assert "stopping" in res.stdout and "must not get past" not in res.stdout
    assert re.search(r"rank 1 \(pid \d+ on \S+\) silent for 2 s \(distbp.distributed.init's timeout_s\) in all-reduce number 6", res.stderr), res.stderr


def test_init_refuses_a_timeout_that_is_not_positive():
    with pytest.raises(ValueError, match="timeout_s must be a positive number of seconds, got 0"):
        dist.init(timeout_s=0)


COLLECTIVE_ERROR = """
import distbp.distributed as dist
from distbp.train import ConfigError
dist.init()
raise ConfigError("model.sizes: the same mistake on every rank")
"""


@pytest.mark.slow
def test_an_error_every_rank_raises_is_reported_once():
    res = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-c", COLLECTIVE_ERROR], capture_output=True,
                         text=True, timeout=60, env=_clean_env())
    assert res.returncode != 0
    assert res.stderr.count("ConfigError: model.sizes: the same mistake on every rank") == 1, res.stderr
    assert "MPI_Abort" not in res.stderr
