"""MPI faults: a few trials of each fault (more: python -m tests.faults.report)."""

from __future__ import annotations

import signal

import pytest

from .mpi_faults import EXIT_WITHIN_S, kill_random_rank, signal_job

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
    assert f["checkpoint_loads"] and f["checkpoint_step"] <= f["killed_after_step"] + 1, f
    assert f["resumed"] and f["bitwise_resume"], f


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
