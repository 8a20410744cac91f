"""What the launcher says about this process, read from the environment without importing
mpi4py (which would initialize MPI in every plain single-process run): the world size and
rank mpirun/mpiexec announced, the ranks on this host, and launchers distbp does not run
under (torchrun, a Slurm step without PMI), refused with the command to use."""

from __future__ import annotations

import os

from ..errors import EXIT_USAGE, DistbpError


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
