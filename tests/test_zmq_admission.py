"""Who may join a parameter-server job, and what a worker may send it.

- Without CURVE the server binds only to this machine unless ``comm.insecure: true``.
- ``distbp-keys DIR --workers N`` makes one key per worker; a key holds at most one rank (a
  second hello with it is refused, naming the key by file and fingerprint); a key the server
  does not list never gets a connection, and the refusals are logged, rate-limited.
- A non-finite loss or gradient from any worker stops the step before the update, naming the
  worker (``WorkerFault``, so the Trainer checkpoints the last good step).

The in-process tests drive a real ZMQServer over loopback with raw DEALER sockets; the
multi-process ones (marked slow) run distbp-train and launch/zmq-local."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth

from distbp import __version__
from distbp.cli import keys_main, train_main
from distbp.comm import wire, zmq_ps
from distbp.comm.zmq_ps import InsecureEndpoint, WorkerFault, ZMQServer, fingerprint, is_local_endpoint, make_keys
from distbp.train import ConfigError, resolve

REPO = Path(__file__).resolve().parents[1]
NUMEL = 10
HASH = "0123456789abcdef"


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def comm_cfg(endpoint: str, workers: int = 1, **extra) -> dict:
    return {"endpoint": endpoint, "workers": workers, "heartbeat_s": 0.5, "timeout_s": 5.0, "join_timeout_s": 10.0,
            "curve": None, "insecure": False, **extra}


# ---- binding beyond this machine ----------------------------------------------------------------

@pytest.mark.parametrize("endpoint, local", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.3.4.5:5555", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/distbp.ipc", True), ("inproc://ps", True),
    ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://10.1.2.3:5555", False),
    ("tcp://eth0:5555", False), ("tcp://[::]:5555", False), ("pgm://eth0;239.192.1.1:5555", False)])
def test_which_endpoints_serve_this_machine_only(endpoint, local):
    assert is_local_endpoint(endpoint) is local


def test_a_server_beyond_loopback_without_curve_is_refused_unless_insecure(tmp_path):
    endpoint = f"tcp://0.0.0.0:{free_endpoint().rsplit(':', 1)[1]}"
    with pytest.raises(InsecureEndpoint) as e:
        ZMQServer(comm_cfg(endpoint))
    assert e.value.exit_code == 2
    assert "comm.endpoint: tcp://0.0.0.0:" in str(e.value) and "comm.curve" in str(e.value) \
        and "comm.insecure: true" in str(e.value)
    # Said to be intended: it binds (and says what that means).
    server = ZMQServer(comm_cfg(endpoint, insecure=True, join_timeout_s=0.2))
    lines: list[str] = []
    server.log_to(lines.append)
    try:
        with pytest.raises(zmq_ps.PeerLost, match="only 0 of 1 workers joined"):
            server.join(HASH, NUMEL)
    finally:
        server.close()
    assert "anyone who can reach this port can join" in lines[0], lines
    # CURVE on: allowed (the keys are checked when it binds).
    ZMQServer(comm_cfg(endpoint, curve=str(tmp_path))).close()


def test_a_server_on_ipc_removes_its_socket_file_when_it_closes(tmp_path):
    path = tmp_path / "ps.ipc"
    server = ZMQServer(comm_cfg(f"ipc://{path}", join_timeout_s=0.2))
    try:
        with pytest.raises(zmq_ps.PeerLost, match="only 0 of 1 workers joined"):
            server.join(HASH, NUMEL)
        assert path.exists()
    finally:
        server.close()
    assert not path.exists()  # libzmq itself leaves it


def test_the_command_line_refuses_it_with_exit_code_2(tmp_path, capsys):
    code = train_main(["--run-dir", str(tmp_path / "run"), "--set", "comm.backend=zmq", "--set", "comm.role=server",
                       "--set", "comm.endpoint=tcp://0.0.0.0:5555"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("distbp-train: error: comm.endpoint: tcp://0.0.0.0:5555 can be reached from other "
                          "machines"), err
    assert not (tmp_path / "run").exists()


def test_comm_insecure_is_a_zmq_key():
    assert resolve(None, ["comm.backend=zmq", "comm.insecure=true"])["comm"]["insecure"] is True
    with pytest.raises(ConfigError, match="comm.insecure: has no effect"):
        resolve(None, ["comm.backend=local", "comm.insecure=true"])


# ---- keys -----------------------------------------------------------------------------------------

def test_distbp_keys_makes_one_key_per_worker(tmp_path, capsys):
    keys = tmp_path / "keys"
    assert keys_main([str(keys), "--workers", "3"]) == 0
    out = capsys.readouterr().out
    assert f"comm.curve={keys}/worker-I" in out
    assert {p.name for p in keys.iterdir()} == {"server.key", "server.key_secret", "clients", "worker-0", "worker-1",
                                                "worker-2"}
    publics = set()
    for i in range(3):
        own = keys / f"worker-{i}"
        assert {p.name for p in own.iterdir()} == {"client.key", "client.key_secret", "server.key"}
        assert (own / "client.key_secret").stat().st_mode & 0o077 == 0
        assert (own / "server.key").read_bytes() == (keys / "server.key").read_bytes()
        assert (keys / "clients" / f"worker-{i}.key").read_bytes() == (own / "client.key").read_bytes()
        publics.add(zmq.auth.load_certificate(str(own / "client.key"))[0])
    assert len(publics) == 3  # distinct pairs
    assert sorted(p.name for p in (keys / "clients").iterdir()) == ["worker-0.key", "worker-1.key", "worker-2.key"]
    # Made once: again into the same directory would leave the old keys admitted.
    assert keys_main([str(keys), "--workers", "3"]) == 1
    assert "already holds CURVE keys" in capsys.readouterr().err


def test_distbp_keys_without_workers_keeps_the_single_key_layout(tmp_path, capsys):
    keys = tmp_path / "keys"
    assert keys_main([str(keys)]) == 0
    assert {p.name for p in keys.iterdir()} == {"server.key", "server.key_secret", "client.key", "client.key_secret",
                                                "clients"}
    assert [p.name for p in (keys / "clients").iterdir()] == ["client.key"]
    assert "a key admits one worker at a time" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        keys_main([str(tmp_path / "k2"), "--workers", "0"])


def test_a_worker_pointed_at_the_top_of_per_worker_keys_is_told_which(tmp_path):
    make_keys(tmp_path / "keys", 2)
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    try:
        with pytest.raises(FileNotFoundError, match=r"one key per worker: .*comm.curve=.*worker-I"):
            zmq_ps._curve_client(s, tmp_path / "keys")
    finally:
        s.close(0)
        ctx.term()


def test_fingerprints_are_short_and_stable():
    assert fingerprint("abc") == fingerprint(b"abc") == "ba7816bf"


# ---- the rate limit ---------------------------------------------------------------------------------

def test_lines_strangers_cause_are_at_most_one_per_peer_every_10_s(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(zmq_ps.time, "monotonic", lambda: clock[0])
    lines: list[str] = []
    throttle = zmq_ps._Throttle(lines.append)
    for _ in range(50):
        throttle("10.0.0.9", "refused worker x:1: config hash")
    throttle("10.0.0.7", "refused worker y:2: config hash")
    assert lines == ["refused worker x:1: config hash", "refused worker y:2: config hash"]
    clock[0] += 10.0
    throttle("10.0.0.9", "refused worker x:3: config hash")
    assert lines[-1] == "refused worker x:3: config hash (49 more from 10.0.0.9 in the last 10 s not logged)"
    throttle("10.0.0.9", "refused worker x:4: config hash")
    throttle.flush()
    assert lines[-1] == "1 more line(s) about 10.0.0.9 not logged (at most one per peer every 10 s)"
    # However many peers: memory for MAX_TRACKED_PEERS of them, the rest share one count.
    for i in range(3 * zmq_ps.MAX_TRACKED_PEERS):
        throttle(f"peer-{i}", "x")
    assert len(throttle._last) <= zmq_ps.MAX_TRACKED_PEERS + 1


# ---- a real server, raw workers -------------------------------------------------------------------

class Raw:
    """A DEALER with a chosen identity and (optionally) CURVE key directory."""

    def __init__(self, ctx: zmq.Context, endpoint: str, identity: bytes, key_dir: Path | None = None) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, identity)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, 1000)
        if key_dir is not None:
            zmq_ps._curve_client(self.sock, key_dir)
        self.sock.connect(endpoint)

    def send(self, type_: str, payload: np.ndarray | None = None, **fields) -> bool:
        try:
            self.sock.send_multipart(wire.encode(type_, payload, **fields))
            return True
        except zmq.Again:
            return False

    def hello(self, pid: int) -> bool:
        return self.send("hello", version=__version__, config_hash=HASH, numel=NUMEL, host="test", pid=pid)

    def answer(self, types: set[str], timeout_s: float = 5.0) -> dict | None:
        """The next message of one of ``types`` (heartbeats skipped), or None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.sock.poll(50):
                header, _ = wire.decode(self.sock.recv_multipart())
                if header["type"] in types:
                    return header
        return None


class Served:
    """A ZMQServer whose handshake (or a step) runs in a thread; what it raised, its log."""

    def __init__(self, cfg: dict) -> None:
        self.server = ZMQServer(cfg)
        self.lines: list[str] = []
        self.server.log_to(self.lines.append)
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def start(self, fn, *args) -> None:
        def body():
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001 - handed to the test
                self.error = e

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 20) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), self.lines

    @property
    def log(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def test_a_key_holds_one_rank_and_an_unlisted_key_never_connects(tmp_path, ctx):
    keys, other = tmp_path / "keys", tmp_path / "other"
    make_keys(keys, 2)
    make_keys(other, 1)
    endpoint = free_endpoint()
    s = Served(comm_cfg(endpoint, workers=2, curve=str(keys)))
    s.start(s.server.join, HASH, NUMEL)
    try:
        a = Raw(ctx, endpoint, b"w-a", keys / "worker-0")
        assert a.hello(11) and a.answer({"welcome"})["rank"] == 0
        # The same key on a second connection: refused, naming the key and its holder.
        twin = Raw(ctx, endpoint, b"w-twin", keys / "worker-0")
        assert twin.hello(12)
        refused = twin.answer({"refuse", "welcome"})
        assert refused["type"] == "refuse" and "already holds rank 0 (test:11)" in refused["reason"], refused
        # A key the server does not list (with the server's public key, which is no secret): ZAP
        # refuses its connection, so no message gets through; nor with another server's keys.
        mixed = tmp_path / "mixed"
        mixed.mkdir()
        (mixed / "server.key").write_bytes((keys / "server.key").read_bytes())
        (mixed / "client.key_secret").write_bytes((other / "worker-0" / "client.key_secret").read_bytes())
        for i, key_dir in enumerate((mixed, other / "worker-0")):
            stranger = Raw(ctx, endpoint, b"w-stranger-%d" % i, key_dir)
            stranger.hello(13)
            assert stranger.answer({"refuse", "welcome"}, 1.0) is None
        b = Raw(ctx, endpoint, b"w-b", keys / "worker-1")
        assert b.hello(14) and b.answer({"welcome"})["rank"] == 1
        s.join()
        assert s.error is None, s.error
    finally:
        s.server.close()
    key0 = fingerprint(zmq.auth.load_certificate(str(keys / "clients" / "worker-0.key"))[0])
    key1 = fingerprint(zmq.auth.load_certificate(str(keys / "clients" / "worker-1.key"))[0])
    assert f"worker 0 (test:11) holds key worker-0 [{key0}]" in s.log
    assert f"worker 1 (test:14) holds key worker-1 [{key1}]" in s.log
    assert f"refused worker test:12: its key worker-0 [{key0}] already holds rank 0 (test:11)" in s.log
    assert "connection(s) with a CURVE key not in" in s.log, s.log
    for i in (0, 1):  # never a secret key, nor even a whole public one
        public, secret = zmq.auth.load_certificate(str(keys / f"worker-{i}" / "client.key_secret"))
        assert secret.decode() not in s.log and public.decode() not in s.log


def _two_workers(ctx, tmp_path, keys: bool = False) -> tuple[Served, Raw, Raw]:
    endpoint = free_endpoint()
    key_dir = None
    if keys:
        key_dir = tmp_path / "keys"
        make_keys(key_dir, 2)
    s = Served(comm_cfg(endpoint, workers=2, curve=str(key_dir) if key_dir else None))
    s.start(s.server.join, HASH, NUMEL)
    a = Raw(ctx, endpoint, b"w-a", key_dir / "worker-0" if key_dir else None)
    assert a.hello(21) and a.answer({"welcome"})["rank"] == 0
    b = Raw(ctx, endpoint, b"w-b", key_dir / "worker-1" if key_dir else None)
    assert b.hello(22) and b.answer({"welcome"})["rank"] == 1
    s.join()
    assert s.error is None
    s.server.start(0, None, np.zeros(NUMEL, np.float32), list)
    return s, a, b


def _step(s: Served, sends) -> tuple[np.ndarray, list[bool]]:
    grad, params = np.zeros(NUMEL, np.float32), np.zeros(NUMEL, np.float32)
    updated = []

    def update():  # as the Trainer's: a non-finite sum is refused before the optimizer runs
        if not np.isfinite(grad).all():
            raise RuntimeError("non-finite gradient at step 1; lower optimizer.lr or check the data")
        updated.append(True)
        params[:] -= grad

    def step():
        with np.errstate(over="ignore", invalid="ignore"):  # as the Trainer calls it
            s.server.step(grad, params, update, np.zeros(2))

    s.start(step)
    for rank, (raw, loss, values) in enumerate(sends):
        assert raw.send("grad", np.asarray(values, np.float32), step=0, rank=rank, gen=0, loss=loss)
    s.join()
    return params, updated


def test_a_nan_loss_stops_the_step_before_the_update_naming_the_worker(ctx, tmp_path):
    s, a, b = _two_workers(ctx, tmp_path, keys=True)
    try:
        params, updated = _step(s, [(a, 0.5, [0.1] * NUMEL), (b, math.nan, [0.1] * NUMEL)])
    finally:
        s.server.close()
    assert isinstance(s.error, WorkerFault), s.error
    assert str(s.error).startswith("worker 1 (test:22, key worker-1 [") and "sent a non-finite loss (nan) for step 1; " \
        "the job stops after step 0, the last good one" in str(s.error), s.error
    assert not updated and not params.any()


def test_a_nan_gradient_is_found_and_its_worker_named(ctx, tmp_path):
    s, a, b = _two_workers(ctx, tmp_path)
    grad = [0.1] * NUMEL
    grad[3] = math.inf
    try:
        params, updated = _step(s, [(a, 0.5, grad), (b, 0.5, [0.1] * NUMEL)])
    finally:
        s.server.close()
    assert isinstance(s.error, WorkerFault), s.error
    assert str(s.error).startswith("worker 0 (test:21) sent a non-finite gradient for step 1"), s.error
    assert "optimizer.lr" not in str(s.error)
    assert not updated and not params.any()


def test_a_sum_that_overflows_is_left_to_the_trainer(ctx, tmp_path):
    # Both gradients finite, their sum not: no worker is to blame, the Trainer's message stands.
    s, a, b = _two_workers(ctx, tmp_path)
    big = [3e38] * NUMEL
    try:
        _step(s, [(a, 0.5, big), (b, 0.5, big)])
    finally:
        s.server.close()
    assert type(s.error) is RuntimeError and "optimizer.lr" in str(s.error), s.error


def test_clean_steps_still_sum_in_rank_order(ctx, tmp_path):
    s, a, b = _two_workers(ctx, tmp_path)
    try:
        params, updated = _step(s, [(a, 0.5, [1.0] * NUMEL), (b, 0.25, [2.0] * NUMEL)])
    finally:
        s.server.close()
    assert s.error is None and updated == [True]
    np.testing.assert_array_equal(params, -3.0)


# ---- processes ------------------------------------------------------------------------------------

ZMQ_LOCAL = [sys.executable, str(REPO / "launch" / "zmq_local.py")]


@pytest.mark.slow
def test_zmq_local_gives_each_worker_its_own_key(tmp_path):
    keys = tmp_path / "keys"
    make_keys(keys, 2)
    res = subprocess.run([*ZMQ_LOCAL, "2", "--set", f"comm.curve={keys}", "--set", "train.max_steps=20",
                          "--set", "train.progress=plain", "--set", "comm.threads=1", "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    assert "holds key worker-0 [" in res.stderr and "holds key worker-1 [" in res.stderr, res.stderr
    printed = subprocess.run([*ZMQ_LOCAL, "--print-commands", "3", "--set", f"comm.curve={keys}"],
                             capture_output=True, text=True, timeout=30)
    assert printed.returncode == 2 and "holds keys for 2 worker(s), not 3" in printed.stderr, printed.stderr


@pytest.mark.slow
def test_one_shared_key_admits_one_worker_only(tmp_path):
    """The single-key layout (distbp-keys DIR) still works for one worker; shared by two, the
    second is refused and told how to make one key per worker."""
    keys = tmp_path / "keys"
    make_keys(keys)
    res = subprocess.run([*ZMQ_LOCAL, "2", "--set", f"comm.curve={keys}", "--set", "train.max_steps=5",
                          "--set", "comm.join_timeout_s=4", "--set", "comm.threads=1", "--set", "train.progress=plain",
                          "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert res.returncode == 1, res.stderr
    assert "its key client [" in res.stderr and "already holds rank 0" in res.stderr, res.stderr
    assert "distbp-keys DIR --workers N" in res.stderr
    assert "only 1 of 2 workers joined" in res.stderr
    assert "Traceback" not in res.stderr


# ---- the connection cap ---------------------------------------------------------------------------

def _ended(conn: socket.socket, within_s: float) -> bool:
    """Whether the server closed this raw TCP connection (end of file) within ``within_s``."""
    conn.settimeout(0.1)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if conn.recv(64) == b"":  # after libzmq's greeting, if it sent one
                return True
        except socket.timeout:
            pass
        except OSError:
            return True
    return False


def test_connections_over_the_cap_are_cut_and_the_workers_in_keep_theirs(ctx):
    endpoint = free_endpoint()
    host, port = endpoint[len("tcp://"):].rsplit(":", 1)
    s = Served(comm_cfg(endpoint, workers=2, max_connections=4))
    s.start(s.server.join, HASH, NUMEL)
    flood: list[socket.socket] = []
    try:
        a = Raw(ctx, endpoint, b"w-a", None)
        assert a.hello(31) and a.answer({"welcome"})["rank"] == 0
        flood = [socket.create_connection((host, int(port))) for _ in range(10)]
        ended = [_ended(c, 1.5) for c in flood]
        assert sum(ended) == 7 and ended[:3] == [False] * 3, ended  # a + the first 3 fill the cap of 4
        # Nobody new gets in while the flood holds the places ...
        b = Raw(ctx, endpoint, b"w-b", None)
        assert b.hello(32) and b.answer({"welcome", "refuse"}, 1.0) is None
        # ... and once it lets go, the next worker does (libzmq reconnects it by itself).
        for c in flood[:3]:
            c.close()
        deadline = time.monotonic() + 10
        while not (b.hello(32) and (got := b.answer({"welcome"}, 0.5))):
            assert time.monotonic() < deadline, s.lines
        assert got["rank"] == 1
        s.join()
        assert s.error is None, s.error
    finally:
        for c in flood:
            c.close()
        s.server.close()
    assert "refused a connection: 4 are open (comm.max_connections); 1 refused so far" in s.log, s.log
    assert s.log.count("refused a connection") == 1  # one line per 10 s, however many


def test_the_cap_defaults_to_two_per_worker_and_some_room():
    from distbp.comm.zmq_ps import CONNECTION_SLACK

    for extra, cap in (({}, 6), ({"max_workers": 5}, 10), ({"max_connections": 7}, 7 - CONNECTION_SLACK)):
        server = ZMQServer(comm_cfg(free_endpoint(), workers=3, **extra))
        assert server.max_connections == cap + CONNECTION_SLACK
        server.close()
    with pytest.raises(ConfigError, match=r"comm.max_connections: 5 is fewer than the 6 that 3 worker\(s\) open"):
        resolve(None, ["comm.backend=zmq", "comm.role=server", "comm.workers=3", "comm.max_connections=5"])


@pytest.mark.slow
def test_a_connection_flood_queues_no_more_than_the_cap_allows():
    """200 connections, each pushing 16 messages of 1 MB (3.2 GB if all were queued) at a server
    capped at 4 connections: its memory grows by less than 4 x 16 x 1 MB (without the cap the
    same flood grew it by ~190 MiB here: python -m tests.faults.report --only flood)."""
    from faults.flood_faults import connection_flood

    f = connection_flood(senders=200, max_connections=4)
    assert f["refused"] >= 190 and f["logged"] == 1, f
    assert f["rss_growth_mib"] < f["bound_mib"] == 4 * 16 * 1e6 / 2 ** 20, f
