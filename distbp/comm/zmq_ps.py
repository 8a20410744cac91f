"""The ZeroMQ parameter server and its workers.

The server (``comm.role: server``) owns the parameters and the optimizer: every step it
receives each worker's gradient sum, adds them in rank order (so the result does not depend
on arrival order), lets the Trainer apply the optimizer, and sends the new parameters back.
Workers (``comm.role: worker``) join with a hello carrying their config hash, parameter count
and distbp version; the server assigns ranks in joining order, so identical worker containers
can be scaled. One ROUTER socket on the server, one DEALER per worker (and one more per
worker for heartbeats, so a long step never looks like a dead worker). Every receive has a
deadline; messages are validated by ``wire`` and a bad one is dropped, counted and logged.

Who may join. The hello holds only public facts, so it proves nothing: admission rests on
CURVE (``comm.curve``). The server admits only connections whose public key is in
``DIR/clients`` (ZAP, checked by ``_ClientKeys``), learns from every message's ``User-Id``
which key sent it, and binds each rank to the key it joined with: a key holds at most one
rank (a second hello with it is refused, and messages of that key on any other connection
are dropped, both logged), and a rank's messages must come with its key. ``distbp-keys DIR
--workers N`` makes one key per worker. Without CURVE the server binds only to this machine
(loopback, ipc://) unless ``comm.insecure: true`` says that the network is trusted. Lines that
strangers can cause (refusals, foreign keys) are logged at most once per peer every
``LOG_EVERY_S`` seconds, with a count of those held back.

Every worker's numbers are checked: a non-finite loss or gradient stops the job with
``WorkerFault`` naming the worker, before this step's update, so the checkpoint the Trainer
then writes holds the last good step.

Memory. The server holds in Python at most one gradient frame per rank (the step's frames,
until they are summed); anything else is dropped as soon as it is read. libzmq queues at most
``RCVHWM`` messages per connection, each at most a gradient's size (``MAXMSGSIZE``), and then
stops reading that connection (TCP back-pressure); under CURVE only key holders get a
connection past the handshake. At most ``comm.max_connections`` connections are open
(``zmq_connections.ConnectionCap``: one accepted beyond it is shut down at once, one kept is
never cut), so what is queued in complete messages is capped at max_connections x RCVHWM x
MAXMSGSIZE; a multipart message that never ends is not (README.md, CURVE section).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import ipaddress
import math
import os
import socket as pysocket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import numpy as np
import zmq

from .._version import __version__
from ..errors import EXIT_USAGE, DistbpError
from . import wire
from .base import Dropped, MismatchError, PeerLost, Recut, ServerStopped, alongside
from .protocol import Protocol
from .zmq_connections import ConnectionCap

HB_SUFFIX = b"/hb"
RCVHWM = 16  # messages libzmq queues per connection before it stops reading it
CONNECTION_SLACK = 16  # comm.max_connections' default: 2 per worker (comm.max_workers) + this
LOG_EVERY_S = 10.0  # at most one line per peer this often about what strangers send
MAX_TRACKED_PEERS = 256  # peers the rate limit remembers; beyond, they share one count


class InsecureEndpoint(DistbpError, ValueError):
    """The server would listen beyond this machine without CURVE (a config problem: exit 2)."""

    exit_code = EXIT_USAGE


class _WorkerLost(PeerLost):
    """A member is gone (silent past comm.timeout_s, left, or cut off): which, by identity."""

    def __init__(self, identity: bytes, message: str) -> None:
        super().__init__(message)
        self.identity = identity


class WorkerFault(PeerLost):
    """A worker sent numbers the job cannot use (a non-finite loss or gradient). The job stops
    as for a lost worker: this step's update is never applied, so the checkpoint the server's
    Trainer writes is of the last good step; the message names the worker."""


def is_local_endpoint(endpoint: str) -> bool:
    """Whether binding ``endpoint`` serves this machine only: ipc:// and inproc://, or tcp://
    (ws://) on a loopback address or a name that resolves only to loopback addresses."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme not in ("tcp", "ws", "wss"):
        return False
    hostport = rest.split("/", 1)[0]
    host = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
    host = host.strip("[]")
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:  # a host name (or an interface name, which does not resolve: not local)
        infos = pysocket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def fingerprint(public_z85: str | bytes) -> str:
    """A short name for a public key, safe to log: the first 8 hex digits of the SHA-256 of its
    z85 text (the ``public-key`` line of its .key file)."""
    text = public_z85.encode("ascii") if isinstance(public_z85, str) else bytes(public_z85)
    return hashlib.sha256(text).hexdigest()[:8]


def _public_key(path: Path) -> str:
    import zmq.auth

    public, _ = zmq.auth.load_certificate(str(path))
    return public.decode("ascii")


class _ClientKeys:
    """The public keys in DIR/clients, by their z85 text, named by file (``worker-0``). The ZAP
    callback (run by the authenticator's thread) admits these and no other; denials are counted
    here and logged by the server's own thread."""

    def __init__(self, clients: Path) -> None:
        if not clients.is_dir():
            raise FileNotFoundError(f"comm.curve: no directory of client keys {clients}; create keys with "
                                    f"distbp-keys {clients.parent} --workers N")
        self.clients = clients
        self.names: dict[str, str] = {}
        for f in sorted(clients.glob("*.key")):
            try:
                self.names[_public_key(f)] = f.stem
            except (OSError, ValueError, KeyError) as e:
                raise FileNotFoundError(f"comm.curve: {f} is not a CURVE public key file ({e})") from None
        if not self.names:
            raise FileNotFoundError(f"comm.curve: {clients} holds no client key (*.key); create keys with "
                                    f"distbp-keys {clients.parent} --workers N")
        self._lock = threading.Lock()
        self._denied: dict[str, int] = {}

    def callback(self, domain: str, key: bytes) -> bool:
        text = key.decode("ascii", "replace") if isinstance(key, (bytes, bytearray)) else str(key)
        if text in self.names:
            return True
        with self._lock:
            fp = fingerprint(text) if len(self._denied) < MAX_TRACKED_PEERS else "others"
            self._denied[fp] = self._denied.get(fp, 0) + 1
        return False

    def take_denied(self) -> dict[str, int]:
        with self._lock:
            denied, self._denied = self._denied, {}
        return denied

    def label(self, key: str | None) -> str:
        return "none" if key is None else f"{self.names.get(key, '?')} [{fingerprint(key)}]"


def _curve_server(sock: zmq.Socket, ctx: zmq.Context, key_dir: Path) -> tuple[Any, _ClientKeys]:
    """CURVE on the server socket; only clients whose public key is in key_dir/clients are let in."""
    import zmq.auth
    from zmq.auth.thread import ThreadAuthenticator

    secret = key_dir / "server.key_secret"
    if not secret.is_file():
        raise FileNotFoundError(f"comm.curve: no server secret key {secret}; create keys with distbp-keys {key_dir}")
    keys = _ClientKeys(key_dir / "clients")
    public, private = zmq.auth.load_certificate(str(secret))
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=keys)
    sock.curve_secretkey, sock.curve_publickey, sock.curve_server = private, public, True
    return auth, keys


def _curve_client(sock: zmq.Socket, key_dir: Path) -> None:
    import zmq.auth  # a submodule: ``import zmq`` alone does not load it

    server_public = key_dir / "server.key"
    client_secret = key_dir / "client.key_secret"
    if not client_secret.is_file() and (key_dir / "worker-0").is_dir():
        raise FileNotFoundError(f"comm.curve: {key_dir} holds one key per worker: give each worker its own "
                                f"directory, comm.curve={key_dir / 'worker-I'} (I = 0, 1, ...)")
    for f in (server_public, client_secret):
        if not f.is_file():
            raise FileNotFoundError(f"comm.curve: missing key file {f}; create keys with distbp-keys {key_dir}")
    sock.curve_serverkey, _ = zmq.auth.load_certificate(str(server_public))
    sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(str(client_secret))


def make_keys(key_dir: str | Path, workers: int | None = None) -> list[Path]:
    """CURVE key pairs for a parameter-server job (``distbp-keys DIR [--workers N]``).

    Always DIR/server.key{,_secret}: keep server.key_secret on the server, which runs with
    ``comm.curve=DIR`` and admits the public keys in DIR/clients/.

    With ``workers``: one key pair per worker, each in a directory of its own to give to that
    worker alone, DIR/worker-I/{client.key,client.key_secret,server.key} (``comm.curve=DIR/worker-I``),
    and its public key as DIR/clients/worker-I.key. A key admits one worker at a time.

    Without: the single-key layout, DIR/client.key{,_secret} and DIR/clients/client.key,
    for one worker (``comm.curve=DIR``); a second worker with the same key is refused.

    Refuses a DIR that already holds keys (FileExistsError): keys made again would leave the
    old clients admitted."""
    import zmq.auth

    key_dir = Path(key_dir)
    if workers is not None and workers < 1:
        raise ValueError(f"--workers: expected at least 1, got {workers}")
    existing = [p for p in (key_dir / "server.key_secret", key_dir / "clients") if p.exists()]
    if existing:
        raise FileExistsError(f"{key_dir} already holds CURVE keys ({existing[0]}); make a job's keys once, "
                              "in a new directory (remove the old one to replace them)")
    (key_dir / "clients").mkdir(parents=True, exist_ok=True)
    made = []

    def pair(where: Path, name: str) -> tuple[Path, Path]:
        public, secret = zmq.auth.create_certificates(str(where), name)
        os.chmod(secret, 0o600)
        made.extend([Path(public), Path(secret)])
        return Path(public), Path(secret)

    server_public, _ = pair(key_dir, "server")
    if workers is None:
        public, _ = pair(key_dir, "client")
        (key_dir / "clients" / "client.key").write_bytes(public.read_bytes())
        return made
    for i in range(workers):
        own = key_dir / f"worker-{i}"
        own.mkdir()
        public, _ = pair(own, "client")
        (own / "server.key").write_bytes(server_public.read_bytes())
        (key_dir / "clients" / f"worker-{i}.key").write_bytes(public.read_bytes())
        made.append(own / "server.key")
    return made


class _Throttle:
    """Lines that strangers can cause, at most one per peer every ``every`` seconds: the first at
    once, later ones counted and the count given with the next line for that peer (or at close)."""

    def __init__(self, log: Callable[[str], None], every: float = LOG_EVERY_S) -> None:
        self._log, self.every = log, every
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, peer: str, line: str) -> None:
        now = time.monotonic()
        if peer not in self._last and len(self._last) >= MAX_TRACKED_PEERS:
            for p, t in list(self._last.items()):
                if now - t >= self.every and p not in self._held:
                    del self._last[p]
            if len(self._last) >= MAX_TRACKED_PEERS:
                peer = "other peers"
        last = self._last.get(peer)
        if last is not None and now - last < self.every:
            self._held[peer] = self._held.get(peer, 0) + 1
            return
        held = self._held.pop(peer, 0)
        self._last[peer] = now
        if held:
            line += f" ({held} more from {peer} in the last {now - last:.0f} s not logged)"
        self._log(line)

    def flush(self) -> None:
        for peer, n in sorted(self._held.items()):
            self._log(f"{n} more line(s) about {peer} not logged (at most one per peer every {self.every:g} s)")
        self._held.clear()


class _Msg(NamedTuple):
    """One received message: the sender's identity, the frames after it (zmq.Frame), and the
    z85 public key of the connection it came on (CURVE; None without)."""

    identity: bytes
    body: list[Any]
    key: str | None

    def address(self) -> str:
        try:
            return str(self.body[0].get("Peer-Address"))
        except (zmq.ZMQError, AttributeError, IndexError):
            return "?"


class _Peer:
    __slots__ = ("identity", "name", "last_seen", "key")

    def __init__(self, identity: bytes, name: str, key: str | None = None) -> None:
        self.identity, self.name, self.last_seen, self.key = identity, name, time.monotonic(), key


class ZMQServer(Protocol):
    """The coordinator of a parameter-server job: computes no gradient itself."""

    collective = False

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        endpoint = str(cfg["endpoint"])
        if not cfg.get("curve") and not cfg.get("insecure") and not is_local_endpoint(endpoint):
            raise InsecureEndpoint(
                f"comm.endpoint: {endpoint} can be reached from other machines, and without CURVE anyone who "
                "reaches it can join as a worker and change the model; set comm.curve to a key directory "
                "(distbp-keys DIR --workers N), or comm.insecure: true if every machine that can reach this "
                "port is trusted")
        self.cfg = cfg
        self.rank, self.size = 0, int(cfg["workers"])
        # Elastic bounds (docs/ARCHITECTURE.md, "Elastic parameter server"): the job goes on
        # while at least min_workers remain, and admits joiners up to max_workers.
        self.min_workers = int(cfg.get("min_workers") or self.size)
        self.max_workers = int(cfg.get("max_workers") or self.size)
        self.heartbeat_s, self.timeout_s = float(cfg["heartbeat_s"]), float(cfg["timeout_s"])
        self.join_timeout_s = float(cfg["join_timeout_s"])
        # Two connections per worker (its socket and its heartbeats') and room for some joining
        # or reconnecting: docs/ARCHITECTURE.md, "Memory".
        self.max_connections = int(cfg.get("max_connections") or 2 * self.max_workers + CONNECTION_SLACK)
        self._cap: ConnectionCap | None = None
        self._ipc_file: str | None = None
        self._poller: zmq.Poller | None = None
        # The server wakes at least this often even when nothing arrives, so that a launcher
        # watching it (launch/zmq_local.py) can tell a waiting server from a stopped one.
        self._wake_s = min(self.heartbeat_s, self.timeout_s, 1.0)
        self.counters = wire.Counters()
        self.peers: list[_Peer] = []
        self._ctx = zmq.Context()
        self._sock: zmq.Socket | None = None
        self._auth = None
        self._keys: _ClientKeys | None = None
        self._throttle = _Throttle(lambda line: self.log(line))
        self._held: collections.deque[_Msg] = collections.deque()  # workers' messages read during solo()
        self._pending: list[_Peer] = []  # hellos admitted at the next step boundary
        self._losses: list[_WorkerLost] = []  # members lost, handled at the start of the next step
        self._gen = 0  # membership generation: every join or loss moves it on
        self._hash = ""
        self._step = 0
        self._numel = 0
        self._next_heartbeat = 0.0
        self._lost: str | None = None
        self._closed = False

    @property
    def is_coordinator(self) -> bool:
        return True

    # -- joining ----------------------------------------------------------------------------
    def join(self, config_hash: str, numel: int) -> None:
        self._numel, self._hash = numel, config_hash
        endpoint = self.cfg["endpoint"]
        # Kept on self at once: close() must close it even if CURVE set-up or bind fails, or
        # the context's term() would wait for it forever.
        sock = self._sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Nothing larger than a gradient is ever expected: a bigger frame is refused by
        # libzmq before it takes memory here; and few are queued per connection.
        sock.setsockopt(zmq.MAXMSGSIZE, numel * 4 + wire.HEADER_MAX)
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        if self.cfg.get("curve"):
            self._auth, self._keys = _curve_server(sock, self._ctx, Path(self.cfg["curve"]))
        # Before bind: no connection is accepted unseen.
        self._cap = ConnectionCap(sock, self.max_connections, self._refused_connection)
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._cap.monitor, zmq.POLLIN)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as e:
            raise PeerLost(f"comm.endpoint: cannot bind {endpoint}: {e}") from None
        if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
            self._ipc_file = endpoint[len("ipc://"):]  # libzmq leaves the socket file behind at close
        if self._keys is not None:
            security = f"CURVE, {len(self._keys.names)} client key(s) in {self._keys.clients}, one rank per key"
        elif is_local_endpoint(endpoint):
            security = "no CURVE: any process on this machine can join"
        else:
            security = "no CURVE (comm.insecure): anyone who can reach this port can join"
        elastic = (f"; elastic: goes on with {self.min_workers} to {self.max_workers} (comm.min_workers, "
                   "comm.max_workers)") if (self.min_workers, self.max_workers) != (self.size, self.size) else ""
        self.log(f"parameter server on {endpoint} ({security}): waiting for {self.size} worker(s){elastic}")
        deadline = time.monotonic() + self.join_timeout_s
        while len(self.peers) < self.size:
            msg = self._recv(deadline)
            if msg is None:
                if len(self.peers) >= self.min_workers:
                    self.log(f"{len(self.peers)} of {self.size} workers joined within {self.join_timeout_s:g} s "
                             f"(comm.join_timeout_s): starting with them (comm.min_workers {self.min_workers}); "
                             "the others may join later")
                    break
                raise PeerLost(f"only {len(self.peers)} of {self.size} workers joined within "
                               f"{self.join_timeout_s:g} s (comm.join_timeout_s)")
            identity = msg.identity
            if identity.endswith(HB_SUFFIX) or self._rank_of(identity) is not None:
                continue  # an admitted worker's heartbeats (or its hello again) while the others join
            header = self._decode(msg.body, {"type": "hello"}, identity)
            if header is None:
                continue
            name = self._name(header)
            differs = self._hello_differs(msg, header)
            if differs:
                self._refuse(msg, name, "; ".join(differs))
                continue
            rank = len(self.peers)
            try:
                self._send(identity, "welcome", rank=rank, world=self.size, step=0)
            except PeerLost:
                self.log(f"worker {name} left before it was admitted")
                continue
            self._joined(_Peer(identity, name, msg.key))
        self.size = len(self.peers)

    @staticmethod
    def _name(hello: dict[str, Any]) -> str:
        return f"{hello.get('host', '?')}:{hello.get('pid', '?')}"

    def _hello_differs(self, msg: _Msg, header: dict[str, Any]) -> list[str]:
        """Why a hello cannot be admitted (empty when it can): version, config hash, parameter
        count, and under CURVE a key that already holds a rank (or waits to)."""
        differs = [f"{what}: worker {theirs!r}, server {ours!r}" for what, theirs, ours in (
            ("distbp version", header["version"], __version__),
            ("config hash", header["config_hash"], self._hash),
            ("parameter count", header["numel"], self._numel)) if theirs != ours]
        holder = self._holder(msg.key)
        if holder is not None:
            differs.insert(0, self._key_in_use(msg.key, holder))
        elif self._keys is not None and msg.key is None:
            differs.insert(0, "its connection has no CURVE key")  # never under ZAP; and never admitted
        elif msg.key is not None and any(p.key == msg.key for p in self._pending):
            differs.insert(0, f"its key {self._keys.label(msg.key)} is already waiting to join with another "
                              "connection; a key admits one worker at a time")
        return differs

    def _joined(self, peer: _Peer) -> None:
        self.peers.append(peer)
        rank = len(self.peers) - 1
        if self._keys is not None:
            self.log(f"worker {rank} ({peer.name}) holds key {self._keys.label(peer.key)}")
        self.log(f"worker {rank} joined: {peer.name}")

    def _holder(self, key: str | None) -> int | None:
        """The rank that ``key`` holds, if any (CURVE only)."""
        if key is None:
            return None
        return next((r for r, p in enumerate(self.peers) if p.key == key), None)

    def _key_in_use(self, key: str | None, holder: int) -> str:
        return (f"its key {self._keys.label(key)} already holds rank {holder} ({self.peers[holder].name}); a key "
                "admits one worker at a time: give each worker its own (distbp-keys DIR --workers N)")

    def _peer(self, msg: _Msg) -> str:
        """Who a message came from, for the rate limit: its key under CURVE, else its address."""
        return f"key {self._keys.label(msg.key)}" if self._keys is not None else msg.address()

    def _refuse(self, msg: _Msg, name: str, reason: str) -> None:
        key = f", key {self._keys.label(msg.key)}" if self._keys is not None else ""
        self._throttle(self._peer(msg), f"refused worker {name}: {reason} (from {msg.address()}{key})")
        try:
            self._send(msg.identity, "refuse", reason=reason[:2000])
        except PeerLost:
            pass  # it has gone already: a stranger that hangs up must not end the job

    def _stranger(self, msg: _Msg) -> None:
        """A message from a connection that holds no rank, while the job runs: a hello that
        passes the checks waits to join at the next step boundary while there is room
        (comm.max_workers); anything else is dropped."""
        holder = self._holder(msg.key)
        try:
            header, _ = wire.decode(msg.body, {"type": "hello"})
        except wire.WireError:
            header = None
        if holder is not None and header is None:
            # A second connection with a key that holds a rank: dropped, and said so.
            self._dropped("key-in-use", msg.identity, log=False)
            self._throttle(self._peer(msg), f"dropped a message from {msg.address()} on a second connection "
                                            f"of key {self._keys.label(msg.key)}, which holds rank {holder} "
                                            f"({self.peers[holder].name})")
            return
        if header is None or msg.identity.endswith(HB_SUFFIX):
            self._dropped("unknown-sender", msg.identity)
            return
        if any(p.identity == msg.identity for p in self._pending):
            return  # its hello again: it waits already
        self.counters.accept("hello")
        name = self._name(header)
        differs = self._hello_differs(msg, header)
        if holder is not None:
            self._dropped("key-in-use", msg.identity, log=False)
        elif not differs and len(self.peers) + len(self._pending) >= self.max_workers:
            self._dropped("unknown-sender", msg.identity, log=False)
            differs = [f"the job already has its {self.max_workers} worker(s) (comm.max_workers)"]
        if differs:
            self._refuse(msg, name, "; ".join(differs))
            return
        self._pending.append(_Peer(msg.identity, name, msg.key))
        self.log(f"worker {name} asks to join: admitted at the next step boundary")

    def _admit_waiting(self, step: int, params: np.ndarray) -> set[bytes]:
        """Workers that asked to join during the step join before the next: each gets a
        welcome, then the current parameters and its slice (``start``); their identities."""
        waiting, self._pending = self._pending, []
        ready = []
        for peer in waiting:
            try:
                self._send(peer.identity, "welcome", rank=len(self.peers) + len(ready),
                           world=len(self.peers) + len(waiting), step=step)
                ready.append(peer)
            except PeerLost:
                self.log(f"worker {peer.name} left before it was admitted")
        if not ready:
            return set()
        self._gen += 1
        for peer in ready:
            self._joined(peer)
        self.size = len(self.peers)
        self.log(f"world size {self.size} from step {step + 1}")
        for peer in ready:
            peer.last_seen = time.monotonic()
            try:
                self._send(peer.identity, "start", params, step=step, rank=self._rank_of(peer.identity),
                           world=self.size, gen=self._gen)
            except _WorkerLost as e:
                self._losses.append(e)  # the next step re-cuts without it
        return {p.identity for p in ready}

    def _leave(self, lost: "_WorkerLost", step: int) -> None:
        """A worker is gone during ``step`` (0-based): the job goes on without it while at least
        comm.min_workers remain, the step's global batch re-cut among them (``recut``); below
        that it ends (PeerLost), as a fail-stop job does."""
        rank = self._rank_of(lost.identity)
        if rank is None:
            return  # already gone
        left = len(self.peers) - 1
        if left < self.min_workers:
            raise PeerLost(f"{lost}; {left} worker(s) left, fewer than comm.min_workers ({self.min_workers})") from None
        peer = self.peers.pop(rank)
        self._gen += 1
        self.size = left
        self.log(f"{lost}: the job goes on without it; world size {left} from step {step + 1}, which is "
                 "computed again by the workers left")
        with contextlib.suppress(zmq.ZMQError):  # it may be alive (stopped, cut off): it may rejoin
            self._sock.send_multipart([peer.identity, *wire.encode("drop", reason=str(lost)[:1000])],
                                      flags=zmq.NOBLOCK)
        now = time.monotonic()
        for r, p in enumerate(self.peers):
            p.last_seen = now  # the step's work starts again: so does its deadline
            self._send(p.identity, "recut", step=step, rank=r, world=left, gen=self._gen)

    def start(self, step: int | None, load: Callable[[int], None], params: np.ndarray,
              state: Callable[[], list[np.ndarray]]) -> int:
        """Every worker gets the parameters to start from, the step and its slice (``start``).
        The optimizer and its state live here only, and this server chose the checkpoint."""
        self._step = 0 if step is None else step
        for r, peer in enumerate(self.peers):
            self._send(peer.identity, "start", params, step=self._step, rank=r, world=self.size, gen=self._gen)
        now = time.monotonic()
        for peer in self.peers:
            peer.last_seen = now
        return self._step

    def slice_of(self, batch: int) -> tuple[int, int]:
        return 0, 0  # the workers compute every gradient; the server sums them

    # -- one step ---------------------------------------------------------------------------
    def step(self, grad: np.ndarray, params: np.ndarray, update: Callable[[], None],
             stats: np.ndarray) -> np.ndarray:
        step = self._step
        if self._lost is not None:
            raise PeerLost(self._lost)
        while True:
            try:
                while self._losses:  # lost between steps, or just now
                    self._leave(self._losses.pop(0), step)
                frames, losses, stops = self._collect(grad, step)
                break
            except _WorkerLost as e:
                self._losses.append(e)
        # Every worker's numbers are checked before any of them is used: the step that would
        # apply them never happens, so the checkpoint written on the way out is the last good one.
        bad = [r for r in range(self.size) if not math.isfinite(losses[r])]
        if bad:
            raise WorkerFault(self._fault(bad, "loss", step, [f"{losses[r]}" for r in bad]))
        out = np.array([stats[0] + losses.sum(), max(stats[1], stops.max()), float(self.size)])
        try:
            update()  # the Trainer's: it refuses a non-finite sum before the optimizer runs
        except Exception:
            # Only now, on the way out, is each worker's gradient read again to find whose it was.
            bad = [r for r, f in enumerate(frames) if not _all_finite(f, grad.dtype)]
            if bad:
                raise WorkerFault(self._fault(bad, "gradient", step)) from None
            raise
        finally:
            del frames
        self._step = step + 1
        joined = self._admit_waiting(step + 1, params) if self._pending else set()
        for r, peer in enumerate(self.peers):
            if peer.identity in joined:
                continue  # it has the parameters already, in its start
            try:
                self._send(peer.identity, "params", params, step=step + 1, rank=r, world=self.size, gen=self._gen,
                           loss=float(out[0]), stop=int(out[1] > 0))
            except _WorkerLost as e:
                # Handled at the next step, once the Trainer has counted this one as finished, so
                # that a checkpoint it then writes holds the parameters it names.
                self._losses.append(e)
        return out

    def _collect(self, grad: np.ndarray, step: int) -> tuple[list[Any], np.ndarray, np.ndarray]:
        """Every worker's gradient frame, loss and stop flag for ``step``, in rank order, and
        their sum in ``grad``."""
        frames: list[Any] = [None] * self.size
        summed = 0  # frames[:summed] are in grad
        losses = np.zeros(self.size)
        stops = np.zeros(self.size)
        expect = {"nbytes": grad.nbytes, "dtype": "float32", "step": step}
        while any(f is None for f in frames):
            msg = self._recv(self._deadline(step))
            if msg is None:
                continue  # _deadline raises once a worker has been silent too long
            rank = self._rank_of(msg.identity)
            if rank is None:
                self._stranger(msg)
                continue
            peer = self.peers[rank]
            if self._keys is not None and msg.key != peer.key:
                self._dropped("wrong-key", msg.identity, log=False)
                self._throttle(self._peer(msg), f"dropped a message from {msg.address()} that names worker {rank}'s "
                                                f"connection but comes with key {self._keys.label(msg.key)}, not "
                                                f"its key {self._keys.label(peer.key)}")
                continue
            peer.last_seen = time.monotonic()
            # One check for all three: expect's step and nbytes apply to the fields a message has.
            try:
                header, _ = wire.decode(msg.body, dict(expect, type={"grad", "heartbeat", "bye"}))
                if header["type"] == "grad" and header["gen"] != self._gen:
                    self.counters.drop("stale")  # cut for the workers before a re-cut: computed again
                    continue
                if header["type"] == "grad" and header["rank"] != rank:
                    raise wire.WireError("mismatch", f"wrong rank {header['rank']}, expected {rank}")
            except wire.WireError as e:
                self._dropped(e, msg.identity)
                continue
            self.counters.accept(header["type"])
            if header["type"] == "heartbeat":
                continue
            if header["type"] == "bye":
                raise _WorkerLost(peer.identity, f"worker {rank} ({peer.name}) left during step {step + 1}")
            if frames[rank] is not None:
                self._dropped("duplicate", msg.identity)
                continue
            frames[rank] = msg.body[1]
            losses[rank] = header["loss"]
            stops[rank] = header.get("stop", 0)
            summed = _sum_in_rank_order(grad, frames, summed)
        return frames, losses, stops

    def _fault(self, ranks: list[int], what: str, step: int, values: list[str] | None = None) -> str:
        def who(r: int) -> str:
            key = f", key {self._keys.label(self.peers[r].key)}" if self._keys is not None else ""
            return f"{r} ({self.peers[r].name}{key})"

        shown = f" ({', '.join(values)})" if values else ""
        if len(ranks) == 1:
            sent = f"worker {who(ranks[0])} sent a non-finite {what}{shown}"
        else:
            plural = "losses" if what == "loss" else f"{what}s"
            sent = f"workers {', '.join(who(r) for r in ranks)} sent non-finite {plural}{shown}"
        return (f"{sent} for step {step + 1}; the job stops after step {step}, the last good one "
                "(this step's update is not applied)")

    def check(self, params: np.ndarray, step: int) -> None:
        pass  # one copy of the parameters, this one: workers get them in every params message

    def agree_stop(self, stop: bool) -> bool:
        # The server decides; the workers hear it as a stop with exit code 0 (a normal end).
        if stop:
            self.leave("early stopping", 0)
        return stop

    def leave(self, message: str, code: int) -> None:
        """Tell every worker the job is over (they exit with ``code``)."""
        if self._sock is None or self._closed:
            return
        for peer in self.peers:
            try:
                self._send(peer.identity, "stop", reason=message[:1000], code=code)
            except PeerLost:
                pass  # that worker is the one gone: the others must still hear of it

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._note_denied()
        self._throttle.flush()
        self.log(f"messages: {self.counters.summary()}")  # always: the load test counts from it
        for peer in self._pending:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.send_multipart([peer.identity, *wire.encode(
                    "refuse", reason="the job ended before this worker could join")], flags=zmq.NOBLOCK)
        if self._cap is not None:
            self._cap.close()
        if self._sock is not None:
            self._sock.close(linger=2000)
        if self._ipc_file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._ipc_file)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    # -- plumbing ---------------------------------------------------------------------------
    def _rank_of(self, identity: bytes) -> int | None:
        base = identity[:-len(HB_SUFFIX)] if identity.endswith(HB_SUFFIX) else identity
        for r, peer in enumerate(self.peers):
            if peer.identity == base:
                return r
        return None

    def _heartbeat_if_due(self, now: float, step: int) -> None:
        if now >= self._next_heartbeat:
            for peer in self.peers:
                self._send(peer.identity, "heartbeat", rank=0, step=step)
            self._next_heartbeat = now + self.heartbeat_s

    def _deadline(self, step: int) -> float:
        now = time.monotonic()
        self._heartbeat_if_due(now, step)
        for r, peer in enumerate(self.peers):
            if now - peer.last_seen > self.timeout_s:
                raise _WorkerLost(peer.identity, f"worker {r} ({peer.name}) silent for {self.timeout_s:g} s "
                                                 f"(comm.timeout_s) during step {step + 1}")
        return min(self._next_heartbeat, min(p.last_seen for p in self.peers) + self.timeout_s)

    @contextlib.contextmanager
    def solo(self) -> Iterator[None]:
        """Evaluation and checkpoints, alone between steps: meanwhile a thread services the
        socket, so the workers hear heartbeats (a long evaluation is not a dead server),
        strangers' messages are read and dropped as they come (nothing piles up in libzmq's
        queues), and the workers' own messages are kept, in order, for the step that reads them."""
        if self._sock is None or not self.peers or self._lost is not None or self._losses:
            yield
            return
        with alongside(self._service, "distbp-server-solo"):
            yield

    def _service(self, stop: threading.Event) -> None:
        limit = 2 * RCVHWM * len(self.peers)  # a worker sends one gradient per step, and heartbeats
        try:
            while not stop.is_set():
                self._heartbeat_if_due(time.monotonic(), self._step)
                if not self._poll(50):
                    continue
                msg = self._read()
                rank = self._rank_of(msg.identity)
                if rank is None:
                    self._stranger(msg)
                    continue
                self.peers[rank].last_seen = time.monotonic()  # alive; its message is checked when read
                if len(self._held) >= limit:
                    self._dropped("held-overflow", self._held.popleft().identity)
                self._held.append(msg)
        except _WorkerLost as e:
            self._losses.append(e)  # the next step goes on without it, or ends the job
        except PeerLost as e:
            self._lost = str(e)  # the next step reports it

    def _recv(self, deadline: float) -> _Msg | None:
        """The next message, or None at ``deadline``; wakes every ``_wake_s`` meanwhile."""
        if self._held:
            return self._held.popleft()
        while True:
            self._note_denied()
            wait = min(max(deadline - time.monotonic(), 0.0), self._wake_s)
            if self._poll(math.ceil(wait * 1000)):
                break
            if time.monotonic() >= deadline:
                return None
        return self._read()

    def _poll(self, timeout_ms: int) -> bool:
        """Whether a message waits on the socket, within ``timeout_ms``; connections accepted
        meanwhile are counted, and cut over the cap, as they come."""
        ready = dict(self._poller.poll(timeout_ms))
        if self._cap.monitor in ready:
            self._cap.service()
        return self._sock in ready

    def _refused_connection(self, count: int) -> None:
        self._throttle("connections over the cap", f"refused a connection: {self.max_connections} are open "
                       f"(comm.max_connections); {count} refused so far. The workers connected keep theirs; "
                       "one that joins or reconnects now is refused too")

    def _read(self) -> _Msg:
        frames = self._sock.recv_multipart(copy=False)
        key = None
        if self._keys is not None:
            try:
                key = frames[0].get("User-Id")  # set by ZAP: the key this connection proved it holds
            except zmq.ZMQError:
                key = None
        return _Msg(frames[0].bytes, frames[1:], key)

    def _note_denied(self) -> None:
        """Log (rate-limited) the connections ZAP refused since the last call."""
        if self._keys is None:
            return
        denied = self._keys.take_denied()
        if denied:
            shown = ", ".join(sorted(denied)[:3]) + (", ..." if len(denied) > 3 else "")
            self._throttle("unknown keys", f"refused {sum(denied.values())} connection(s) with a CURVE key not in "
                                           f"{self._keys.clients} (fingerprints {shown})")

    def _decode(self, body: list[Any], expect: dict[str, Any], identity: bytes) -> dict[str, Any] | None:
        try:
            header, _ = wire.decode(body, expect)
        except wire.WireError as e:
            self._dropped(e, identity)
            return None
        self.counters.accept(header["type"])
        return header

    def _dropped(self, error: wire.WireError | str, identity: Any, log: bool = True) -> None:
        self.counters.drop(error)
        reason = error.reason if isinstance(error, wire.WireError) else error
        # The first few of each kind are logged; a flood is counted and summed up at the end.
        if log and self.counters.dropped[reason] <= 5:
            self.log(f"dropped a message from {bytes(identity)[:32]!r}: {error}")

    def _send(self, identity: bytes, type_: str, payload: np.ndarray | None = None, **fields: Any) -> None:
        try:
            self._sock.send_multipart([identity, *wire.encode(type_, payload, **fields)], copy=False)
        except zmq.ZMQError as e:  # ROUTER_MANDATORY: that worker is gone
            rank = self._rank_of(identity)
            if rank is not None:
                raise _WorkerLost(self.peers[rank].identity,
                                  f"worker {rank} ({self.peers[rank].name}) is gone: cannot send to it ({e})") from None
            raise PeerLost(f"peer {identity[:32]!r} is gone: cannot send to it ({e})") from None


def _sum_in_rank_order(grad: np.ndarray, frames: list[Any], summed: int) -> int:
    """Adds to ``grad`` the frames that follow ``frames[:summed]`` without a gap; returns the new
    count. Rank order whatever the arrival order (the same sum bit for bit, run after run), each
    frame added as soon as those before it are in, so the sum hides behind waiting for the last."""
    if summed == 0:
        if frames[0] is None or (len(frames) > 1 and frames[1] is None):
            return 0  # the first two go in together: one pass instead of a copy and an add
        if len(frames) == 1:
            wire.copy_into(grad, frames[0])
            return 1
        wire.sum_into(grad, frames[0], frames[1])
        summed = 2
    while summed < len(frames) and frames[summed] is not None:
        wire.add_into(grad, frames[summed])
        summed += 1
    return summed


def _all_finite(payload: Any, dtype: np.dtype) -> bool:
    """Whether a received array frame holds no NaN or infinity (read in place)."""
    values = np.frombuffer(memoryview(payload), dtype=dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        squares = np.dot(values, values)
    return bool(np.isfinite(squares) or np.isfinite(values).all())


class ZMQWorker(Protocol):
    """A worker of a parameter-server job: computes its slice's gradient, receives parameters."""

    collective = False

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.rank, self.size = 0, 1
        self._gen = 0  # the server's membership generation this worker's slice was cut for
        self.heartbeat_s, self.timeout_s = float(cfg["heartbeat_s"]), float(cfg["timeout_s"])
        self.join_timeout_s = float(cfg["join_timeout_s"])
        self.name = f"{pysocket.gethostname()}:{os.getpid()}"
        self.identity = f"w-{uuid.uuid4().hex[:12]}".encode()
        self._ctx = zmq.Context()
        self._sock = self._connect(self.identity)
        self._step = 0
        self._hb_stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        self._admitted = False
        self._dropped = False
        self._closed = False

    @property
    def admitted(self) -> bool:
        """Whether the server has given this worker a rank (its hello was accepted)."""
        return self._admitted

    @property
    def is_coordinator(self) -> bool:
        return False

    def _connect(self, identity: bytes) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity)
        sock.setsockopt(zmq.LINGER, 1000)
        if self.cfg.get("curve"):
            _curve_client(sock, Path(self.cfg["curve"]))
        sock.connect(self.cfg["endpoint"])
        return sock

    def join(self, config_hash: str, numel: int) -> None:
        self._send(wire.encode("hello", version=__version__, config_hash=config_hash, numel=numel,
                               host=pysocket.gethostname(), pid=os.getpid()), self.join_timeout_s, "its hello")
        header, _ = self._wait({"welcome": None, "refuse": None}, self.join_timeout_s, "to admit this worker")
        if header["type"] == "refuse":
            raise MismatchError(f"the server refused this worker: {header['reason']}")
        self.rank, self.size = header["rank"], header["world"]
        self._admitted = True
        self._hb_thread = threading.Thread(target=self._heartbeats, name="distbp-heartbeat", daemon=True)
        self._hb_thread.start()

    def start(self, step: int | None, load: Callable[[int], None], params: np.ndarray,
              state: Callable[[], list[np.ndarray]]) -> int:
        """The server's parameters, step and this worker's slice (``start``); the server owns
        the optimizer, so there is no state to receive and no checkpoint to read."""
        header, payload = self._wait({"start": None}, self.join_timeout_s, "to send the starting parameters")
        if len(payload) != params.nbytes:
            raise MismatchError(f"the server's parameters have {len(payload)} bytes, this worker's model "
                                f"{params.nbytes}")
        wire.copy_into(params, payload)
        self._step = header["step"]
        self._slice(header)
        return self._step

    def _slice(self, header: dict[str, Any]) -> None:
        """This worker's slice from now on, as the server's start, params or recut says."""
        self.rank, self.size, self._gen = header["rank"], header["world"], header["gen"]

    def step(self, grad: np.ndarray, params: np.ndarray, update: Callable[[], None],
             stats: np.ndarray) -> np.ndarray:
        step = self._step
        self._send(wire.encode("grad", grad, step=step, rank=self.rank, gen=self._gen, loss=float(stats[0]),
                               stop=int(stats[1] > 0)), self.timeout_s, f"the gradient of step {step + 1}")
        header, payload = self._wait({"params": {"step": step + 1, "nbytes": params.nbytes}, "recut": {"step": step}},
                                     self.timeout_s, f"the parameters of step {step + 1}")
        self._slice(header)
        if header["type"] == "recut":
            raise Recut()  # a worker was lost: this step again, with the slice just set
        wire.copy_into(params, payload)
        self._step = step + 1
        return np.array([header.get("loss", 0.0), float(header.get("stop", 0)), float(self.size)])

    def check(self, params: np.ndarray, step: int) -> None:
        pass  # its parameters are the server's, received every step: nothing of its own to drift

    def agree_stop(self, stop: bool) -> bool:
        return False  # the server's stop message (code 0) ends this worker's loop

    def _send(self, frames: list[Any], timeout_s: float, what: str) -> None:
        # A DEALER's send blocks while it has no connection to queue on (one whose CURVE
        # handshake was refused has none): a deadline here too, or a refused worker hangs.
        self._sock.setsockopt(zmq.SNDTIMEO, max(1, int(timeout_s * 1000)))
        try:
            self._sock.send_multipart(frames, copy=False)
        except zmq.Again:
            raise PeerLost(f"the server at {self.cfg['endpoint']} took nothing for {timeout_s:g} s while this "
                           f"worker sent it {what}") from None

    def _wait(self, types: dict[str, dict[str, Any] | None], timeout_s: float, what: str) -> tuple[dict[str, Any], Any]:
        """The next message of one of ``types`` (type -> what its fields must be); a heartbeat
        from the server renews the deadline, a stop ends the job, a drop this worker's part in
        it, garbage is dropped."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000), zmq.POLLIN):
                raise PeerLost(f"the server at {self.cfg['endpoint']} sent nothing for {timeout_s:g} s "
                               f"while this worker waited for it {what}")
            frames = self._sock.recv_multipart(copy=False)
            try:
                header, payload = wire.decode(frames, {"type": set(types) | {"heartbeat", "stop", "drop"}})
                if types.get(header["type"]):
                    wire.decode(frames, types[header["type"]])
            except wire.WireError as e:
                self.log(f"distbp worker {self.rank}: dropped a message from the server: {e}")
                continue
            if header["type"] == "heartbeat":
                deadline = time.monotonic() + timeout_s
                continue
            if header["type"] == "stop":
                raise ServerStopped(header["reason"], header["code"])
            if header["type"] == "drop":
                self._dropped = True
                raise Dropped(f"the server at {self.cfg['endpoint']} goes on without this worker (rank "
                              f"{self.rank}): {header['reason']}")
            return header, payload

    def _heartbeats(self) -> None:
        # Its own socket: zmq sockets are not thread-safe, and the main one is busy computing.
        sock = self._connect(self.identity + HB_SUFFIX)
        try:
            while not self._hb_stop.wait(self.heartbeat_s):
                try:  # never blocks: a heartbeat that cannot be queued now is skipped
                    sock.send_multipart(wire.encode("heartbeat", rank=self.rank), flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
        finally:
            sock.close(linger=0)

    def leave(self, message: str, code: int) -> None:
        if self._admitted and not self._dropped and not self._closed:  # a refused or dropped one has nobody to tell
            try:
                self._sock.send_multipart(wire.encode("bye", rank=self.rank), flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hb_stop.set()
        if self._hb_thread is not None:
            self._hb_thread.join(timeout=2 * self.heartbeat_s + 1)
        self._sock.close(linger=1000)
        self._ctx.term()
