"""Parameter-server faults: a dead worker, a dead server, SIGTERM/SIGINT to the server, a
stopped or killed server under launch/zmq-local, a rogue worker holding another worker's key,
a worker reporting NaN; each ends the job in bounded time (or, for the rogue, changes
nothing), and the newest checkpoint resumes bitwise. Faults are injected at a chosen step
(a test hook in the worker, or a signal once the server has logged that step), never by
sleeping."""

from __future__ import annotations

import signal

import pytest

from .zmq_faults import (kill_server, kill_server_launched, kill_worker, nan_worker, rogue_worker, signal_server,
                         sigstop_server_launched)

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


def test_zmq_local_kills_a_stopped_server_within_its_deadline_and_names_it(tmp_root):
    f = sigstop_server_launched(tmp_root, 0)
    _ended_and_resumed(f)
    assert f["exit_code"] == 1 and f["names_lost"], f  # "the server (pid P) has made no progress ... stopped"


def test_zmq_local_names_a_server_killed_by_sigkill(tmp_root):
    f = kill_server_launched(tmp_root, 0)
    _ended_and_resumed(f)
    assert f["exit_code"] == 128 + signal.SIGKILL and f["names_lost"], f  # "server (pid P) was killed by SIGKILL"


def test_a_rogue_with_another_workers_key_is_refused_and_changes_nothing(tmp_root):
    f = rogue_worker(tmp_root, 0)
    assert f["exit_code"] == 0 and f["workers_exit"] == [0, 0], f
    assert f["rogue_refused"] and f["seconds_to_exit"] <= f["limit_s"], f  # refused at its hello, at once
    assert f["raw_hello_refused"] and f["grads_dropped"] and f["names_lost"], f
    assert f["final_params_equal_clean_run"] and f["leftover_processes"] == 0, f


@pytest.mark.parametrize("seed", [0, 1], ids=["nan-loss", "nan-gradient"])
def test_a_nan_from_one_worker_names_it_and_checkpoints_the_last_good_step(seed, tmp_root):
    f = nan_worker(tmp_root, seed)
    _ended_and_resumed(f)
    assert f["names_lost"] and not f["blames_lr"] and f["others_told"], f
    assert f["last_logged_step"] == f["last_good_step"] and f["last_good_checkpoint_written"], f
