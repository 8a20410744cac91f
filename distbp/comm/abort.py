"""Abort on error: an uncaught exception on one rank ends every rank of the job at once.

Without it, the other ranks would wait for the failed one in their next collective forever
(Horovod and DDP hang there). Errors that every rank raises together (``collective``, such
as a bad config or a replica mismatch) are reported once, by rank 0, and the ranks exit
normally; any other error prints its traceback, names the rank, and aborts the job."""

from __future__ import annotations

import os
import socket
import sys
import traceback
from types import TracebackType

from .base import Communicator

_installed: list[Communicator] = []


def rank_name(comm: Communicator) -> str:
    """``rank 1 (pid 4242 on node-1)``: how messages name this process."""
    return f"rank {comm.rank} (pid {os.getpid()} on {socket.gethostname()})"


def install_abort_hook(comm: Communicator) -> None:
    """Make an exception that reaches the top of this process end the whole job through
    ``comm.abort`` (idempotent: the newest communicator is the one aborted)."""
    if _installed:
        _installed[0] = comm
        return
    _installed.append(comm)
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        current = _installed[0]
        if getattr(value, "collective", False):
            if current.rank == 0:
                previous(kind, value, tb)
            return
        text = "".join(traceback.format_exception(kind, value, tb))
        prefix = f"[rank {current.rank}] "
        report = "".join(prefix + line + "\n" for line in text.rstrip("\n").split("\n"))
        report += (f"distbp: {rank_name(current)} raised {kind.__name__}: {value}; "
                   f"ending all {current.size} ranks\n")
        # One write, so that the rank's report is not interleaved (abort_world then gives
        # mpiexec's proxy a moment to relay it).
        sys.stderr.flush()
        os.write(2, report.encode(errors="replace"))
        current.abort(getattr(value, "exit_code", 1))

    sys.excepthook = hook
