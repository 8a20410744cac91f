"""The MPI communicator (mpi4py): gradients summed by one in-place ``Allreduce`` on the flat
buffer — uppercase, buffer interface, no pickling, no per-layer calls, no copies."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from ..process.launcher import LaunchError, check_launcher, launched_by_mpi, local_world, world_rank  # noqa: F401
from .base import Communicator


ABORT_GRACE_S = 0.2


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
        # MPI_Abort tears the job down at once: output still in the pipe to mpiexec's proxy
        # (the message naming the error) would be lost without a moment to relay it.
        time.sleep(ABORT_GRACE_S)
        MPI.COMM_WORLD.Abort(code)
