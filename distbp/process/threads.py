"""BLAS threads per rank: N ranks on a host with C cores each get C // N threads, so ranks ×
threads never oversubscribe the cores (oversubscribed OpenBLAS threads spin and slow every
rank down)."""

from __future__ import annotations

import os


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, as a container or taskset sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def pin_blas_threads(threads: int | None, local_ranks: int) -> int:
    """Limit the BLAS pool of this process to ``threads`` (None: cores // local_ranks, at
    least 1) with threadpoolctl, which works after numpy is loaded; returns the limit."""
    from threadpoolctl import threadpool_limits

    n = threads if threads is not None else max(1, cpu_count() // max(1, local_ranks))
    # Kept alive for the process: the limit lasts as long as this object.
    global _limits
    _limits = threadpool_limits(limits=n, user_api="blas")
    return n


_limits = None
