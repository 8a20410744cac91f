"""Communicators: local (one process) and mpi (mpi4py); the Trainer sees only the interface."""

from __future__ import annotations

from typing import Any, Mapping

from .base import Communicator, LocalCommunicator, MismatchError
from .mpi import MPICommunicator, launched_by_mpi, local_world, world_rank
from .threads import cpu_count, pin_blas_threads

BACKENDS = ("auto", "local", "mpi")


def get_communicator(comm_cfg: Mapping[str, Any]) -> Communicator:
    """The communicator the ``comm`` config section asks for. ``auto`` is MPI when mpirun or
    mpiexec started this process with more than one rank, else local."""
    backend = comm_cfg.get("backend", "auto")
    if backend == "mpi" or (backend == "auto" and launched_by_mpi() > 1):
        return MPICommunicator()
    if backend in ("auto", "local"):
        return LocalCommunicator()
    raise ValueError(f"comm.backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["Communicator", "LocalCommunicator", "MPICommunicator", "MismatchError", "get_communicator",
           "launched_by_mpi", "local_world", "world_rank", "cpu_count", "pin_blas_threads", "BACKENDS"]
