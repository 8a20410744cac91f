"""Communicators: local (one process); mpi and zmq build on the same interface."""

from __future__ import annotations

from typing import Any, Mapping

from .base import Communicator, LocalCommunicator


def get_communicator(comm_cfg: Mapping[str, Any]) -> Communicator:
    """The communicator the ``comm`` config section asks for; ``auto`` is local for now."""
    backend = comm_cfg.get("backend", "auto")
    if backend in ("auto", "local"):
        return LocalCommunicator()
    raise ValueError(f"comm.backend: unknown backend {backend!r}")


__all__ = ["Communicator", "LocalCommunicator", "get_communicator"]
