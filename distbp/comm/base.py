"""The Communicator interface the Trainer talks to; numpy only, never autodiff."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import zlib
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
    """How the processes of one job combine gradients and agree on parameters.

    ``rank`` and ``size`` say which slice of every global batch this process computes
    gradients for (worker ``rank`` of ``size``). Every worker scales its loss by
    1/global_batch, so the sum of the workers' gradients is the gradient of the global mean
    loss. The coordinator logs, evaluates and writes checkpoints.

    The Trainer calls, in order: ``handshake`` (same config and model everywhere),
    ``agree_u64`` (the step to start from), ``broadcast_`` (the coordinator's parameters),
    then per step ``sync_step`` and every few steps ``check_replicas``; ``fail`` on an error. The
    collective transports (local, MPI) implement them with collectives; the parameter server
    overrides them with messages.
    """

    rank: int = 0
    size: int = 1
    computes_gradients = True  # False for a parameter server, which only combines them
    replicates_optimizer = True  # False for parameter-server workers: the server owns it
    collective = True  # every process runs the same collectives (local, MPI); not the parameter server
    _log_sink: Callable[[str], None] | None = None
    # Set by the Trainer, for messages that name what a rank was doing: the step in progress
    # (1-based), and the parameters' names with their start offsets in the flat buffer.
    step: int = 0
    parameters: tuple[list[str], np.ndarray] | None = None

    @property
    def is_coordinator(self) -> bool:
        return self.rank == 0

    def handshake(self, config_hash: str, numel: int) -> None:
        """Fail on every process, naming the rank, unless all run the same config and model."""
        self.check_same("config hash", int(config_hash, 16),
                        "every rank must be started with the same config and --set overrides")
        self.check_same("parameter count", numel, "the ranks built different models")

    def log(self, message: str) -> None:
        """Report something the user should see: to stderr, or where ``log_to`` says."""
        if self._log_sink is not None:
            self._log_sink(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def log_to(self, sink: Callable[[str], None] | None) -> None:
        """Send what ``log`` reports to ``sink`` (the run's log while a run is open), or
        back to stderr with None."""
        self._log_sink = sink

    def agree_stop(self, stop: bool) -> bool:
        """Whether the coordinator decided to end the run now (early stopping), on every
        process; every process calls it at the same steps."""
        return bool(self.agree_u64(int(stop)))

    def broadcast_json(self, value: Any) -> Any:
        """The coordinator's ``value`` (anything JSON can hold) on every process; a
        collective of the collective transports."""
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

    def fail(self, message: str, code: int) -> None:
        """This process is ending the job with an error: tell the peers that need telling."""

    def agree_u64(self, value: int) -> int:
        """The coordinator's ``value`` (an unsigned 64-bit integer), on every process."""
        return int(self.gather_u64(value)[0])

    def sync_step(self, grad: np.ndarray, params: np.ndarray, update: Callable[[], None],
                  stats: np.ndarray) -> np.ndarray:
        """One step's exchange. On entry ``grad`` holds this worker's gradient and ``stats``
        its small per-step numbers (loss, stop flag, 1.0); on return every process holds the
        updated parameters in ``params``, and the stats summed over workers are returned (the
        last: how many workers computed the step). ``update`` applies the optimizer to the
        summed gradient in ``grad``. May raise ``Recut`` (an elastic parameter server)."""
        self.reduce_gradients_(grad)
        update()
        return self.allreduce_sum_(stats)

    def reduce_gradients_(self, grad: np.ndarray) -> np.ndarray:
        """Sum the flat gradient buffer over workers, in place (overlapped buckets if set)."""
        return self.allreduce_sum_(grad)

    def overlap(self, grad: np.ndarray, offsets: np.ndarray, bucket_bytes: int) -> Callable[[int], None] | None:
        """Prepare to reduce gradient buckets while backward runs; returns the hook backward
        calls with a parameter's index when its gradient is final, or None where the
        transport has nothing to overlap."""
        return None

    def check_replicas(self, params: np.ndarray, step: int) -> None:
        """Fail, naming the rank, if any replica's parameters differ from the coordinator's."""
        self.check_same("parameter checksum", zlib.crc32(params), f"replicas diverged by step {step}")

    def allreduce_sum_(self, flat: np.ndarray) -> np.ndarray:
        """Sum ``flat`` over all workers, in place; returns it."""
        raise NotImplementedError

    def broadcast_(self, flat: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrite ``flat`` on every worker with root's values, in place; returns it."""
        raise NotImplementedError

    def broadcast_state_(self, arrays: list[np.ndarray]) -> None:
        """Give every replica the coordinator's optimizer state (after a resume; zeros at a
        fresh start), as DDP users expect. Transports whose workers keep no optimizer
        state (the parameter server) override this with nothing to do."""
        for a in arrays:
            self.broadcast_(a)

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
