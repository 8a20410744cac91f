"""Parameter-server faults: a dead worker, a dead server, SIGTERM/SIGINT
to the server; each ends the job in bounded time and the newest checkpoint resumes bitwise."""

from __future__ import annotations

import signal

import pytest

from .zmq_faults import kill_server, kill_worker, signal_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("zmq-faults")  # references shared by the trials


def _ended_and_resumed(f: dict) -> None:
    assert f["exited_nonzero"] and f["seconds_to_exit"] <= f["limit_s"], f
    assert f["leftover_processes"] == 0, f
    assert f["checkpoint_loads"] and f["resumed"] and f["bitwise_resume"], f


def test_a_killed_worker_is_named_and_the_job_resumes_bitwise(tmp_root):
    f = kill_worker(tmp_root, 0)
    _ended_and_resumed(f)
    assert f["names_lost"] and f["others_exit_nonzero"], f
    assert f["checkpoint_step"] == f["last_logged_step"], f  # the server saves the last finished step


def test_a_killed_server_is_named_by_every_worker_and_the_job_resumes_bitwise(tmp_root):
    f = kill_server(tmp_root, 0)
    _ended_and_resumed(f)
    assert f["names_lost"], f


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_server_checkpoints_the_last_step_and_resumes_bitwise(signum, tmp_root):
    f = signal_server(tmp_root, 1, signum)
    _ended_and_resumed(f)
    assert f["exit_is_128_plus_signum"] and f["checkpoint_within_one_step"], f
    assert f["checkpoint_step"] >= f["signalled_after_step"], f
