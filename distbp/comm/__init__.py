"""Collective transports (local: one process; mpi: mpi4py) and the training protocol the
Trainer speaks (comm/protocol.py): over a transport (``Collective``), or as the ZeroMQ
parameter server's messages. (The process helpers re-exported here live in distbp.process.)"""

from __future__ import annotations

from typing import Any, Mapping

from .abort import install_abort_hook, rank_name
from .base import Communicator, Dropped, LocalCommunicator, MismatchError, PeerLost, Recut, ServerStopped
from ..process import LaunchError, check_launcher, cpu_count, launched_by_mpi, local_world, pin_blas_threads, world_rank
from .mpi import MPICommunicator
from .protocol import Collective, Protocol, as_protocol

BACKENDS = ("auto", "local", "mpi", "zmq")


def get_communicator(comm_cfg: Mapping[str, Any]) -> Communicator:
    """The collective transport the ``comm`` config section asks for. ``auto`` is MPI when
    mpirun or mpiexec started this process with more than one rank, else local."""
    backend = comm_cfg.get("backend", "auto")
    if backend == "auto":
        check_launcher()
    if backend == "mpi" or (backend == "auto" and launched_by_mpi() > 1):
        # The Trainer's config always has comm.timeout_s; distbp.distributed's loop of your
        # own passes no config, and its collectives wait as long as plain MPI's.
        return MPICommunicator(timeout_s=comm_cfg.get("timeout_s"))
    if backend in ("auto", "local"):
        return LocalCommunicator()
    if backend == "zmq":
        raise ValueError("comm.backend: zmq is a parameter server, not a collective transport: its server and "
                         "workers speak the training protocol (get_protocol), which only the Trainer uses")
    raise ValueError(f"comm.backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def get_protocol(comm_cfg: Mapping[str, Any]) -> Protocol:
    """The training protocol the ``comm`` config section asks for: the parameter server or
    one of its workers (``zmq``, by ``comm.role``), else ``Collective`` over the transport
    of ``get_communicator``."""
    if comm_cfg.get("backend", "auto") == "zmq":
        from .zmq_ps import ZMQServer, ZMQWorker  # imported here: only parameter-server runs need zmq

        return ZMQServer(comm_cfg) if comm_cfg.get("role") == "server" else ZMQWorker(comm_cfg)
    return Collective(get_communicator(comm_cfg))


__all__ = ["Communicator", "LocalCommunicator", "Protocol", "Collective", "as_protocol", "get_protocol", "MPICommunicator", "MismatchError", "PeerLost", "Recut", "Dropped", "ServerStopped", "get_communicator",
           "launched_by_mpi", "local_world", "install_abort_hook", "rank_name", "LaunchError", "check_launcher", "world_rank", "cpu_count", "pin_blas_threads", "BACKENDS"]
