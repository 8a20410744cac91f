"""The ZeroMQ parameter server (comm.backend=zmq) as real processes on loopback: one server and
N workers give the single-process and the MPI results; a resumed job continues with another
worker count; dead workers and a dead server end the job in bounded time; mismatched workers,
hostile messages and strangers without the CURVE key are turned away while the job goes on.

The processes and the fault trials live in tests/faults/zmq_faults.py (the fault report runs
them too); every process is killed at teardown if a test left it running."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from distbp.train import Trainer, read_checkpoint, resolve
from faults.zmq_faults import NUMEL, Job, _with, free_endpoint, hostile_trial, wait_for_step, worker_pid
from test_mpi import OVERRIDES, final_params, mpirun

pytestmark = pytest.mark.slow


@pytest.fixture
def job(tmp_path):
    j = Job(tmp_path)
    try:
        yield j
    finally:
        j.kill_all()


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> np.ndarray:
    """The single-process reference: the same config, in this process."""
    run_dir = tmp_path_factory.mktemp("single")
    Trainer(resolve(None, OVERRIDES), run_dir=run_dir, resume="never", stream=io.StringIO()).run()
    return final_params(run_dir)


# ---- same results -------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3])
def test_n_workers_match_the_single_process_and_the_mpi_run(n, job, tmp_path, single):
    zmq_dir, mpi_dir = tmp_path / "zmq", tmp_path / "mpi"
    server, workers = job.run("zmq", n, zmq_dir)
    res = mpirun(n, mpi_dir, "--set", "comm.threads=1")
    assert res.returncode == 0, res.stderr
    zmq_params = final_params(zmq_dir)
    np.testing.assert_allclose(zmq_params, single, rtol=0, atol=1e-5)
    np.testing.assert_allclose(zmq_params, final_params(mpi_dir), rtol=0, atol=1e-5)
    # The server writes the run directory and talks; the workers write and print nothing.
    assert server.stdout.count("done:") == 1 and f"{n} worker(s)" in server.stdout
    assert (zmq_dir / "metrics.jsonl").read_text().count('"val_accuracy"') == 2
    assert sorted(p.name for p in (zmq_dir / "checkpoints").iterdir()) == \
        [f"step-{s:08d}.npz" for s in (10, 20, 30, 40)]
    for w in workers:
        assert w.stdout == "" and w.stderr == "", w.report()
    job.assert_all_ended()


# Worker ``rank`` reaches the server last every step, whatever the scheduler does.
LATE = """
import sys, time
from distbp.comm import zmq_ps
original = zmq_ps.ZMQWorker.step
def late(self, *args):
    if self.rank == {rank}:
        time.sleep(0.004)
    return original(self, *args)
zmq_ps.ZMQWorker.step = late
from distbp.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def test_same_n_twice_is_bitwise_identical_whatever_the_arrival_order(job, tmp_path):
    # 3 workers: (g0 + g1) + g2 and (g1 + g2) + g0 differ in float32, so a server that summed
    # in arrival order would fail here; it sums in rank order.
    a, b = tmp_path / "a", tmp_path / "b"
    job.run("a", 3, a, script=LATE.replace("{rank}", "2"))
    job.run("b", 3, b, script=LATE.replace("{rank}", "0"))
    assert np.array_equal(final_params(a), final_params(b))
    job.assert_all_ended()


# The server's first evaluation takes 3.5 s, well past comm.timeout_s (1 s): the workers,
# waiting for the next parameters, must hear its heartbeats meanwhile.
SLOW_EVAL = """
import sys, time
from distbp.train import trainer
original = trainer.Trainer._evaluate
calls = []
def slow(self, run):
    if not calls:
        calls.append(run.step)
        time.sleep(3.5)
    return original(self, run)
trainer.Trainer._evaluate = slow
from distbp.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def test_a_long_evaluation_on_the_server_is_not_a_dead_server(job, tmp_path):
    liveness = ("comm.heartbeat_s=0.25", "comm.timeout_s=1")
    clean, slow = tmp_path / "clean", tmp_path / "slow"
    job.run("clean", 2, clean, comm=liveness)
    endpoint = free_endpoint()
    server = job.launch("slow-server", [*job.common(endpoint, OVERRIDES, "comm.role=server", "comm.workers=2",
                                                   *liveness), "--run-dir", str(slow)], SLOW_EVAL)
    workers = [job.worker(f"slow-worker{i}", endpoint, OVERRIDES, liveness) for i in range(2)]
    for p in [server, *workers]:
        assert p.wait(60) == 0, p.report()
    assert np.array_equal(final_params(slow), final_params(clean))
    job.assert_all_ended()


def test_resume_with_another_worker_count(job, tmp_path, single):
    run = tmp_path / "run"
    server, _ = job.run("part", 2, run, overrides=_with(OVERRIDES, "train.max_steps=17"))
    assert "done: 17 steps" in server.stdout
    server, _ = job.run("rest", 3, run, extra=("--resume", "auto"))
    assert "resumed from" in server.stdout and "3 worker(s)" in server.stdout
    np.testing.assert_allclose(final_params(run), single, rtol=0, atol=1e-5)
    job.assert_all_ended()


# ---- liveness -------------------------------------------------------------------------------

TIMEOUT_S = 3.0
# Every step logged: metrics.jsonl's last line is the last finished step.
LONG = _with(OVERRIDES, "train.max_steps=1000000", "train.epochs=1000000", "train.log_every=1")
LIVENESS = ("comm.heartbeat_s=0.5", f"comm.timeout_s={TIMEOUT_S:g}", "comm.join_timeout_s=20", "comm.reconnect_s=0")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_lost_worker_stops_the_job_with_a_checkpoint(how, job, tmp_path):
    # SIGKILL closes the worker's connections (the server notices at its next send);
    # SIGSTOP leaves them open, silent: only the heartbeat timeout can tell.
    run, endpoint = tmp_path / "run", free_endpoint()
    server = job.server("server", endpoint, 3, run, LONG, LIVENESS)
    workers = [job.worker(f"worker{i}", endpoint, LONG, LIVENESS) for i in range(3)]
    victim_pid = worker_pid(server, 1)
    victim = next(w for w in workers if w.pid == victim_pid)
    reached = wait_for_step(run, 30, [server, *workers])

    os.kill(victim.pid, getattr(signal, how))
    killed = time.monotonic()
    code = server.wait(2 * TIMEOUT_S)
    took = time.monotonic() - killed
    assert code != 0, server.report()
    assert took <= 2 * TIMEOUT_S
    assert "worker 1 (" in server.stderr and f":{victim.pid})" in server.stderr, server.report()
    if how == "SIGSTOP":
        assert f"silent for {TIMEOUT_S:g} s" in server.stderr, server.report()
    assert "Traceback" not in server.stderr

    # The newest checkpoint is of the last finished step, and loads. (The server writes one when
    # the job stops, unless the regular checkpoint.every=10 one was of that very step.)
    last = max(json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines())
    newest = max((run / "checkpoints").glob("step-*.npz"))
    assert newest.name == f"step-{last:08d}.npz" and last >= reached
    ckpt = read_checkpoint(newest)
    assert ckpt.step == last and ckpt.arrays["params"].shape == (NUMEL,)
    if last % 10:
        assert f"checkpoint of step {last} written: {newest}" in (run / "train.log").read_text()

    # The other workers are told to stop, and say why.
    for w in workers:
        if w is victim:
            if how == "SIGSTOP":
                os.kill(w.pid, signal.SIGKILL)
            assert w.wait(5) == -signal.SIGKILL
            continue
        assert w.wait(5) != 0, w.report()
        assert "the server stopped the job" in w.stderr and "worker 1 (" in w.stderr, w.report()
    job.assert_all_ended()


def test_a_killed_server_ends_every_worker(job, tmp_path):
    run, endpoint = tmp_path / "run", free_endpoint()
    server = job.server("server", endpoint, 2, run, LONG, LIVENESS)
    workers = [job.worker(f"worker{i}", endpoint, LONG, LIVENESS) for i in range(2)]
    wait_for_step(run, 30, [server, *workers])

    os.kill(server.pid, signal.SIGKILL)
    killed = time.monotonic()
    for w in workers:
        assert w.wait(TIMEOUT_S + 4) != 0, w.report()
        assert time.monotonic() - killed <= TIMEOUT_S + 4
        assert f"the server at {endpoint} sent nothing for {TIMEOUT_S:g} s" in w.stderr, w.report()
        assert "Traceback" not in w.stderr
    assert server.wait(1) == -signal.SIGKILL
    job.assert_all_ended()


def test_a_restarted_server_takes_its_workers_back_and_the_job_ends_as_if_uninterrupted(job, tmp_path):
    # OVERRIDES: 40 steps, a checkpoint every 10. The server is killed after step 25 and started
    # again on its run directory: it resumes from step 20 (or later); the workers, which kept
    # trying to rejoin (comm.reconnect_s), are admitted again and the steps since are redone.
    clean, run = tmp_path / "clean", tmp_path / "run"
    job.run("clean", 2, clean)
    endpoint = free_endpoint()
    rejoin = ("comm.heartbeat_s=0.5", f"comm.timeout_s={TIMEOUT_S:g}", "comm.join_timeout_s=20", "comm.reconnect_s=30")
    slow = _with(OVERRIDES, "train.log_every=1")  # every step in metrics.jsonl: the kill comes after step 25
    server = job.server("server", endpoint, 2, run, slow, rejoin)
    workers = [job.worker(f"worker{i}", endpoint, slow, rejoin) for i in range(2)]
    wait_for_step(run, 25, [server, *workers])
    os.kill(server.pid, signal.SIGKILL)
    assert server.wait(10) == -signal.SIGKILL
    again = job.server("server-again", endpoint, 2, run, slow, rejoin)
    assert again.wait(60) == 0, again.report()
    for w in workers:
        assert w.wait(30) == 0, w.report()
        assert "trying to rejoin for" in w.stderr and "(comm.reconnect_s)" in w.stderr, w.report()
    assert re.search(r"resumed from \S+step-000000[2-4]0\.npz", again.stdout), again.stdout[-2000:]
    assert np.array_equal(final_params(run), final_params(clean))
    job.assert_all_ended()


def test_a_worker_gives_up_rejoining_after_reconnect_s(job, tmp_path):
    run, endpoint = tmp_path / "run", free_endpoint()
    rejoin = ("comm.heartbeat_s=0.5", "comm.timeout_s=2", "comm.join_timeout_s=20", "comm.reconnect_s=3")
    server = job.server("server", endpoint, 1, run, LONG, rejoin)
    worker = job.worker("worker", endpoint, LONG, rejoin)
    wait_for_step(run, 10, [server, worker])
    os.kill(server.pid, signal.SIGKILL)
    killed = time.monotonic()
    assert worker.wait(2 + 3 + 10) == 1, worker.report()
    assert time.monotonic() - killed <= 2 + 3 + 8  # timeout_s, then reconnect_s, and the last try's slack
    assert "no server took this worker back within 3 s (comm.reconnect_s)" in worker.stderr, worker.report()
    job.assert_all_ended()


# ---- who may join -----------------------------------------------------------------------------

def test_a_worker_with_another_config_is_refused_and_the_job_goes_on(job, tmp_path, single):
    run, endpoint = tmp_path / "run", free_endpoint()
    server = job.server("server", endpoint, 1, run)
    stranger = job.worker("stranger", endpoint, _with(OVERRIDES, "optimizer.lr=0.5"))
    assert stranger.wait(30) != 0, stranger.report()
    assert "refused" in stranger.stderr and "config hash" in stranger.stderr, stranger.report()
    assert "Traceback" not in stranger.stderr
    assert server.poll() is None, server.report()
    good = job.worker("good", endpoint)
    assert good.wait(60) == 0, good.report()
    assert server.wait(30) == 0, server.report()
    assert "refused worker" in server.stderr and "config hash" in server.stderr, server.report()
    np.testing.assert_allclose(final_params(run), single, rtol=0, atol=1e-5)
    job.assert_all_ended()


# A worker that says hello only after its connection's CURVE handshake has been refused: a
# DEALER with no connection blocks in send, so without a send deadline it would hang forever.
SLOW_HELLO = """
import sys, time
from distbp.comm import zmq_ps
original = zmq_ps.ZMQWorker.join
def slow(self, *args):
    time.sleep(1.0)
    return original(self, *args)
zmq_ps.ZMQWorker.join = slow
from distbp.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def _keys(job: Job, key_dir: Path) -> None:
    p = job.launch(f"keys-{key_dir.name}", [str(key_dir)], script="import sys; from distbp.cli import keys_main; "
                                                                    "sys.exit(keys_main(sys.argv[1:]))")
    assert p.wait(30) == 0, p.report()


def test_curve_lets_the_key_holders_in_and_nobody_else(job, tmp_path, single):
    keys, other = tmp_path / "keys", tmp_path / "other"
    _keys(job, keys)
    _keys(job, other)
    assert {f.name for f in keys.iterdir()} >= {"server.key", "server.key_secret", "client.key", "client.key_secret",
                                                "clients"}
    # A worker that knows the server's public key but holds a client key the server does not list.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "server.key").write_bytes((keys / "server.key").read_bytes())
    (mixed / "client.key_secret").write_bytes((other / "client.key_secret").read_bytes())

    join = ("comm.join_timeout_s=5", "comm.heartbeat_s=0.5", "comm.timeout_s=5")
    server, _ = job.run("curve", 1, tmp_path / "good", comm=(f"comm.curve={keys}", *join))
    np.testing.assert_allclose(final_params(tmp_path / "good"), single, rtol=0, atol=1e-5)

    endpoint = free_endpoint()
    server = job.server("server", endpoint, 1, tmp_path / "bad", comm=(f"comm.curve={keys}", *join))
    strangers = [job.worker("other-keys", endpoint, comm=(f"comm.curve={other}", *join)),
                 job.worker("mixed-keys", endpoint, comm=(f"comm.curve={mixed}", *join)),
                 job.worker("mixed-keys-slow-hello", endpoint, comm=(f"comm.curve={mixed}", *join), script=SLOW_HELLO),
                 job.worker("no-curve", endpoint, comm=join)]
    for w in strangers:
        assert w.wait(20) != 0, w.report()
        assert re.search(f"the server at {endpoint} (sent nothing for 5 s while this worker waited for it to admit "
                         "this worker|took nothing for 5 s while this worker sent it its hello)", w.stderr), w.report()
    assert server.wait(20) != 0, server.report()
    assert "only 0 of 1 workers joined" in server.stderr, server.report()
    assert "joined:" not in server.stderr
    job.assert_all_ended()


# ---- garbage on the wire ----------------------------------------------------------------------

def test_hostile_messages_are_dropped_and_change_nothing(job, tmp_path):
    f = hostile_trial(job, tmp_path)
    assert f["messages_tried"] >= 2000 and f["accepted_hostile"] == 0, f


def test_zmq_local_restart_brings_a_killed_server_back(tmp_path):
    # launch/zmq-local 2 --restart 1: the server is killed after step 25 (its pid from RUN/.lock);
    # the launcher starts it again, it resumes from its newest checkpoint, the workers rejoin,
    # and the job ends as the uninterrupted one, bitwise.
    from test_launch import ZMQ_LOCAL, clean_env

    sets = [a for o in _with(OVERRIDES, "train.log_every=1", "comm.threads=1", "comm.reconnect_s=30",
                             f"comm.timeout_s={TIMEOUT_S:g}", "comm.heartbeat_s=0.5") for a in ("--set", o)]
    clean, run, tmp = tmp_path / "clean", tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()  # where zmq-local puts its ipc:// socket file
    done = subprocess.run([*ZMQ_LOCAL, "2", "--run-dir", str(clean), *sets], capture_output=True, text=True,
                          timeout=120, env=clean_env(TMPDIR=str(tmp)))
    assert done.returncode == 0, done.stderr[-3000:]
    log = tmp_path / "launcher.log"
    with log.open("w") as out:
        job = subprocess.Popen([*ZMQ_LOCAL, "--restart", "1", "2", "--run-dir", str(run), *sets], stdout=out,
                               stderr=subprocess.STDOUT, env=clean_env(TMPDIR=str(tmp)), start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (run / "metrics.jsonl").exists() or '"step": 25,' not in (run / "metrics.jsonl").read_text():
            assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        os.kill(json.loads((run / ".lock").read_text())["pid"], signal.SIGKILL)
        code = job.wait(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "zmq-local: server (pid" in text and "was killed by SIGKILL" in text, text[-3000:]
    assert "zmq-local: restarting the server (restart 1 of 1)" in text, text[-3000:]
    assert np.array_equal(final_params(run), final_params(clean))
    assert f"endpoint: ipc://{tmp}/distbp-" in (run / "config.yaml").read_text()
    assert list(tmp.iterdir()) == []  # the killed server's socket file too
