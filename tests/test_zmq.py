"""The ZeroMQ parameter server (comm.backend=zmq) as real processes on loopback: one server and
N workers give the single-process and the MPI results; a resumed job continues with another
worker count; dead workers and a dead server end the job in bounded time; mismatched workers,
hostile messages and strangers without the CURVE key are turned away while the job goes on.

Every process runs with one BLAS thread (comm.threads=1) on its own free port, writes its
output to files, and is killed at teardown if a test left it running."""

from __future__ import annotations

import inspect
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distbp.train import Trainer, read_checkpoint, resolve
from test_mpi import OVERRIDES, final_params, mpirun

pytestmark = pytest.mark.slow

NUMEL = 8 * 32 + 32 + 32 * 3 + 3  # model.sizes=[8,32,3]


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _with(overrides: list[str], *changes: str) -> list[str]:
    """OVERRIDES with some keys replaced (or added)."""
    keys = {c.split("=", 1)[0] for c in changes}
    return [o for o in overrides if o.split("=", 1)[0] not in keys] + list(changes)


def free_endpoint() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class Proc:
    """One distbp-train process; stdout and stderr go to files (no pipe can fill up)."""

    def __init__(self, name: str, cmd: list[str], out_dir: Path, cwd: Path) -> None:
        self.name = name
        self.out_path, self.err_path = out_dir / f"{name}.out", out_dir / f"{name}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            # Its own session: teardown can kill it (and anything it started) by its id.
            self.popen = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd, start_new_session=True,
                                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.pid = self.popen.pid

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout:g} s\n{self.report()}") from None

    def poll(self) -> int | None:
        return self.popen.poll()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def report(self) -> str:
        return f"--- {self.name} stdout:\n{self.stdout[-3000:]}\n--- {self.name} stderr:\n{self.stderr[-3000:]}"


class Job:
    """Launches the server and workers of parameter-server jobs for one test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.cwd = tmp_path / "cwd"  # workers write nothing: this directory stays empty
        self.cwd.mkdir()
        self.procs: list[Proc] = []

    def launch(self, name: str, args: list[str], script: str | None = None) -> Proc:
        program = [sys.executable, "-m", "distbp.cli"] if script is None else [sys.executable, "-c", script]
        p = Proc(name, [*program, *args], self.tmp, self.cwd)
        self.procs.append(p)
        return p

    @staticmethod
    def common(endpoint: str, overrides: list[str], *comm: str) -> list[str]:
        return _sets([*overrides, "comm.backend=zmq", f"comm.endpoint={endpoint}", "comm.threads=1", *comm])

    def server(self, name: str, endpoint: str, n: int, run_dir: Path, overrides: list[str] = OVERRIDES,
               comm: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> Proc:
        return self.launch(name, [*self.common(endpoint, overrides, "comm.role=server", f"comm.workers={n}", *comm),
                                  "--run-dir", str(run_dir), *extra])

    def worker(self, name: str, endpoint: str, overrides: list[str] = OVERRIDES, comm: tuple[str, ...] = (),
               script: str | None = None) -> Proc:
        return self.launch(name, self.common(endpoint, overrides, "comm.role=worker", *comm), script)

    def run(self, name: str, n: int, run_dir: Path, overrides: list[str] = OVERRIDES, comm: tuple[str, ...] = (),
            extra: tuple[str, ...] = (), script: str | None = None, timeout: float = 60) -> tuple[Proc, list[Proc]]:
        """A whole job to the end: the server and n workers, all of which must exit 0."""
        endpoint = free_endpoint()
        server = self.server(f"{name}-server", endpoint, n, run_dir, overrides, comm, extra)
        workers = [self.worker(f"{name}-worker{i}", endpoint, overrides, comm, script) for i in range(n)]
        for p in [server, *workers]:
            assert p.wait(timeout) == 0, p.report()
        return server, workers

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.popen.wait(timeout=10)

    def assert_all_ended(self) -> None:
        alive = [p.name for p in self.procs if p.poll() is None]
        assert not alive, f"processes left behind: {alive}"
        assert not any(self.cwd.iterdir()), f"a worker wrote files: {list(self.cwd.iterdir())}"


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


def wait_for_step(run_dir: Path, step: int, procs: list[Proc], timeout: float = 30) -> int:
    """Block until the server's metrics.jsonl has logged ``step`` (or later); returns that step."""
    deadline = time.monotonic() + timeout
    path = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if path.exists():
            steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]
            if steps and max(steps) >= step:
                return max(steps)
        for p in procs:
            assert p.poll() is None, f"{p.name} ended early\n{p.report()}"
        time.sleep(0.05)
    raise AssertionError(f"no progress to step {step} within {timeout} s\n" + "\n".join(p.report() for p in procs))


def worker_pid(server: Proc, rank: int, timeout: float = 20) -> int:
    """The pid of worker ``rank``, from the server's "worker R joined: host:pid" line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(rf"^worker {rank} joined: .*:(\d+)$", server.stderr, re.M)
        if m:
            return int(m.group(1))
        time.sleep(0.05)
    raise AssertionError(f"worker {rank} never joined\n{server.report()}")


def drop_summary(text: str) -> tuple[dict[str, int], dict[str, int]]:
    """The server's closing "messages: accepted N (...); dropped M (...)" line, as two tables."""
    m = re.search(r"messages: accepted \d+(?: \(([^)]*)\))?; dropped \d+(?: \(([^)]*)\))?", text)
    assert m, "the server logs a summary of the messages it accepted and dropped"

    def table(part: str | None) -> dict[str, int]:
        return {k: int(v) for k, v in (item.rsplit(" ", 1) for item in part.split(", "))} if part else {}

    return table(m.group(1)), table(m.group(2))


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
original = zmq_ps.ZMQWorker.sync_step
def late(self, *args):
    if self.rank == {rank}:
        time.sleep(0.004)
    return original(self, *args)
zmq_ps.ZMQWorker.sync_step = late
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
LIVENESS = ("comm.heartbeat_s=0.5", f"comm.timeout_s={TIMEOUT_S:g}", "comm.join_timeout_s=20")


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
original = zmq_ps.ZMQWorker.handshake
def slow(self, *args):
    time.sleep(1.0)
    return original(self, *args)
zmq_ps.ZMQWorker.handshake = slow
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

def hostile_messages(seed: int, step: int, rank: int, numel: int) -> list[list[bytes]]:
    """Malformed and hostile messages (lists of frames, no identity) of every kind the server
    must drop. Self-contained: its source is also run inside a worker process."""
    import json
    import random

    rnd = random.Random(seed)
    good = 4 * numel
    arr = bytes(good)  # zeros: a gradient of the right size

    def h(**fields):
        return json.dumps(fields).encode()

    grad = dict(type="grad", step=step, rank=rank, loss=0.5, dtype="float32", shape=[numel], nbytes=good)
    return [
        [bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 64)))],  # random bytes
        [bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 64))), bytes(rnd.randint(0, 99))],
        [b'{"type": "grad", "step": '],  # cut-off JSON
        [b"[1, 2, 3]"],  # not an object
        [b"\xff\xfe\x00\x80garbage"],  # not UTF-8
        [b""],  # empty header
        [b"[" * 3000],  # nested too deeply
        [b'{"type": "grad", "type": "bye", "rank": 0}'],  # duplicate keys
        [h(**dict(grad, step=step - 1 if step else step + 2)), arr],  # replayed step, right size
        [h(**dict(grad, step=step + 1)), arr],  # future step, right size
        [h(**dict(grad, rank=rank + 1)), arr],  # posing as another rank
        [h(**dict(grad, shape=[numel - 1], nbytes=good - 4)), arr[:-4]],  # this step, wrong size
        [h(**dict(grad, nbytes=good + 4)), arr],  # shape and nbytes disagree
        [h(**dict(grad, shape=[2**40], nbytes=2**42)), arr],  # huge declared size
        [h(**dict(grad, shape=[2**62], nbytes=2**64)), arr],  # nbytes past int64
        [h(**dict(grad, dtype="float64", shape=[numel // 2], nbytes=8 * (numel // 2))), arr[:8 * (numel // 2)]],
        [h(**dict(grad, dtype="object")), arr],  # a dtype numpy would unpickle
        [h(**dict(grad, step=str(step))), arr],  # wrong field types
        [h(**dict(grad, step=True)), arr],
        [h(**dict(grad, step=-1)), arr],
        [h(**dict(grad, loss="nan")), arr],
        [h(**dict(grad, shape=numel)), arr],
        [h(**dict(grad, evil="__reduce__")), arr],  # unknown field
        [h(**grad)],  # no payload
        [h(**grad), arr, arr],  # one frame too many
        [h(type="params", step=step + 1, dtype="float32", shape=[numel], nbytes=good), arr],  # a server's message
        [h(type="bye", rank=rank, reason="x")],  # a bye with an unknown field
        [h(type="hello", version="0.1.0", config_hash=7, numel=numel)],
        [h(type="pickle", data="gASVAAAAAAAAAAB9lC4=")],  # unknown type
        [h(type="heartbeat", rank=rank, step=step, pad="x" * 5000)],  # header too long
        [h(type="stop", reason="forged\nstep 9 done", code=0)],
    ]


# A worker that, before each real gradient, sends every hostile message from its own (admitted)
# identity: they get past the unknown-sender check and must each be caught by validation. At
# step 20 it waits for the test's strangers to have sent theirs, so that the server reads them
# all while the job still runs.
INSIDER = """
import os, sys, time
from distbp.comm import zmq_ps
{source}
SENT = 0
original = zmq_ps.ZMQWorker.sync_step
def hostile(self, grad, params, update, stats):
    global SENT
    if self._step == 20:
        deadline = time.monotonic() + 30
        while not os.path.exists({gate!r}) and time.monotonic() < deadline:
            time.sleep(0.01)
    for frames in hostile_messages(self._step, self._step, self.rank, grad.size):
        self._sock.send_multipart(frames)
        SENT += 1
    return original(self, grad, params, update, stats)
zmq_ps.ZMQWorker.sync_step = hostile
from distbp.cli import train_main
code = train_main(sys.argv[1:])
print(f"insider sent {SENT}", flush=True)
sys.exit(code)
"""


def test_hostile_messages_are_dropped_and_change_nothing(job, tmp_path):
    import zmq

    steps = 60
    overrides = _with(OVERRIDES, f"train.max_steps={steps}")
    clean = tmp_path / "clean"
    job.run("clean", 1, clean, overrides)

    run, endpoint = tmp_path / "run", free_endpoint()
    server = job.server("server", endpoint, 1, run, overrides)
    ctx = zmq.Context()
    rogues = []
    sent = 0
    try:
        for i in range(6):  # strangers with identities of every sort
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.IDENTITY, [b"w-000000000000", b"w-000000000000/hb", b"\xff" * 255, b"x",
                                        f"rogue-{i}".encode(), b"A" * 200][i])
            s.connect(endpoint)
            rogues.append(s)
        for _ in range(5):  # strangers that say hello and hang up before the answer comes
            s = ctx.socket(zmq.DEALER)
            s.connect(endpoint)
            s.send_multipart([json.dumps({"type": "hello", "version": "0.1.0", "config_hash": "1" * 16,
                                          "numel": NUMEL}).encode()])
            s.close(linger=1000)
            sent += 1
        # While the server waits for its worker: each message is read as a would-be hello.
        for i, s in enumerate(rogues):
            for frames in hostile_messages(1000 + i, i, i, NUMEL):
                s.send_multipart(frames)
                sent += 1
            # Then a real hello of another config: the refusal proves the server read them all.
            s.send_multipart([json.dumps({"type": "hello", "version": "0.1.0", "config_hash": "0" * 16,
                                          "numel": NUMEL}).encode()])
        for s in rogues:
            if s.getsockopt(zmq.IDENTITY).endswith(b"/hb"):
                continue  # the server takes it for a worker's heartbeat socket, and ignores it while joining
            assert s.poll(20_000), f"no answer to a stranger's hello\n{server.report()}"
            header = json.loads(s.recv_multipart()[0])
            assert header["type"] == "refuse" and "config hash" in header["reason"]

        gate = tmp_path / "strangers-done"
        insider = job.worker("insider", endpoint, overrides,
                             script=INSIDER.replace("{source}", inspect.getsource(hostile_messages))
                             .replace("{gate!r}", repr(str(gate))))
        wait_for_step(run, 10, [server, insider])
        # While the job runs: strangers' messages, all from unknown senders.
        round_, before = 0, sent
        while sent < 1500:
            for i, s in enumerate(rogues):
                for frames in hostile_messages(round_ * 10 + i, 10 + round_, 0, NUMEL):
                    s.send_multipart(frames)
                    sent += 1
            round_ += 1
        # A frame larger than any gradient: libzmq drops the connection before it takes the memory.
        big = ctx.socket(zmq.DEALER)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(endpoint)
        rogues.append(big)
        big.send_multipart([b"{}", bytes(64 * NUMEL * 4)])
        during = sent - before
        time.sleep(0.2)  # loopback delivers them meanwhile
        gate.touch()
    finally:
        for s in rogues:
            s.close(linger=0)
        ctx.term()

    assert insider.wait(60) == 0, insider.report()
    assert server.wait(30) == 0, server.report()
    assert np.array_equal(final_params(run, steps), final_params(clean, steps))
    insider_sent = int(re.search(r"insider sent (\d+)", insider.stdout).group(1))
    assert insider_sent == steps * len(hostile_messages(0, 0, 0, NUMEL)) and insider_sent + sent >= 2000

    # Nothing accepted but the worker's own hello, its gradients and heartbeats; every hostile
    # message from the insider is dropped (it reached the server before the gradient after it).
    log = (run / "train.log").read_text()
    assert "dropped a message from" in log
    accepted, dropped = drop_summary(server.stderr)
    # (the strangers' hellos of another config are well-formed: read, then refused)
    assert server.stderr.count("joined:") == 1 and server.stderr.count("refused worker") == 10, server.report()
    assert accepted.get("hello") == 1 + 10 and accepted.get("grad") == steps, accepted
    assert set(accepted) <= {"hello", "grad", "heartbeat"}, accepted
    assert sum(dropped.values()) >= insider_sent + 6 * len(hostile_messages(0, 0, 0, NUMEL)), dropped
    assert dropped["unknown-sender"] >= during, (dropped, during)
    assert {"unknown-sender", "step", "nbytes", "payload-size", "dtype", "json", "mismatch"} <= set(dropped)
    assert "Traceback" not in server.stderr and "internal error" not in server.stderr
    job.assert_all_ended()
