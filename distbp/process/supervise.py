"""Name an MPI rank that a signal killed.

When a rank dies, mpiexec's launcher SIGKILLs every other rank at once and then reports one
of them as "BAD TERMINATION ... PID p": sometimes a survivor it killed itself, not the rank
that died (2 of 16 kill -9 trials here). Like torchrun's agent, the
process mpiexec launches for each rank forks; the child trains and the parent only waits for
it. When the child is killed, the parent sees by what, names the rank, and exits with the same
status; only then does mpiexec learn of the death and clean up. A parent killed along with the
others by that cleanup (the same process group) says nothing, so exactly one line names the
rank that died first.
"""

from __future__ import annotations

import os
import signal
import socket
import sys


def _prctl():
    """libc's prctl, or None where there is none (not Linux, or no glibc-like libc)."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def supervise_rank(rank: int) -> None:
    """Fork. In the child (which trains) return at once; in the parent, forward signals to the
    child, wait for it, and exit with its status, naming ``rank`` if a signal killed it. Only
    on Linux, where the child can be made to die with its parent; elsewhere nothing happens."""
    prctl = _prctl() if sys.platform.startswith("linux") else None
    if prctl is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    try:
        child = os.fork()
    except OSError:
        return  # train unsupervised: only the naming of a killed rank is lost
    if child == 0:
        # The kernel SIGKILLs the child when the parent dies (PR_SET_PDEATHSIG = 1). Without
        # that, a parent killed by itself would leave the child training on, orphaned, in an
        # all-reduce that never completes: mpiexec does not clean up the process group of a
        # rank that has already ended, and the child still holds its connection to mpiexec.
        if prctl(1, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(1)  # the parent is gone already: do not train orphaned
        return

    def forward(signum: int, frame: object) -> None:
        # mpiexec signals the process it launched; the one that trains must hear it.
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, forward)
    _, status = os.waitpid(child, 0)  # retried after each forwarded signal (PEP 475)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.valid_signals() else f"signal {sig}"
        os.write(2, f"distbp-train[rank {rank}]: rank {rank} (pid {child} on {socket.gethostname()}) was killed "
                    f"by {name}; mpiexec ends the job\n".encode())
        # Die the same way, so that mpiexec sees this rank killed by that signal, as it would
        # have without the fork (an exit code 128 + n would read as a normal exit to it).
        try:
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        except (OSError, ValueError):
            pass
        os._exit(128 + sig)
    # os._exit: this copy of the interpreter must not run atexit handlers or flush buffers
    # that belong to the child.
    os._exit(os.waitstatus_to_exitcode(status))
