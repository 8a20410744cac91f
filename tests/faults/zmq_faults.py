"""ZeroMQ parameter-server jobs as real processes on loopback, and the fault trials run on
them: kill -9 a worker or the server, SIGTERM/SIGINT to the server, hostile messages.
Each trial returns a dict of figures; tests/test_zmq.py and tests/faults/test_zmq_faults.py
assert on them, ``python -m tests.faults.report`` tabulates them.

Every process runs with one BLAS thread (comm.threads=1) on its own free port, writes its
output to files, and is killed by ``Job.kill_all`` if a trial left it running."""

from __future__ import annotations

import inspect
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from test_mpi import OVERRIDES

from .mpi_faults import BASE, FINAL, final_params, last_step, newest_checkpoint

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


def hostile_trial(job: "Job", tmp_path: Path) -> dict:
    """1,000s of hostile messages at a running server, from strangers and from an
    admitted insider; asserts the protocol details and returns the figures."""
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
    legit = 1 + 10 + steps + accepted.get("heartbeat", 0)  # the worker's hello, refused hellos, its grads, beats
    return {"messages_tried": insider_sent + sent + 1, "dropped": sum(dropped.values()),
            "accepted_hostile": sum(accepted.values()) - legit, "dropped_by_reason": dropped,
            "final_params_equal_clean_run": True, "server_exit": 0}


# ---- dead workers, a dead server, signals ---------------------------------------------------------

TIMEOUT_S = 3.0
LIVENESS = ("comm.heartbeat_s=0.5", f"comm.timeout_s={TIMEOUT_S:g}", "comm.join_timeout_s=20")


def _wait(proc: Proc, timeout: float) -> int | None:
    try:
        return proc.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


_ZMQ_REFERENCES: dict[tuple[str, int], np.ndarray] = {}


def _reference(tmp_dir: Path, n: int) -> np.ndarray:
    """Final parameters of an uninterrupted n-worker job to FINAL, computed once per n."""
    key = (str(tmp_dir), n)
    if key not in _ZMQ_REFERENCES:
        root = tmp_dir / f"zmq-reference-n{n}"
        root.mkdir(parents=True, exist_ok=True)
        job = Job(root)
        try:
            job.run("ref", n, root / "run", _sets_final(), LIVENESS, ("--resume", "never"))
        finally:
            job.kill_all()
        _ZMQ_REFERENCES[key] = final_params(root / "run", FINAL)
    return _ZMQ_REFERENCES[key]


def _sets_final() -> list[str]:
    return [*BASE, f"train.max_steps={FINAL}"]


def _resume(tmp_dir: Path, root: Path, run: Path, n: int) -> tuple[bool, bool]:
    """(resumed and finished, final params bitwise equal to the uninterrupted n-worker job)."""
    (root / "resume").mkdir()
    job = Job(root / "resume")
    try:
        server, _ = job.run("resume", n, run, _sets_final(), LIVENESS, ("--resume", "auto"))
    except AssertionError:
        return False, False
    finally:
        job.kill_all()
    return "resumed from" in server.stdout, bool(np.array_equal(final_params(run, FINAL), _reference(tmp_dir, n)))


class _Trial:
    """A server and n workers on the faults' config, each trial in its own directory."""

    def __init__(self, tmp_dir: str | Path, name: str, n: int) -> None:
        self.tmp_dir = Path(tmp_dir)
        self.root = self.tmp_dir / name
        (self.root / "job").mkdir(parents=True)
        self.job, self.run, self.endpoint = Job(self.root / "job"), self.root / "run", free_endpoint()
        self.server = self.job.server("server", self.endpoint, n, self.run, BASE, LIVENESS, ("--resume", "never"))
        self.workers = [self.job.worker(f"worker{i}", self.endpoint, BASE, LIVENESS) for i in range(n)]

    def end(self, grace: float = 5.0) -> int:
        """Wait a little for every process; kill and count those still running."""
        deadline = time.monotonic() + grace
        for p in self.job.procs:
            _wait(p, max(0.0, deadline - time.monotonic()))
        left = sum(p.poll() is None for p in self.job.procs)
        self.job.kill_all()
        return left

    def figures(self, n: int) -> dict:
        last = last_step(self.run)  # before the resume logs more
        ckpt_step, loads, why = newest_checkpoint(self.run)
        resumed, bitwise = _resume(self.tmp_dir, self.root, self.run, n) if loads else (False, False)
        return {"last_logged_step": last, "checkpoint_step": ckpt_step, "checkpoint_loads": loads,
                "checkpoint_error": why, "resumed": resumed, "bitwise_resume": bitwise}


def kill_worker(tmp_dir: str | Path, seed: int, n: int = 3) -> dict:
    """kill -9 a random worker after a random step: the server names it and stops the job."""
    rng = random.Random(seed)
    at_step, rank = rng.randint(6, 30), rng.randrange(n)
    t = _Trial(tmp_dir, f"zmq-kill-worker-seed{seed}", n)
    try:
        pid = worker_pid(t.server, rank)
        reached = wait_for_step(t.run, at_step, [t.server, *t.workers])
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        code = _wait(t.server, 2 * TIMEOUT_S)
        took = time.monotonic() - t0
    finally:
        leftovers = t.end()
    others = [w.poll() for w in t.workers if w.pid != pid]
    return {"fault": "kill -9 ZeroMQ worker", "seed": seed, "killed_rank": rank, "killed_after_step": reached,
            "exit_code": code, "seconds_to_exit": took, "exited_nonzero": code not in (None, 0),
            "limit_s": 2 * TIMEOUT_S, "names_lost": f"worker {rank} (" in t.server.stderr and f":{pid})" in t.server.stderr,
            "others_exit_nonzero": all(c not in (None, 0) for c in others),
            "says": [line for line in t.server.stderr.splitlines() if f"worker {rank} (" in line][:2],
            "leftover_processes": leftovers, **t.figures(n)}


def kill_server(tmp_dir: str | Path, seed: int, n: int = 2) -> dict:
    """kill -9 the server after a random step: every worker notices within its timeout and
    says which server went silent; the newest regular checkpoint resumes bitwise."""
    at_step = random.Random(seed).randint(6, 30)
    t = _Trial(tmp_dir, f"zmq-kill-server-seed{seed}", n)
    try:
        reached = wait_for_step(t.run, at_step, [t.server, *t.workers])
        os.kill(t.server.pid, signal.SIGKILL)
        t0 = time.monotonic()
        codes = [_wait(w, 2 * TIMEOUT_S) for w in t.workers]
        took = time.monotonic() - t0
    finally:
        leftovers = t.end()
    said = f"the server at {t.endpoint} sent nothing for {TIMEOUT_S:g} s"
    return {"fault": "kill -9 ZeroMQ server", "seed": seed, "killed_after_step": reached,
            "exit_code": max((c for c in codes if c is not None), default=None), "seconds_to_exit": took,
            "exited_nonzero": all(c not in (None, 0) for c in codes), "limit_s": 2 * TIMEOUT_S,
            "names_lost": all(said in w.stderr for w in t.workers),
            "says": [w.stderr.strip().splitlines()[-1] for w in t.workers if w.stderr.strip()][:1],
            "leftover_processes": leftovers, **t.figures(n)}


def signal_server(tmp_dir: str | Path, seed: int, signum: int, n: int = 2) -> dict:
    """SIGTERM or SIGINT to the server after a random step: it checkpoints the last finished
    step, tells the workers to stop, and exits 128 + signum."""
    at_step = random.Random(seed).randint(6, 30)
    name = signal.Signals(signum).name
    t = _Trial(tmp_dir, f"zmq-{name.lower()}-server-seed{seed}", n)
    try:
        reached = wait_for_step(t.run, at_step, [t.server, *t.workers])
        t.server.popen.send_signal(signum)
        t0 = time.monotonic()
        code = _wait(t.server, 2 * TIMEOUT_S)
        took = time.monotonic() - t0
        workers = [_wait(w, 2 * TIMEOUT_S) for w in t.workers]
    finally:
        leftovers = t.end()
    f = t.figures(n)
    within_one = f["checkpoint_step"] is not None and 0 <= f["last_logged_step"] - f["checkpoint_step"] <= 1
    return {"fault": f"{name} to ZeroMQ server", "seed": seed, "signalled_after_step": reached, "exit_code": code,
            "seconds_to_exit": took, "exited_nonzero": code not in (None, 0), "limit_s": 2 * TIMEOUT_S,
            "exit_is_128_plus_signum": code == 128 + signum, "workers_exit": workers,
            "checkpoint_within_one_step": within_one, "leftover_processes": leftovers,
            "says": t.server.stderr.strip().splitlines()[-1:], **f}
