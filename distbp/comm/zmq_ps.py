"""The ZeroMQ parameter server and its workers.

The server (``comm.role: server``) owns the parameters and the optimizer: every step it
receives each worker's gradient sum, adds them in rank order (so the result does not depend
on arrival order), lets the Trainer apply the optimizer, and sends the new parameters back.
Workers (``comm.role: worker``) join with a hello carrying their config hash, parameter count
and distbp version; the server assigns ranks in joining order, so identical worker containers
can be scaled. One ROUTER socket on the server, one DEALER per worker (and one more per
worker for heartbeats, so a long step never looks like a dead worker). Every receive has a
deadline; messages are validated by ``wire`` and a bad one is dropped, counted and logged.
"""

from __future__ import annotations

import os
import socket as pysocket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import zmq

from .._version import __version__
from . import wire
from .base import Communicator, MismatchError, PeerLost, ServerStopped

HB_SUFFIX = b"/hb"


def _curve_server(sock: zmq.Socket, ctx: zmq.Context, key_dir: Path) -> Any:
    """CURVE on the server socket; only clients whose public key is in key_dir/clients are let in."""
    from zmq.auth.thread import ThreadAuthenticator

    secret = key_dir / "server.key_secret"
    if not secret.is_file():
        raise FileNotFoundError(f"comm.curve: no server secret key {secret}; create keys with distbp-keys {key_dir}")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(key_dir / "clients"))
    public, private = zmq.auth.load_certificate(str(secret))
    sock.curve_secretkey, sock.curve_publickey, sock.curve_server = private, public, True
    return auth


def _curve_client(sock: zmq.Socket, key_dir: Path) -> None:
    import zmq.auth  # a submodule: ``import zmq`` alone does not load it

    server_public = key_dir / "server.key"
    client_secret = key_dir / "client.key_secret"
    for f in (server_public, client_secret):
        if not f.is_file():
            raise FileNotFoundError(f"comm.curve: missing key file {f}; create keys with distbp-keys {key_dir}")
    sock.curve_serverkey, _ = zmq.auth.load_certificate(str(server_public))
    sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(str(client_secret))


def make_keys(key_dir: str | Path) -> list[Path]:
    """Write a server key pair and a client key pair for CURVE (``distbp-keys DIR``):
    DIR/server.key{,_secret}, DIR/client.key{,_secret}, and DIR/clients/client.key, the
    directory of public keys the server admits. Give workers server.key and
    client.key_secret; keep server.key_secret on the server."""
    import zmq.auth

    key_dir = Path(key_dir)
    (key_dir / "clients").mkdir(parents=True, exist_ok=True)
    made = []
    for name in ("server", "client"):
        public, secret = zmq.auth.create_certificates(str(key_dir), name)
        os.chmod(secret, 0o600)
        made += [Path(public), Path(secret)]
    (key_dir / "clients" / "client.key").write_bytes((key_dir / "client.key").read_bytes())
    return made


class _Peer:
    __slots__ = ("identity", "name", "last_seen")

    def __init__(self, identity: bytes, name: str) -> None:
        self.identity, self.name, self.last_seen = identity, name, time.monotonic()


class ZMQServer(Communicator):
    """The coordinator of a parameter-server job: computes no gradient itself."""

    computes_gradients = False
    collective = False

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.rank, self.size = 0, int(cfg["workers"])
        self.heartbeat_s, self.timeout_s = float(cfg["heartbeat_s"]), float(cfg["timeout_s"])
        self.join_timeout_s = float(cfg["join_timeout_s"])
        self.counters = wire.Counters()
        self.peers: list[_Peer] = []
        self._ctx = zmq.Context()
        self._sock: zmq.Socket | None = None
        self._auth = None
        self._step = 0
        self._numel = 0
        self._next_heartbeat = 0.0
        self._lost: str | None = None
        self._closed = False

    @property
    def is_coordinator(self) -> bool:
        return True

    # -- joining ----------------------------------------------------------------------------
    def handshake(self, config_hash: str, numel: int) -> None:
        self._numel = numel
        # Kept on self at once: close() must close it even if CURVE set-up or bind fails, or
        # the context's term() would wait for it forever.
        sock = self._sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Nothing larger than a gradient is ever expected: a bigger frame is refused by
        # libzmq before it takes memory here.
        sock.setsockopt(zmq.MAXMSGSIZE, numel * 4 + wire.HEADER_MAX)
        if self.cfg.get("curve"):
            self._auth = _curve_server(sock, self._ctx, Path(self.cfg["curve"]))
        try:
            sock.bind(self.cfg["endpoint"])
        except zmq.ZMQError as e:
            raise PeerLost(f"comm.endpoint: cannot bind {self.cfg['endpoint']}: {e}") from None
        self.log(f"parameter server on {self.cfg['endpoint']}: waiting for {self.size} worker(s)")
        deadline = time.monotonic() + self.join_timeout_s
        while len(self.peers) < self.size:
            frames = self._recv(deadline)
            if frames is None:
                raise PeerLost(f"only {len(self.peers)} of {self.size} workers joined within "
                               f"{self.join_timeout_s:g} s (comm.join_timeout_s)")
            identity, body = frames[0], frames[1:]
            if any(p.identity == identity for p in self.peers) or identity.endswith(HB_SUFFIX):
                continue
            header = self._decode(body, {"type": "hello"}, identity)
            if header is None:
                continue
            name = f"{header.get('host', '?')}:{header.get('pid', '?')}"
            differs = [f"{what}: worker {theirs!r}, server {ours!r}" for what, theirs, ours in (
                ("distbp version", header["version"], __version__),
                ("config hash", header["config_hash"], config_hash),
                ("parameter count", header["numel"], numel)) if theirs != ours]
            if differs:
                reason = "; ".join(differs)
                self.log(f"refused worker {name}: {reason}")
                try:
                    self._send(identity, "refuse", reason=reason)
                except PeerLost:
                    pass  # it has gone already: a stranger that hangs up must not end the job
                continue
            rank = len(self.peers)
            try:
                self._send(identity, "welcome", rank=rank, world=self.size, step=0)
            except PeerLost:
                self.log(f"worker {name} left before it was admitted")
                continue
            self.peers.append(_Peer(identity, name))
            self.log(f"worker {rank} joined: {name}")

    def agree_u64(self, value: int) -> int:
        self._step = max(int(value) - 1, 0)
        return int(value)

    def check_same(self, what: str, value: int, hint: str = "") -> None:
        pass  # the hello compared config hash, parameter count and version

    def broadcast_state_(self, arrays: list[np.ndarray]) -> None:
        pass  # the optimizer lives here only

    def broadcast_(self, flat: np.ndarray, root: int = 0) -> np.ndarray:
        for peer in self.peers:
            self._send(peer.identity, "start", flat, step=self._step)
        now = time.monotonic()
        for peer in self.peers:
            peer.last_seen = now
        return flat

    # -- one step ---------------------------------------------------------------------------
    def sync_step(self, grad: np.ndarray, params: np.ndarray, update: Callable[[], None],
                  stats: np.ndarray) -> np.ndarray:
        step = self._step
        if self._lost is not None:
            raise PeerLost(self._lost)
        frames: list[Any] = [None] * self.size
        losses = np.zeros(self.size)
        stops = np.zeros(self.size)
        expect = {"nbytes": grad.nbytes, "dtype": "float32", "step": step}
        while any(f is None for f in frames):
            msg = self._recv(self._deadline(step))
            if msg is None:
                continue  # _deadline raises once a worker has been silent too long
            rank = self._rank_of(msg[0])
            if rank is None:
                self._dropped("unknown-sender", msg[0])
                continue
            self.peers[rank].last_seen = time.monotonic()
            # One check for all three: expect's step and nbytes apply to the fields a message has.
            header = self._decode(msg[1:], dict(expect, type={"grad", "heartbeat", "bye"}, rank=rank), msg[0])
            if header is None or header["type"] == "heartbeat":
                continue
            if header["type"] == "bye":
                raise PeerLost(f"worker {rank} ({self.peers[rank].name}) left during step {step + 1}")
            if frames[rank] is not None:
                self._dropped("duplicate", msg[0])
                continue
            frames[rank] = msg[2]
            losses[rank] = header["loss"]
            stops[rank] = header.get("stop", 0)
        # Rank order, whatever the arrival order: the same sum bit for bit, run after run.
        wire.copy_into(grad, frames[0])
        for f in frames[1:]:
            wire.add_into(grad, f)
        del frames
        out = np.array([stats[0] + losses.sum(), max(stats[1], stops.max())])
        update()
        self._step = step + 1
        try:
            for peer in self.peers:
                self._send(peer.identity, "params", params, step=step + 1, loss=float(out[0]), stop=int(out[1] > 0))
        except PeerLost as e:
            # Reported at the next step, once the Trainer has counted this one as finished, so
            # the checkpoint it then writes holds the parameters it names.
            self._lost = str(e)
        return out

    def check_replicas(self, params: np.ndarray, step: int) -> None:
        pass  # workers hold no parameters of their own: the server sends them every step

    def agree_stop(self, stop: bool) -> bool:
        # The server decides; the workers hear it as a stop with exit code 0 (a normal end).
        if stop:
            self.fail("early stopping", 0)
        return stop

    def fail(self, message: str, code: int) -> None:
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
        self.log(f"messages: {self.counters.summary()}")  # always: the load test counts from it
        if self._sock is not None:
            self._sock.close(linger=2000)
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

    def _deadline(self, step: int) -> float:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            for peer in self.peers:
                self._send(peer.identity, "heartbeat", rank=0, step=step)
            self._next_heartbeat = now + self.heartbeat_s
        for r, peer in enumerate(self.peers):
            if now - peer.last_seen > self.timeout_s:
                raise PeerLost(f"worker {r} ({peer.name}) silent for {self.timeout_s:g} s "
                               f"(comm.timeout_s) during step {step + 1}")
        return min(self._next_heartbeat, min(p.last_seen for p in self.peers) + self.timeout_s)

    def _recv(self, deadline: float) -> list[Any] | None:
        timeout_ms = max(0, int((deadline - time.monotonic()) * 1000))
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return None
        frames = self._sock.recv_multipart(copy=False)
        frames[0] = frames[0].bytes  # the sender's identity; the body stays zero-copy
        return frames

    def _decode(self, body: list[Any], expect: dict[str, Any], identity: bytes) -> dict[str, Any] | None:
        try:
            header, _ = wire.decode(body, expect)
        except wire.WireError as e:
            self._dropped(e, identity)
            return None
        self.counters.accept(header["type"])
        return header

    def _dropped(self, error: wire.WireError | str, identity: Any) -> None:
        self.counters.drop(error)
        reason = error.reason if isinstance(error, wire.WireError) else error
        # The first few of each kind are logged; a flood is counted and summed up at the end.
        if self.counters.dropped[reason] <= 5:
            self.log(f"dropped a message from {bytes(identity)[:32]!r}: {error}")

    def _send(self, identity: bytes, type_: str, payload: np.ndarray | None = None, **fields: Any) -> None:
        try:
            self._sock.send_multipart([identity, *wire.encode(type_, payload, **fields)], copy=False)
        except zmq.ZMQError as e:  # ROUTER_MANDATORY: that worker is gone
            rank = self._rank_of(identity)
            who = f"worker {rank} ({self.peers[rank].name})" if rank is not None else f"peer {identity[:32]!r}"
            raise PeerLost(f"{who} is gone: cannot send to it ({e})") from None


class ZMQWorker(Communicator):
    """A worker of a parameter-server job: computes its slice's gradient, receives parameters."""

    replicates_optimizer = False
    collective = False

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.rank, self.size = 0, 1
        self.heartbeat_s, self.timeout_s = float(cfg["heartbeat_s"]), float(cfg["timeout_s"])
        self.join_timeout_s = float(cfg["join_timeout_s"])
        self.name = f"{pysocket.gethostname()}:{os.getpid()}"
        self.identity = f"w-{uuid.uuid4().hex[:12]}".encode()
        self._ctx = zmq.Context()
        self._sock = self._connect(self.identity)
        self._start: Any = None
        self._step = 0
        self._hb_stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        self._admitted = False
        self._closed = False

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

    def handshake(self, config_hash: str, numel: int) -> None:
        self._send(wire.encode("hello", version=__version__, config_hash=config_hash, numel=numel,
                               host=pysocket.gethostname(), pid=os.getpid()), self.join_timeout_s, "its hello")
        header, _ = self._wait({"welcome", "refuse"}, self.join_timeout_s, "to admit this worker")
        if header["type"] == "refuse":
            raise MismatchError(f"the server refused this worker: {header['reason']}")
        self.rank, self.size = header["rank"], header["world"]
        self._admitted = True
        self._hb_thread = threading.Thread(target=self._heartbeats, name="distbp-heartbeat", daemon=True)
        self._hb_thread.start()

    def agree_u64(self, value: int) -> int:
        header, payload = self._wait({"start"}, self.join_timeout_s, "to send the starting parameters")
        self._start, self._step = payload, header["step"]
        return header["step"] + 1

    def check_same(self, what: str, value: int, hint: str = "") -> None:
        pass

    def broadcast_state_(self, arrays: list[np.ndarray]) -> None:
        pass  # the server owns the optimizer

    def broadcast_(self, flat: np.ndarray, root: int = 0) -> np.ndarray:
        if self._start is None or len(self._start) != flat.nbytes:
            raise MismatchError(f"the server's parameters have {0 if self._start is None else len(self._start)} "
                                f"bytes, this worker's model {flat.nbytes}")
        wire.copy_into(flat, self._start)
        self._start = None
        return flat

    def sync_step(self, grad: np.ndarray, params: np.ndarray, update: Callable[[], None],
                  stats: np.ndarray) -> np.ndarray:
        step = self._step
        self._send(wire.encode("grad", grad, step=step, rank=self.rank, loss=float(stats[0]), stop=int(stats[1] > 0)),
                   self.timeout_s, f"the gradient of step {step + 1}")
        header, payload = self._wait({"params"}, self.timeout_s, f"the parameters of step {step + 1}",
                                     {"step": step + 1, "nbytes": params.nbytes})
        wire.copy_into(params, payload)
        self._step = step + 1
        return np.array([header.get("loss", 0.0), float(header.get("stop", 0))])

    def check_replicas(self, params: np.ndarray, step: int) -> None:
        pass

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

    def _wait(self, types: set[str], timeout_s: float, what: str,
              expect: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
        """The next message of one of ``types``; a heartbeat from the server renews the
        deadline, a stop ends the job, garbage is dropped."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000), zmq.POLLIN):
                raise PeerLost(f"the server at {self.cfg['endpoint']} sent nothing for {timeout_s:g} s "
                               f"while this worker waited for it {what}")
            frames = self._sock.recv_multipart(copy=False)
            try:
                header, payload = wire.decode(frames, {"type": types | {"heartbeat", "stop"}})
                if header["type"] in types and expect:
                    wire.decode(frames, expect)
            except wire.WireError as e:
                self.log(f"distbp worker {self.rank}: dropped a message from the server: {e}")
                continue
            if header["type"] == "heartbeat":
                deadline = time.monotonic() + timeout_s
                continue
            if header["type"] == "stop":
                raise ServerStopped(header["reason"], header["code"])
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

    def fail(self, message: str, code: int) -> None:
        if self._admitted and not self._closed:  # a refused worker has nobody to say bye to
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
