"""Managing this process, not communicating: what the launcher says (rank, world size,
ranks on the host), BLAS threads per rank, and the supervisor that names a rank killed by a
signal (docs/ARCHITECTURE.md, "Process model"). Standard library and threadpoolctl only."""

from .launcher import LaunchError, check_launcher, launched_by_mpi, local_world, world_rank
from .supervise import supervise_rank
from .threads import cpu_count, pin_blas_threads

__all__ = ["LaunchError", "check_launcher", "launched_by_mpi", "local_world", "world_rank", "supervise_rank",
           "cpu_count", "pin_blas_threads"]
