"""The Communicator interface the Trainer talks to; numpy only, never autodiff."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from typing import Any, Callable, ContextManager, Iterator

import numpy as np
from ..errors import DistbpError


@contextlib.contextmanager
def alongside(work: Callable[[threading.Event], None], name: str) -> Iterator[None]:
    """Run ``work(stop)`` in a daemon thread for the duration of the block; on the way out
    ``stop`` is set and the thread joined (the communicators' ``solo``)."""
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(stop,), name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class MismatchError(DistbpError, RuntimeError):
    """Ranks disagree on something they must share: config hash, parameter count, or (replica
    drift) the parameters themselves. Every rank raises it together."""

    collective = True


class PeerLost(DistbpError, RuntimeError):
    """A peer (a worker, or the server) stopped answering; the message names which."""


class Recut(Exception):
    """Raised by ``sync_step`` when the workers of the step in flight changed (one was lost):
    the step's global batch is cut again among those left, and this worker computes its new
    slice (``rank`` of ``size``, already updated) and calls ``sync_step`` again. Not an error."""


class Dropped(PeerLost):
    """The job goes on without this worker (the server found it silent too long, or cut off);
    like a lost server, a worker that rejoins (``comm.reconnect_s``) is admitted again."""


class ServerStopped(DistbpError, RuntimeError):
    """The coordinator ended the job (an error there, or a lost worker); carries its exit code."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(f"the server stopped the job: {reason}")
        self.code = code
        self.exit_code = code or 1


class Communicator:
    """A collective transport: how the processes of a collective job (one process, MPI ranks)
    sum arrays, broadcast them and compare numbers. Every process makes the same calls in the
    same order. The Trainer speaks the training protocol (comm/protocol.py), which
    ``Collective`` implements over this; ``distbp.distributed`` exposes it to loops of your own.
    """

    rank: int = 0
    size: int = 1
    # Set through the protocol, for messages that name what a rank was doing: the step in
    # progress (1-based), and the parameters' names with their start offsets in the flat buffer.
    current_step: int = 0
    parameters: tuple[list[str], np.ndarray] | None = None

    @property
    def is_coordinator(self) -> bool:
        return self.rank == 0

    def broadcast_json(self, value: Any) -> Any:
        """The coordinator's ``value`` (anything JSON can hold) on every process."""
        blob = np.frombuffer(json.dumps(value).encode(), dtype=np.uint8) if self.is_coordinator else None
        n = self.agree_u64(0 if blob is None else blob.size)
        buf = np.zeros(n, dtype=np.uint8)
        if blob is not None:
            buf[:] = blob
        self.broadcast_(buf, root=0)
        return json.loads(buf.tobytes().decode())

    def solo(self) -> ContextManager[None]:
        """Wrap work the coordinator does alone between steps (evaluation, checkpoints) while
        its peers wait for it in their next collective: where those have a deadline (MPI), it
        is not counted as silence. Nothing elsewhere."""
        return contextlib.nullcontext()

    def abort(self, code: int) -> None:
        """End every process of the job now; where the transport cannot, this process."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def agree_u64(self, value: int) -> int:
        """The coordinator's ``value`` (an unsigned 64-bit integer), on every process."""
        return int(self.gather_u64(value)[0])

    def exchange_(self, grad: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """One training step's sums, in place: the flat gradient and the step's small numbers
        (loss, stop flag, 1 per worker) over all processes; returns the summed stats."""
        self.allreduce_sum_(stats)
        self.reduce_gradients_(grad)
        return stats

    def reduce_gradients_(self, grad: np.ndarray) -> np.ndarray:
        """Sum the flat gradient buffer over workers, in place (overlapped buckets if set)."""
        return self.allreduce_sum_(grad)

    def overlap(self, grad: np.ndarray, offsets: np.ndarray, bucket_bytes: int) -> Callable[[int], None] | None:
        """Prepare to reduce gradient buckets while backward runs; returns the hook backward
        calls with a parameter's index when its gradient is final, or None where the
        transport has nothing to overlap."""
        return None

    def allreduce_sum_(self, flat: np.ndarray) -> np.ndarray:
        """Sum ``flat`` over all workers, in place; returns it."""
        raise NotImplementedError

    def broadcast_(self, flat: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrite ``flat`` on every worker with root's values, in place; returns it."""
        raise NotImplementedError

    def iallreduce_sum_(self, view: np.ndarray) -> Any:
        """Start summing ``view`` in place over all workers; returns a handle for wait_all."""
        raise NotImplementedError

    def test_all(self, handles: list[Any]) -> bool:
        """Let pending operations progress; whether all are done."""
        return True

    def wait_all(self, handles: list[Any]) -> None:
        """Block until every handle's operation is complete."""

    def barrier(self) -> None:
        raise NotImplementedError

    def gather_u64(self, value: int) -> "np.ndarray":
        """Every rank's ``value`` (an unsigned 64-bit integer), in rank order, on every rank."""
        raise NotImplementedError

    def processes(self) -> list[str]:
        """"pid@host" of every rank, in rank order, on every rank (a collective), logged at
        start so that a PID seen in ps or top can be matched to its rank (under mpiexec these
        are the processes that train, children of the ones mpiexec launched: see
        process/supervise.py); empty where the transport names its peers itself or there is
        only one."""
        return []

    def check_same(self, what: str, value: int, hint: str = "") -> None:
        """Raise MismatchError on every rank, naming the ranks whose ``value`` differs from
        rank 0's; a collective, so every rank must call it at the same point."""
        values = self.gather_u64(value)
        bad = [r for r in range(self.size) if values[r] != values[0]]
        if bad:
            ranks = ", ".join(f"rank {r} has {int(values[r]):x}" for r in bad)
            raise MismatchError(f"{what} differs between ranks: rank 0 has {int(values[0]):x}, {ranks}"
                                + (f"; {hint}" if hint else ""))

    def close(self) -> None:
        """Release the transport; safe to call twice."""


class LocalCommunicator(Communicator):
    """One process: the identity on everything, so one code path serves 1 and N workers."""

    def allreduce_sum_(self, flat: np.ndarray) -> np.ndarray:
        return flat

    def broadcast_(self, flat: np.ndarray, root: int = 0) -> np.ndarray:
        return flat

    def barrier(self) -> None:
        pass

    def iallreduce_sum_(self, view: np.ndarray) -> None:
        return None

    def gather_u64(self, value: int) -> np.ndarray:
        return np.array([value], dtype=np.uint64)
