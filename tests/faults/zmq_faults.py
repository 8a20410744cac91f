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

from .mpi_faults import BASE, FINAL, _is_zombie, _procs, final_params, kill_leftovers, last_step, newest_checkpoint

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


def refusals(text: str) -> int:
    """Refused hellos in a server's log, the rate limit's held-back ones included: each
    "refused worker" line, plus the counts of lines held back ("N more ..."). Only refusals
    are rate-limited on a server without CURVE."""
    lines = text.count("refused worker")
    held = sum(int(n) for n in re.findall(r"\((\d+) more from .* not logged\)", text))
    held += sum(int(n) for n in re.findall(r"^(\d+) more line\(s\) about .* not logged", text, re.M))
    return lines + held


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

    grad = dict(type="grad", step=step, rank=rank, gen=0, loss=0.5, dtype="float32", shape=[numel], nbytes=good)
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
        [h(type="params", step=step + 1, rank=0, world=1, gen=0, dtype="float32", shape=[numel], nbytes=good), arr],  # a server's message
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
original = zmq_ps.ZMQWorker.step
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
zmq_ps.ZMQWorker.step = hostile
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
    # Refusals are logged at most once per peer every 10 s, the rest counted: all 10 came from
    # 127.0.0.1 within a second, so one line, and the other 9 in the count at close.
    assert server.stderr.count("joined:") == 1 and refusals(server.stderr) == 10, server.report()
    assert server.stderr.count("refused worker") < 10, server.report()
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
LIVENESS = ("comm.heartbeat_s=0.5", f"comm.timeout_s={TIMEOUT_S:g}", "comm.join_timeout_s=20", "comm.reconnect_s=0")


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

    def __init__(self, tmp_dir: str | Path, name: str, n: int, script: str | None = None) -> None:
        self.tmp_dir = Path(tmp_dir)
        self.root = self.tmp_dir / name
        (self.root / "job").mkdir(parents=True)
        self.job, self.run, self.endpoint = Job(self.root / "job"), self.root / "run", free_endpoint()
        self.server = self.job.server("server", self.endpoint, n, self.run, BASE, LIVENESS, ("--resume", "never"))
        self.workers = [self.job.worker(f"worker{i}", self.endpoint, BASE, LIVENESS, script=script) for i in range(n)]

    def end(self, grace: float = 5.0) -> int:
        """Wait a little for every process; kill and count those still running."""
        deadline = time.monotonic() + grace
        for p in self.job.procs:
            _wait(p, max(0.0, deadline - time.monotonic()))
        left = sum(p.poll() is None for p in self.job.procs)
        self.job.kill_all()
        return left

    def figures(self, n: int) -> dict:
        return _figures(self.tmp_dir, self.root, self.run, n)


def _figures(tmp_dir: Path, root: Path, run: Path, n: int) -> dict:
    """The interrupted run's last logged step and newest checkpoint, and whether n workers
    resume it to FINAL bitwise as the uninterrupted job."""
    last = last_step(run)  # before the resume logs more
    ckpt_step, loads, why = newest_checkpoint(run)
    resumed, bitwise = _resume(tmp_dir, root, run, n) if loads else (False, False)
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


# ---- through the launcher: launch/zmq-local ---------------------------------------------------

ZMQ_LOCAL = Path(__file__).resolve().parents[2] / "launch" / "zmq_local.py"
# The launcher kills a server that made no progress for 2 x comm.timeout_s; it samples the
# server's vital signs every 0.5 s, and the kill itself takes a moment.
LAUNCHER_LIMIT_S = 2 * TIMEOUT_S + 2.0


def server_pid_of(run: Path, timeout: float = 30) -> int:
    """The pid of the server training into ``run`` (its command line names run and role)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, argv in _procs():
            if str(run) in argv and "comm.role=server" in argv and "--print-config" not in argv \
                    and not _is_zombie(pid):
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no server process for {run}")


class _Launched:
    """``launch/zmq-local n`` on the faults' config, its output (the server's, and the workers'
    prefixed) in files, each trial in its own directory."""

    def __init__(self, tmp_dir: str | Path, name: str, n: int) -> None:
        self.tmp_dir = Path(tmp_dir)
        self.root = self.tmp_dir / name
        self.root.mkdir(parents=True)
        self.run = self.root / "run"
        cmd = [sys.executable, str(ZMQ_LOCAL), str(n), *_sets([*BASE, *LIVENESS]), "--run-dir", str(self.run),
               "--resume", "never"]
        self.proc = Proc("launcher", cmd, self.root, self.root)

    def output(self) -> str:
        return self.proc.stdout + self.proc.stderr

    def end(self, grace: float = 5.0) -> int:
        """Wait a little for the launcher; kill it and every process naming the run directory
        that is still there, and count them."""
        left = 0
        if _wait(self.proc, grace) is None:
            left += 1
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.popen.wait(timeout=10)
        deadline = time.monotonic() + 2.0
        while processes_naming(self.run) and time.monotonic() < deadline:
            time.sleep(0.05)  # a child the launcher killed a moment ago may not be reaped yet
        return left + kill_leftovers(self.run)


def processes_naming(run: Path) -> int:
    """How many live processes name ``run`` (none killed)."""
    return sum(1 for pid, argv in _procs() if str(run) in argv and not _is_zombie(pid))


def _launcher_trial(tmp_dir: str | Path, seed: int, signum: int, n: int = 2) -> dict:
    at_step = random.Random(seed).randint(6, 30)
    name = signal.Signals(signum).name
    limit = LAUNCHER_LIMIT_S if signum == signal.SIGSTOP else 2 * TIMEOUT_S
    t = _Launched(tmp_dir, f"zmq-local-{name.lower()}-server-seed{seed}", n)
    try:
        reached = wait_for_step(t.run, at_step, [t.proc])
        pid = server_pid_of(t.run)
        os.kill(pid, signum)
        t0 = time.monotonic()
        code = _wait(t.proc, limit)
        took = time.monotonic() - t0
    finally:
        leftovers = t.end()
    text = t.output()
    killed = f"server (pid {pid}) was killed by SIGKILL" in text
    if signum == signal.SIGSTOP:
        named = killed and f"the server (pid {pid}) has made no progress" in text and "it is stopped" in text
    else:
        named = killed
    return {"fault": f"{name} to the server of zmq-local", "seed": seed, "signalled_after_step": reached,
            "exit_code": code, "seconds_to_exit": took, "exited_nonzero": code not in (None, 0), "limit_s": limit,
            "names_lost": named, "says": [line for line in text.splitlines() if line.startswith("zmq-local:")][-2:],
            "leftover_processes": leftovers, **_figures(t.tmp_dir, t.root, t.run, n)}


def sigstop_server_launched(tmp_dir: str | Path, seed: int, n: int = 2) -> dict:
    """SIGSTOP to the server of ``zmq-local n`` after a random step: the workers give up after
    comm.timeout_s, the launcher kills the stopped server once it has made no progress for
    2 x comm.timeout_s, names it, exits 1 and leaves nothing running; the newest regular
    checkpoint resumes bitwise."""
    return _launcher_trial(tmp_dir, seed, signal.SIGSTOP, n)


def kill_server_launched(tmp_dir: str | Path, seed: int, n: int = 2) -> dict:
    """kill -9 of the server of ``zmq-local n`` after a random step: the launcher says
    ``server (pid P) was killed by SIGKILL``, ends the workers and exits 137."""
    return _launcher_trial(tmp_dir, seed, signal.SIGKILL, n)


# ---- who may join: a rogue with a valid key ---------------------------------------------------------

def _raw_rogue(endpoint: str, key_dir: Path, step: int, rank: int, count: int = 20) -> tuple[dict, int]:
    """A connection with the CURVE key in ``key_dir``: a hello, then ``count`` well-formed
    gradients of noise for the steps from ``step``, posing as ``rank``. Returns the server's
    answer to the hello and the number of gradients sent."""
    import zmq

    from distbp.comm import wire

    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    try:
        s.setsockopt(zmq.LINGER, 2000)
        import zmq.auth

        s.curve_serverkey, _ = zmq.auth.load_certificate(str(key_dir / "server.key"))
        s.curve_publickey, s.curve_secretkey = zmq.auth.load_certificate(str(key_dir / "client.key_secret"))
        s.connect(endpoint)
        s.send_multipart(wire.encode("hello", version="0.1.0", config_hash="0" * 16, numel=NUMEL, host="rogue",
                                     pid=os.getpid()))
        answer = json.loads(s.recv_multipart()[0]) if s.poll(10_000) else {}
        noise = np.random.default_rng(step).standard_normal(NUMEL).astype(np.float32)
        for k in range(count):
            s.send_multipart(wire.encode("grad", noise, step=step + k, rank=rank, gen=0, loss=0.5))
        return answer, count
    finally:
        s.close(linger=2000)
        ctx.term()


# A worker that, holding rank RANK, waits before it sends the gradient of step STEP until the
# file GO exists, and says so by writing HELD: the trial's rogue then speaks while the job is
# certainly still running, whatever the load (the server reads every connection fairly).
HOLD_WORKER = """
import os, sys, time
from distbp.comm import zmq_ps
RANK, STEP, HELD, GO = {rank}, {step}, {held!r}, {go!r}
original = zmq_ps.ZMQWorker.step
def held(self, grad, params, update, stats):
    if self.rank == RANK and self._step == STEP - 1:
        open(HELD, "w").close()
        while not os.path.exists(GO):
            time.sleep(0.01)
    return original(self, grad, params, update, stats)
zmq_ps.ZMQWorker.step = held
from distbp.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def _wait_for_file(path: Path, procs: list[Proc], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        ended = [p.name for p in procs if p.poll() is not None]
        assert not ended and time.monotonic() < deadline, f"{path.name} never appeared; ended: {ended}"
        time.sleep(0.02)


def rogue_worker(tmp_dir: str | Path, seed: int, n: int = 2) -> dict:
    """One key per worker (distbp-keys --workers n), and a rogue that holds a valid key, not
    its own: worker ``victim``'s. A second worker process with that key asks to join while its
    owner holds rank 0, and a raw connection with it says hello and sends well-formed noise
    gradients during the run. Both are refused (the hello) and dropped (the gradients), and
    logged naming the key; the job ends exactly as a clean run (bitwise).

    Figures in the report's columns: exit code and named are the server's, seconds to exit
    the rogue worker's (refused at once, not after comm.join_timeout_s), checkpoints intact
    the final one, bitwise the final parameters against an uninterrupted run without rogues."""
    from distbp.comm.zmq_ps import fingerprint, make_keys

    rng = random.Random(seed)
    victim, at_step = rng.randrange(n), rng.randint(6, 30)
    root = Path(tmp_dir) / f"zmq-rogue-seed{seed}"
    (root / "job").mkdir(parents=True)
    keys = root / "keys"
    make_keys(keys, n)
    job, run, endpoint = Job(root / "job"), root / "run", free_endpoint()
    final = _sets_final()

    def own(i: int) -> tuple[str, ...]:
        return (*LIVENESS, f"comm.curve={keys / f'worker-{i}'}")

    server = job.server("server", endpoint, n, run, final, (*LIVENESS, f"comm.curve={keys}"), ("--resume", "never"))
    try:
        workers = [job.worker(f"worker{victim}", endpoint, final, own(victim))]
        worker_pid(server, 0)  # the victim holds rank 0
        t0 = time.monotonic()
        rogue = job.worker("rogue", endpoint, final, own(victim))
        rogue_code = _wait(rogue, 30)
        rogue_s = time.monotonic() - t0
        held, go = root / "held", root / "go"
        hold = HOLD_WORKER.format(rank=1, step=at_step, held=str(held), go=str(go))
        workers += [job.worker(f"worker{i}", endpoint, final, own(i), hold) for i in range(n) if i != victim]
        _wait_for_file(held, [server, *workers])  # rank 1 waits at step at_step; the job cannot end
        answer, sent = _raw_rogue(endpoint, keys / f"worker-{victim}", at_step, 0)
        go.touch()
        code = _wait(server, 60)
        codes = [_wait(w, 10) for w in workers]
    finally:
        leftovers = sum(p.poll() is None for p in job.procs)
        job.kill_all()
    text = server.stdout + server.stderr
    import zmq.auth

    public, _ = zmq.auth.load_certificate(str(keys / "clients" / f"worker-{victim}.key"))
    key = f"worker-{victim} [{fingerprint(public)}]"
    accepted, dropped = drop_summary(server.stderr)
    ckpt_step, loads, why = newest_checkpoint(run)
    bitwise = loads and ckpt_step == FINAL and bool(np.array_equal(final_params(run, FINAL),
                                                                    _reference(Path(tmp_dir), n)))
    return {"fault": "rogue worker with a valid key", "seed": seed, "victim": victim, "raw_rogue_at_step": at_step,
            "exit_code": code, "seconds_to_exit": rogue_s, "limit_s": 5.0,
            "exited_nonzero": rogue_code not in (None, 0),
            "rogue_refused": rogue_code not in (None, 0) and "the server refused this worker" in rogue.stderr
            and "already holds rank 0" in rogue.stderr,
            "raw_hello_refused": answer.get("type") == "refuse" and "already holds rank 0" in answer.get("reason", ""),
            "names_lost": f"its key {key} already holds rank 0" in text and f"holds key {key}" in text,
            "grads_dropped": dropped.get("key-in-use", 0) == sent + 1, "grads_accepted": accepted.get("grad"),
            "workers_exit": codes, "checkpoint_step": ckpt_step, "checkpoint_loads": loads, "checkpoint_error": why,
            "bitwise_resume": bitwise, "final_params_equal_clean_run": bitwise, "leftover_processes": leftovers,
            "says": [line for line in text.splitlines() if "already holds" in line][:1]}


# ---- every worker's numbers are checked ---------------------------------------------------------

# A worker whose loss (or one gradient element) becomes NaN at step STEP, if it holds rank RANK;
# it notes the moment in MARK, so that the trial measures from the injection, not by sleeping.
NAN_WORKER = """
import math, sys, time
from distbp.comm import zmq_ps
RANK, STEP, WHAT, MARK = {rank}, {step}, {what!r}, {mark!r}
original = zmq_ps.ZMQWorker.step
def poisoned(self, grad, params, update, stats):
    if self.rank == RANK and self._step == STEP - 1:  # the exchange of step STEP (counted from 1)
        if WHAT == "loss":
            stats[0] = math.nan
        else:
            grad[grad.size // 2] = math.nan
        with open(MARK, "w") as f:
            f.write(repr(time.time()))
    return original(self, grad, params, update, stats)
zmq_ps.ZMQWorker.step = poisoned
from distbp.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def nan_worker(tmp_dir: str | Path, seed: int, n: int = 2, what: str | None = None) -> dict:
    """One worker reports a NaN loss (even seeds) or a NaN in its gradient (odd seeds) at a
    random step: the server stops the job naming it (rank, host:pid), after writing a
    checkpoint of the last good step, which resumes bitwise to the uninterrupted result."""
    rng = random.Random(seed)
    rank, at_step = rng.randrange(n), rng.randint(6, 30)
    what = what or ("loss" if seed % 2 == 0 else "gradient")
    name = f"zmq-nan-{what}-seed{seed}"
    mark = Path(tmp_dir) / f"{name}-injected"
    t = _Trial(tmp_dir, name, n, NAN_WORKER.format(rank=rank, step=at_step, what=what, mark=str(mark)))
    try:
        pid = worker_pid(t.server, rank)
        code = _wait(t.server, 60)
        exited = time.time()
        took = exited - float(mark.read_text()) if mark.exists() else None
        workers = [_wait(w, 2 * TIMEOUT_S) for w in t.workers]
    finally:
        leftovers = t.end()
    text = t.server.stdout + t.server.stderr
    log = (t.run / "train.log").read_text() if (t.run / "train.log").exists() else ""
    f = t.figures(n)
    good = at_step - 1
    written = f["checkpoint_step"] == good and (good % 5 == 0 or f"checkpoint of step {good} written" in log)
    others = [w for w in t.workers if w.pid != pid]
    return {"fault": f"NaN {what} from a ZeroMQ worker", "seed": seed, "rank": rank, "at_step": at_step,
            "exit_code": code, "seconds_to_exit": took if took is not None else float("inf"),
            "exited_nonzero": code not in (None, 0), "limit_s": 2 * TIMEOUT_S,
            "names_lost": f"worker {rank} (" in text and f":{pid})" in text and f"non-finite {what}" in text,
            "blames_lr": "optimizer.lr" in text, "workers_exit": workers,
            "others_told": all("the server stopped the job" in w.stderr and f"worker {rank} (" in w.stderr
                               for w in others),
            "last_good_step": good, "last_good_checkpoint_written": written, "leftover_processes": leftovers,
            "says": [line for line in text.splitlines() if "non-finite" in line][:1], **f}
