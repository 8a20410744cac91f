"""What the command line needs of the process and the job, so that it imports only the
training layer (docs/ARCHITECTURE.md, "Layers")."""

from __future__ import annotations

from pathlib import Path

from ..process import launched_by_mpi, supervise_rank, world_rank

__all__ = ["launched_by_mpi", "world_rank", "supervise_rank", "abort_job", "make_keys"]


def abort_job(code: int) -> None:
    """End every rank of the MPI job now (MPI_Abort), so none is left waiting in a collective."""
    from ..comm import MPICommunicator

    MPICommunicator.abort_world(code)


def make_keys(key_dir: str | Path, workers: int | None = None) -> list[Path]:
    """CURVE key pairs for a parameter-server job, one per worker with ``workers`` (see
    distbp.comm.zmq_ps.make_keys)."""
    from ..comm.zmq_ps import make_keys as make  # imported here: only key making needs zmq

    return make(key_dir, workers)
