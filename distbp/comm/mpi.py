"""The MPI communicator (mpi4py): gradients summed by one in-place ``Allreduce`` on the flat
buffer — uppercase, buffer interface, no pickling, no per-layer calls, no copies."""

from __future__ import annotations

import os
import sys

import numpy as np

from ..errors import EXIT_USAGE, DistbpError
from .base import Communicator


def launched_by_mpi() -> int:
    """The world size mpirun/mpiexec announced in the environment (MPICH's hydra: PMI_SIZE;
    Open MPI: OMPI_COMM_WORLD_SIZE; PMIx launchers: PMIX_SIZE...), or 1. Read without
    importing mpi4py, which would initialize MPI in every plain single-process run."""
    for key in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 1


class LaunchError(DistbpError):
    """Processes were started by a launcher distbp does not run under (torchrun, a Slurm
    step without PMI): each would train alone. Exit code 2, as for a bad command line."""

    exit_code = EXIT_USAGE


def check_launcher() -> None:
    """Raise LaunchError when the environment says N > 1 processes were started without MPI:
    torchrun's WORLD_SIZE/RANK, or a Slurm step of several tasks without PMI. Each would
    otherwise train as its own 1-worker job, all into the same run directory."""
    if launched_by_mpi() > 1 or any(k in os.environ for k in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")):
        return
    world = os.environ.get("WORLD_SIZE", "")
    if world.isdigit() and int(world) > 1 and ("RANK" in os.environ or "LOCAL_RANK" in os.environ):
        raise LaunchError(f"started by torchrun (or another launcher setting WORLD_SIZE={world}, "
                          f"RANK={os.environ.get('RANK', '?')}) without MPI, so each of the {world} processes would "
                          f"train alone; distbp's workers run under MPI: launch `mpirun -n {world} <command>` instead "
                          f"(or the parameter server: launch/zmq-local {world})")
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "")
    if tasks.isdigit() and int(tasks) > 1:
        raise LaunchError(f"started as one of {tasks} tasks of a Slurm step without MPI (no PMI in the environment), "
                          f"so each would train alone; run `srun --mpi=pmi2 <command>` (see launch/slurm.sbatch) "
                          f"or `mpirun -n {tasks} <command>` inside the allocation")


def local_world() -> tuple[int, int]:
    """(ranks on this host, this rank's index among them), from the launcher's environment
    (DISTBP_LOCAL_PROCS is set by launch/zmq-local for the parameter server's processes)."""
    if os.environ.get("DISTBP_LOCAL_PROCS", "").isdigit():
        return int(os.environ["DISTBP_LOCAL_PROCS"]), 0
    for size_key, rank_key in (("MPI_LOCALNRANKS", "MPI_LOCALRANKID"),
                               ("OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK")):
        if os.environ.get(size_key, "").isdigit():
            return int(os.environ[size_key]), int(os.environ.get(rank_key, "0") or 0)
    return launched_by_mpi(), 0


def world_rank() -> int:
    """This process's rank as the launcher announced it (0 outside MPI), for error prefixes
    printed before or without a communicator."""
    for key in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 0


class MPICommunicator(Communicator):
    """COMM_WORLD of the job mpirun started. Rank 0 is the coordinator."""

    def __init__(self) -> None:
        from mpi4py import MPI  # imported here: only MPI runs pay for MPI_Init

        self._MPI = MPI
        self._comm = MPI.COMM_WORLD
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()
        self._buckets = None

    def allreduce_sum_(self, flat: np.ndarray) -> np.ndarray:
        self._comm.Allreduce(self._MPI.IN_PLACE, flat, op=self._MPI.SUM)
        return flat

    def overlap(self, grad: np.ndarray, offsets: np.ndarray, bucket_bytes: int):
        from .buckets import BucketedAllreduce

        self._buckets = BucketedAllreduce(self, grad, offsets, bucket_bytes)
        return self._buckets.ready

    def reduce_gradients_(self, grad: np.ndarray) -> np.ndarray:
        if self._buckets is not None and grad is self._buckets.grad:
            return self._buckets.finish()
        return self.allreduce_sum_(grad)

    def iallreduce_sum_(self, view: np.ndarray) -> object:
        return self._comm.Iallreduce(self._MPI.IN_PLACE, view, op=self._MPI.SUM)

    def test_all(self, handles: list) -> bool:
        return self._MPI.Request.Testall(handles)

    def wait_all(self, handles: list) -> None:
        self._MPI.Request.Waitall(handles)

    def broadcast_(self, flat: np.ndarray, root: int = 0) -> np.ndarray:
        self._comm.Bcast(flat, root=root)
        return flat

    def barrier(self) -> None:
        self._comm.Barrier()

    def gather_u64(self, value: int) -> np.ndarray:
        mine = np.array([value], dtype=np.uint64)
        out = np.empty(self.size, dtype=np.uint64)
        self._comm.Allgather(mine, out)
        return out

    def processes(self) -> list[str]:
        # Fixed-width bytes through the buffer interface: no pickled objects on the wire.
        width = 128
        mine = np.zeros(width, dtype=np.uint8)
        me = f"{os.getpid()}@{self._MPI.Get_processor_name()}".encode()[:width]
        mine[:len(me)] = np.frombuffer(me, dtype=np.uint8)
        out = np.empty((self.size, width), dtype=np.uint8)
        self._comm.Allgather(mine, out)
        return [bytes(row).rstrip(b"\0").decode(errors="replace") for row in out]

    def abort(self, code: int) -> None:
        """End every rank of the job now (no rank is left waiting in a collective)."""
        self.abort_world(code)

    @staticmethod
    def abort_world(code: int) -> None:
        """MPI_Abort on COMM_WORLD: every rank ends now, whether or not a communicator exists."""
        from mpi4py import MPI

        sys.stdout.flush()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(code)
