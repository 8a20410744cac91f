"""The training protocol: what the Trainer does with the other processes of its job, in order
(docs/ARCHITECTURE.md, "The training protocol"): ``join``, ``start``, then every step
``step`` and every few steps ``check``; ``leave`` on an error and ``close`` always. The
Trainer sees only this class.

Two kinds of job speak it. Every process of a collective job (one process, or MPI ranks)
runs the same code and the same collectives: ``Collective`` implements the protocol over a
collective transport (comm/base.py's ``Communicator``: all-reduce, broadcast, all-gather).
A parameter-server job has a server and workers that do different things: comm/zmq_ps.py's
``ZMQServer`` and ``ZMQWorker`` implement it as messages, each end its own part."""

from __future__ import annotations

import contextlib
import os
import sys
import zlib
from typing import Any, Callable, ContextManager

import numpy as np

from .base import Communicator


class Protocol:
    """One process's end of the training protocol.

    ``rank`` and ``size`` name this process among the job's; ``slice_of`` says which part of
    every global batch it computes gradients for (every worker scales its loss by
    1/global_batch, so the sum of the workers' gradients is the gradient of the global mean
    loss). The coordinator logs, evaluates and writes checkpoints."""

    rank: int = 0
    size: int = 1
    collective = True  # every process runs the same collectives (local, MPI); not the parameter server
    _log_sink: Callable[[str], None] | None = None
    # Set by the Trainer, for messages that name what a process was doing: the step in
    # progress (1-based), and the parameters' names with their start offsets in the flat buffer.
    current_step: int = 0
    parameters: tuple[list[str], np.ndarray] | None = None

    @property
    def is_coordinator(self) -> bool:
        return self.rank == 0

    def join(self, config_hash: str, numel: int) -> None:
        """Agree that every process runs the same config and model (naming any that does not);
        a parameter server gives this worker its rank here."""
        raise NotImplementedError

    def processes(self) -> list[str]:
        """"pid@host" of every rank, in rank order (logged at start, so that a PID seen in ps
        or top can be matched to its rank); empty where the protocol names its peers itself."""
        return []

    def start(self, step: int | None, load: Callable[[int], None], params: np.ndarray,
              state: Callable[[], list[np.ndarray]]) -> int:
        """The step every process starts from: the coordinator's ``step`` (the checkpoint it
        resumed, or None for a fresh start), and every process then holds the coordinator's
        parameters in ``params`` and optimizer state in the arrays ``state()`` returns (as DDP
        at construction). A process that runs the optimizer itself and did not choose the
        checkpoint calls ``load(step)`` first, to restore its schedule and optimizer from the
        same file."""
        raise NotImplementedError

    def slice_of(self, batch: int) -> tuple[int, int]:
        """[lo, hi) of a global batch of ``batch`` samples that this process computes: worker
        ``rank`` of ``size`` takes its share (sizes differ by at most one; the same cut as
        data/sampler.py's ``slice_bounds``)."""
        return self.rank * batch // self.size, (self.rank + 1) * batch // self.size

    def step(self, grad: np.ndarray, params: np.ndarray, update: Callable[[], None],
             stats: np.ndarray) -> np.ndarray:
        """One step's exchange. On entry ``grad`` holds this process's gradient and ``stats``
        its small per-step numbers (loss, stop flag, 1.0); on return every process holds the
        updated parameters in ``params``, and the stats summed over workers are returned (the
        last: how many workers computed the step). ``update`` applies the optimizer to the
        summed gradient in ``grad``. May raise ``Recut`` (an elastic parameter server): the
        step's slices changed, compute this process's again."""
        raise NotImplementedError

    def check(self, params: np.ndarray, step: int) -> None:
        """Fail, naming the process, if its parameters differ from the coordinator's."""

    def agree_stop(self, stop: bool) -> bool:
        """Whether the coordinator decided to end the run now (early stopping), on every
        process; every process calls it at the same steps."""
        return stop

    def share(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The coordinator's final metrics, on every process that returns them to its caller."""
        return metrics

    def overlap(self, grad: np.ndarray, offsets: np.ndarray, bucket_bytes: int) -> Callable[[int], None] | None:
        """Prepare to reduce gradient buckets while backward runs; returns the hook backward
        calls with a parameter's index when its gradient is final, or None where there is
        nothing to overlap."""
        return None

    def solo(self) -> ContextManager[None]:
        """Wrap work the coordinator does alone between steps (evaluation, checkpoints) while
        its peers wait for it: where they have a deadline, it is not counted as silence."""
        return contextlib.nullcontext()

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

    def abort(self, code: int) -> None:
        """End every process of the job now; where that cannot be done, this process."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def leave(self, message: str, code: int) -> None:
        """This process is ending the job with an error: tell the peers that need telling."""

    def close(self) -> None:
        """Release the connections; safe to call twice."""


class Collective(Protocol):
    """The protocol over a collective transport: every process runs the same calls, and each
    verb is a collective of ``comm`` (checks are all-gathers of a number, start is a broadcast,
    a step is the all-reduce of the gradient and its statistics)."""

    def __init__(self, comm: Communicator) -> None:
        self.comm = comm

    @property
    def rank(self) -> int:  # type: ignore[override]
        return self.comm.rank

    @property
    def size(self) -> int:  # type: ignore[override]
        return self.comm.size

    @property
    def is_coordinator(self) -> bool:
        return self.comm.is_coordinator

    @property
    def current_step(self) -> int:  # type: ignore[override]
        return self.comm.current_step

    @current_step.setter
    def current_step(self, value: int) -> None:
        self.comm.current_step = value  # MPI's messages name the step

    @property
    def parameters(self) -> tuple[list[str], np.ndarray] | None:  # type: ignore[override]
        return self.comm.parameters

    @parameters.setter
    def parameters(self, value: tuple[list[str], np.ndarray] | None) -> None:
        self.comm.parameters = value

    def join(self, config_hash: str, numel: int) -> None:
        self.comm.check_same("config hash", int(config_hash, 16),
                             "every rank must be started with the same config and --set overrides")
        self.comm.check_same("parameter count", numel, "the ranks built different models")

    def processes(self) -> list[str]:
        return self.comm.processes()

    def start(self, step: int | None, load: Callable[[int], None], params: np.ndarray,
              state: Callable[[], list[np.ndarray]]) -> int:
        # Every replica runs the optimizer: one that did not choose the checkpoint reads the
        # same file (the run directory is shared, as under mpirun on one host or on a cluster
        # file system), then all take the coordinator's parameters and state.
        agreed = int(self.comm.agree_u64(0 if step is None else step + 1)) - 1
        if agreed >= 0 and not self.is_coordinator:
            load(agreed)
        self.comm.broadcast_(params, root=0)
        for a in state():
            self.comm.broadcast_(a)
        return max(agreed, 0)

    def step(self, grad: np.ndarray, params: np.ndarray, update: Callable[[], None],
             stats: np.ndarray) -> np.ndarray:
        stats = self.comm.exchange_(grad, stats)
        update()
        return stats

    def check(self, params: np.ndarray, step: int) -> None:
        self.comm.check_same("parameter checksum", zlib.crc32(params), f"replicas diverged by step {step}")

    def agree_stop(self, stop: bool) -> bool:
        return bool(self.comm.agree_u64(int(stop)))

    def share(self, metrics: dict[str, Any]) -> dict[str, Any]:
        if self.size == 1:
            return metrics
        return self.comm.broadcast_json(metrics if self.is_coordinator else None)

    def overlap(self, grad: np.ndarray, offsets: np.ndarray, bucket_bytes: int) -> Callable[[int], None] | None:
        return self.comm.overlap(grad, offsets, bucket_bytes)

    def solo(self) -> ContextManager[None]:
        return self.comm.solo()

    def abort(self, code: int) -> None:
        self.comm.abort(code)

    def close(self) -> None:
        self.comm.close()


def as_protocol(comm: Communicator | Protocol) -> Protocol:
    """``comm`` as the Trainer speaks to it: a protocol as it is, a transport wrapped in
    ``Collective``."""
    if isinstance(comm, Protocol):
        return comm
    if isinstance(comm, Communicator):
        return Collective(comm)
    raise TypeError(f"comm: expected a distbp.comm Communicator (or a Protocol), got {type(comm).__name__}")
