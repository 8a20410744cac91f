"""The MPI communicator (mpi4py): gradients summed in place on the flat buffer (uppercase,
buffer interface, no pickling, no per-layer calls, no copies), with a deadline on every
collective of a training step.

Deadlines (``comm.timeout_s``). A rank that stops (SIGSTOP, a hung node, an NFS stall) would
leave its peers in their next collective forever: MPI has no timeout. So every collective of
the training loop is started nonblocking (``Iallreduce``, ``Iallgather``, ``Ibcast``) and
polled: without pause for ``TIGHT_S``, then with a ``sched_yield`` every few polls until
``SPIN_S``; that is as fast as MPICH's own blocking wait (bench/allreduce.py). On a host with
more ranks than cores every poll yields and none spins (a tight ``Test`` loop is 2-10x
slower there: the peers it waits for cannot run). After ``SPIN_S``, a small collective (the
step's statistics, where ranks wait for a late peer) sleeps between polls, up to
``MAX_PAUSE_S``, so a rank waiting for a stalled peer does not spin at 100% CPU; a large one
(the gradient, whose peers are all there by then) keeps yielding. The set-up's collectives (handshake, broadcast of the parameters, which can wait
for a slow data load or checkpoint check) have no deadline; the deadlines begin with the
first training step.

Who is silent. Nothing extra is sent in the steady state. When a rank's deadline passes it
sends ASK (three int64: kind, collective number, rank) to every peer over a private duplicate
of COMM_WORLD, where every rank keeps one receive posted and reads it while it waits. A rank
waiting in the same collective, or in the one before or after it (a rank that stopped
halfway through a collective lets some peers finish it), answers by asking too (it joins the
round), so within a grace period (``min(1 s, timeout_s / 4)``) every live waiting rank has
heard from every other; the ranks not heard from are silent. The lowest rank heard from
(rank 0 whenever it is alive) raises PeerLost naming them, ``rank 1 (pid P on HOST) silent
for 10 s (comm.timeout_s) during step 58``: the Trainer's coordinator writes the checkpoint
of the last finished step (this step's update was never applied), then the command aborts
the job (MPI_Abort: mpiexec SIGKILLs every process, a stopped one included). The others wait
for that, or after half a timeout more end the job themselves. Work the coordinator does
alone between steps (evaluation, checkpoints: ``solo()``) is not silence: a thread answers
BUSY for it meanwhile, and its peers wait on.

Non-finite numbers. Each rank checks its own loss and gradient (one dot product, per bucket
with ``comm.overlap``) before the exchange and appends a flag to the step's statistics,
which are summed before the gradient: every rank then raises the same ``NonFiniteOnRank``
naming the lowest rank flagged (an all-gather of the ranks' verdicts, only then), before any
update, and skips summing a gradient known to be unusable. A sum that overflows although
every rank's gradient is finite is still caught after the exchange, by the Trainer.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import re
import sys
import threading
import time
from typing import Any, Callable, Iterator

import numpy as np

from ..process.launcher import LaunchError, check_launcher, launched_by_mpi, local_world, world_rank  # noqa: F401
from ..process.threads import cpu_count
from .base import Communicator, PeerLost, alongside
from .buckets import BucketedAllreduce, first_non_finite

ABORT_GRACE_S = 0.2
TIGHT_S = 50e-6  # poll without pause this long (a yield may give the core to another job), unless
# this host runs more ranks than it has cores: there every poll yields, or the peers cannot run
SPIN_S = 0.01  # then poll, yielding the core between polls, until this long before anything else
MAX_PAUSE_S = 0.002  # the longest sleep between polls of a small collective waiting for a late peer
SMALL_BYTES = 1 << 16  # collectives up to this size sleep between polls after SPIN_S; larger ones yield
READ_EVERY_S = 0.001  # how often a long wait reads its peers' questions
KEEPALIVE_S = 0.05  # how often the coordinator's thread answers them while it works alone
LOST_PAUSE_S = 1.0  # after MPI reports a broken connection: mpiexec is already ending the job
_TAG = 1
_ASK, _BUSY = 1, 2
_GRADIENT = 4  # codes of a rank's own numbers: 0 finite, 1-3 the loss (nan, inf, -inf), 4 + i element i


class NonFiniteOnRank(PeerLost):
    """A rank's own loss or gradient was not finite, found before the step's exchange, so the
    message names the rank. Every rank raises it together (rank 0 reports it), and the job ends
    as for a lost peer: this step's update is never applied, so the checkpoint the coordinator
    then writes holds the last good step."""

    collective = True


class MPICommunicator(Communicator):
    """COMM_WORLD of the job mpirun started. Rank 0 is the coordinator. ``timeout_s``: the
    deadline of every collective of a training step (None: none, blocking calls as in plain
    mpi4py)."""

    def __init__(self, timeout_s: float | None = 10.0) -> None:
        from mpi4py import MPI  # imported here: only MPI runs pay for MPI_Init

        self._MPI = MPI
        self._comm = MPI.COMM_WORLD
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()
        self._buckets = None
        self.timeout_s = timeout_s
        self._armed = False  # deadlines on every collective once the first training step begins
        self._timeout_key = "comm.timeout_s"
        self._seq = 0  # deadlined collectives so far: the same count on every rank
        self._names: list[str] = []  # "pid P on HOST" of every rank, from processes()
        self._ctl = None
        if timeout_s is not None and self.size > 1:
            self._ctl = self._comm.Dup()  # questions about silence never match training traffic
            self._inbox = np.zeros(3, dtype=np.int64)
            self._status = MPI.Status()
            self._recv = self._ctl.Irecv(self._inbox, source=MPI.ANY_SOURCE, tag=_TAG)
            self._sent: list[tuple[Any, np.ndarray]] = []
            # Before mpi4py's MPI_Finalize (atexit runs the newest first): a receive still
            # posted there makes the UCX layer warn of a request not returned.
            atexit.register(self.close)
        self._threads = MPI.Query_thread() >= MPI.THREAD_SERIALIZED
        crowded = local_world()[0] > cpu_count()
        self._tight_s = 0.0 if crowded else TIGHT_S
        self._polls_per_yield = 1 if crowded else 4

    def arm(self, key: str = "comm.timeout_s") -> None:
        """Deadlines on every collective from now on. The Trainer arms at its first step, so
        that start-up (data loading, the first broadcast) may take longer than timeout_s;
        distbp.distributed.init(timeout_s=) arms at once. Collective: every rank arms at the
        same point (the first time, it learns each rank's pid and host, to name a silent one)."""
        if self._ctl is not None and not self._names:
            self.processes()
        self._armed, self._timeout_key = self._ctl is not None, key  # key: the setting a message names

    # -- collectives ------------------------------------------------------------------------
    def allreduce_sum_(self, flat: np.ndarray) -> np.ndarray:
        MPI = self._MPI
        if self._ctl is None:
            self._comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
            return flat
        try:
            req = self._comm.Iallreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        except MPI.Exception as e:
            self._lost(e, "all-reduce")
        self._wait(req.Test, flat.nbytes, "all-reduce")
        return flat

    def exchange_(self, grad: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """The step's statistics first, with this rank's own verdict on its loss and gradient
        (one dot product) appended: their sum is the step's arrival, and tells every rank
        whether any rank's numbers were not finite before the gradient is summed; then the
        gradient."""
        self.arm()
        buckets = self._buckets if self._buckets is not None and grad is self._buckets.grad else None
        if buckets is not None:
            buckets.start_rest()
            element = buckets.non_finite
        else:
            element = first_non_finite(grad)
        loss = float(stats[0])
        if not math.isfinite(loss):
            code = 1 if math.isnan(loss) else 2 if loss > 0 else 3
        else:
            code = 0 if element is None else _GRADIENT + element
        stats = np.concatenate((stats, (1.0 if code else 0.0,)))
        self.allreduce_sum_(stats)
        if stats[-1] > 0:
            if buckets is not None:
                buckets.wait()  # every request completes: nothing is left in flight
            self._raise_non_finite(code)
        if buckets is not None:
            buckets.wait()
        else:
            self.allreduce_sum_(grad)
        return stats[:-1]

    def overlap(self, grad: np.ndarray, offsets: np.ndarray, bucket_bytes: int):
        self._buckets = BucketedAllreduce(self, grad, offsets, bucket_bytes, check_finite=True)
        return self._buckets.ready

    def reduce_gradients_(self, grad: np.ndarray) -> np.ndarray:
        if self._buckets is not None and grad is self._buckets.grad:
            return self._buckets.finish()
        return self.allreduce_sum_(grad)

    def iallreduce_sum_(self, view: np.ndarray) -> object:
        MPI = self._MPI
        try:
            return self._comm.Iallreduce(MPI.IN_PLACE, view, op=MPI.SUM)
        except MPI.Exception as e:
            self._lost(e, "gradient all-reduce")

    def test_all(self, handles: list) -> bool:
        MPI = self._MPI
        try:
            return MPI.Request.Testall(handles)
        except MPI.Exception as e:
            self._lost(e, "gradient all-reduce")

    def wait_all(self, handles: list) -> None:
        MPI = self._MPI
        if self._ctl is None:
            MPI.Request.Waitall(handles)
            return
        self._wait(lambda: MPI.Request.Testall(handles), SMALL_BYTES + 1, "gradient all-reduce")

    def broadcast_(self, flat: np.ndarray, root: int = 0) -> np.ndarray:
        if self._deadlined():
            self._wait(self._start(lambda: self._comm.Ibcast(flat, root=root), "broadcast").Test, flat.nbytes,
                       "broadcast")
        else:
            self._blocking(lambda: self._comm.Bcast(flat, root=root), "broadcast")
        return flat

    def barrier(self) -> None:
        if self._deadlined():
            self._wait(self._start(self._comm.Ibarrier, "barrier").Test, 0, "barrier")
        else:
            self._blocking(self._comm.Barrier, "barrier")

    def gather_u64(self, value: int) -> np.ndarray:
        mine = np.array([value], dtype=np.uint64)
        out = np.empty(self.size, dtype=np.uint64)
        if self._deadlined():
            self._wait(self._start(lambda: self._comm.Iallgather(mine, out), "all-gather").Test, out.nbytes,
                       "all-gather")
        else:
            self._blocking(lambda: self._comm.Allgather(mine, out), "all-gather")
        return out

    def processes(self) -> list[str]:
        # Fixed-width bytes through the buffer interface: no pickled objects on the wire.
        width = 128
        mine = np.zeros(width, dtype=np.uint8)
        me = f"{os.getpid()}@{self._MPI.Get_processor_name()}".encode()[:width]
        mine[:len(me)] = np.frombuffer(me, dtype=np.uint8)
        out = np.empty((self.size, width), dtype=np.uint8)
        self._blocking(lambda: self._comm.Allgather(mine, out), "all-gather")
        found = [bytes(row).rstrip(b"\0").decode(errors="replace") for row in out]
        self._names = ["pid {} on {}".format(*p.split("@", 1)) if "@" in p else p for p in found]
        return found

    @contextlib.contextmanager
    def solo(self) -> Iterator[None]:
        """The coordinator working alone between steps while its peers wait for it in their
        next collective: a thread answers their deadline's question with BUSY meanwhile."""
        if self._ctl is None or not self._armed or not self._threads:
            yield
            return
        with alongside(self._keepalive, "distbp-keepalive"):
            yield

    def close(self) -> None:
        if self._ctl is not None and self._recv is not None:
            try:
                self._recv.Cancel()
                self._recv.Wait()
            except self._MPI.Exception:
                pass
            self._recv = None

    def abort(self, code: int) -> None:
        """End every rank of the job now (no rank is left waiting in a collective)."""
        self.abort_world(code)

    @staticmethod
    def abort_world(code: int) -> None:
        """MPI_Abort on COMM_WORLD: every rank ends now, whether or not a communicator exists."""
        from mpi4py import MPI

        sys.stdout.flush()
        sys.stderr.flush()
        # MPI_Abort tears the job down at once: output still in the pipe to mpiexec's proxy
        # (the message naming the error) would be lost without a moment to relay it.
        time.sleep(ABORT_GRACE_S)
        MPI.COMM_WORLD.Abort(code)

    # -- waiting with a deadline -------------------------------------------------------------
    def _deadlined(self) -> bool:
        return self._armed and self._ctl is not None

    def _start(self, start: Callable[[], Any], what: str) -> Any:
        try:
            return start()
        except self._MPI.Exception as e:
            self._lost(e, what)

    def _blocking(self, call: Callable[[], Any], what: str) -> None:
        try:
            call()
        except self._MPI.Exception as e:
            self._lost(e, what)

    def _wait(self, done: Callable[[], bool], nbytes: int, what: str) -> None:
        """Poll ``done`` until it is true, or until the deadline names a silent peer."""
        self._seq += 1
        try:
            if done():
                return
            clock, pause = time.monotonic, os.sched_yield
            t0 = clock()
            tight_end, spin_end = t0 + self._tight_s, t0 + SPIN_S
            while clock() < tight_end:  # a collective whose peers are all there ends here
                if done():
                    return
            polls = self._polls_per_yield
            while True:
                pause()
                for _ in range(polls):
                    if done():
                        return
                if clock() >= spin_end:
                    break
            self._wait_long(done, nbytes <= SMALL_BYTES, what, t0)
        except self._MPI.Exception as e:
            self._lost(e, what)

    def _wait_long(self, done: Callable[[], bool], small: bool, what: str, t0: float) -> None:
        clock = time.monotonic
        timeout = float(self.timeout_s)
        grace = min(1.0, timeout / 4)
        deadline = t0 + timeout
        asked: float | None = None  # when this rank asked its peers (its deadline, or a peer's)
        heard: set[int] = set()  # peers waiting in this collective, by their questions
        busy = False  # the coordinator answered that it works alone
        give_up, message = None, ""
        next_read, sleep = 0.0, 50e-6
        while not done():
            now = clock()
            if now >= next_read:
                next_read = now + READ_EVERY_S
                for source, kind, seq in self._read():
                    if abs(seq - self._seq) > 1:
                        continue  # about a collective finished long since
                    # A peer one collective behind or ahead waits too: a rank that stopped
                    # after sending its part to some peers lets those finish and move on.
                    if kind == _BUSY:
                        busy = True
                    elif kind == _ASK:
                        heard.add(source)
                        if asked is None:
                            asked = now
                            self._ask()
            if asked is None and now >= deadline:
                asked = now
                self._ask()
            elif asked is not None and give_up is None and now >= asked + grace:
                silent = [r for r in range(self.size) if r != self.rank and r not in heard]
                if not silent or busy:
                    # All are here (a slow collective) or the coordinator works alone: wait on.
                    deadline, asked, heard, busy = now + timeout, None, set(), False
                else:
                    actor = min(heard | {self.rank})
                    message = self._silence(silent, what)
                    if actor == self.rank:
                        raise PeerLost(message)
                    give_up = now + timeout / 2  # the actor ends the job; if it does not, this rank does
            elif give_up is not None and now >= give_up:
                raise PeerLost(message)
            if small:
                time.sleep(sleep)
                sleep = min(MAX_PAUSE_S, sleep * 1.5)
            else:
                os.sched_yield()

    def _silence(self, silent: list[int], what: str) -> str:
        where = f"during step {self.current_step}" if self.current_step else f"in {what} number {self._seq}"
        text = f"{' and '.join(self._who(r) for r in silent)} silent for {self.timeout_s:g} s ({self._timeout_key}) {where}"
        if 0 in silent:
            text += ("; rank 0 is the coordinator, which writes the checkpoints, so none was written now: "
                     "--resume auto continues from the newest one")
        return text

    def _who(self, rank: int) -> str:
        return f"rank {rank} ({self._names[rank]})" if rank < len(self._names) else f"rank {rank}"

    def _ask(self) -> None:
        for r in range(self.size):
            if r != self.rank:
                self._send(r, _ASK, self._seq)

    def _send(self, dest: int, kind: int, seq: int) -> None:
        msg = np.array([kind, seq, self.rank], dtype=np.int64)
        self._sent.append((self._ctl.Isend(msg, dest=dest, tag=_TAG), msg))  # msg lives until sent

    def _read(self) -> list[tuple[int, int, int]]:
        """The peers' messages that arrived: (source, kind, collective number)."""
        got = []
        while self._recv is not None and self._recv.Test(self._status):
            got.append((self._status.Get_source(), int(self._inbox[0]), int(self._inbox[1])))
            self._recv = self._ctl.Irecv(self._inbox, source=self._MPI.ANY_SOURCE, tag=_TAG)
        if self._sent:
            self._sent = [(r, m) for r, m in self._sent if not r.Test()]
        return got

    def _keepalive(self, stop: threading.Event) -> None:
        while not stop.wait(KEEPALIVE_S):
            try:
                for source, kind, seq in self._read():
                    if kind == _ASK:
                        self._send(source, _BUSY, seq)
            except self._MPI.Exception:
                return

    def _lost(self, error: Exception, what: str) -> None:
        """MPI reports a broken connection: a peer's process is gone. mpiexec is already
        ending the job, and the rank's supervisor names it (process/supervise.py); end with
        one line, not MPICH's error stack, if this rank is still running after a moment."""
        time.sleep(LOST_PAUSE_S)
        text = str(error)
        peer = re.search(r"rank (\d+)", text)
        with_peer = f" with {self._who(int(peer.group(1)))}" if peer else ""
        where = f"during step {self.current_step}" if self.current_step else ""
        first = text.strip().splitlines()[0].rstrip(":, ") if text.strip() else type(error).__name__
        raise PeerLost(f"{self._who(self.rank)}: the {what} {where} failed{with_peer} ({first}); a peer's process is "
                       "gone: mpiexec ends the job") from None

    def _raise_non_finite(self, code: int) -> None:
        codes = self.gather_u64(code)
        bad = [r for r in range(self.size) if codes[r]]
        r, c = bad[0], int(codes[bad[0]])
        if c < _GRADIENT:
            what = f"non-finite loss ({('nan', 'inf', '-inf')[c - 1]}) at step {self.current_step}"
        else:
            what = f"non-finite gradient at step {self.current_step}{self._in_parameter(c - _GRADIENT)}"
        also = f" (also {', '.join(self._who(q) for q in bad[1:])})" if len(bad) > 1 else ""
        raise NonFiniteOnRank(f"{self._who(r)}: {what}{also}; lower optimizer.lr or check the data")

    def _in_parameter(self, element: int) -> str:
        if self.parameters is None:
            return ""
        names, offsets = self.parameters
        i = int(np.searchsorted(offsets, element, side="right")) - 1
        return f" in parameter {names[i]}" if 0 <= i < len(names) else ""

