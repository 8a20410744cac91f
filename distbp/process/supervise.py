"""Name an MPI rank that a signal killed, whichever of its two processes it killed.

When a rank dies, mpiexec's launcher SIGKILLs every other rank at once and then reports one
of them as "BAD TERMINATION ... PID p": sometimes a survivor it killed itself, not the rank
that died (2 of 16 kill -9 trials here). Like torchrun's agent, the
process mpiexec launches for each rank forks; the child trains and the parent only waits for
it. When the child is killed, the parent sees by what, names the rank, and exits with the same
status; only then does mpiexec learn of the death and clean up. A parent killed along with the
others by that cleanup (the same process group) says nothing, so exactly one line names the
rank that died first.

When the parent is the one killed (kill -9 of the PID mpiexec shows), the child names the rank
instead: a thread of the child blocks reading a pipe whose only writer is the parent, so it
wakes the moment the parent dies; it reads how from the parent's /proc entry (a zombie until
its launcher reaps it; where that is gone, SIGKILL: the parent forwards the signals one sends
to stop a job), prints the same line, and SIGKILLs its own process. The child's parent-death
signal is SIGCONT, so even a stopped child wakes to do that; a child killed with its parent by
mpiexec's clean-up has SIGKILL pending before the pipe closes, and says nothing.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading


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
        alive_r, alive_w = os.pipe()  # the parent holds the only write end until it dies
        child = os.fork()
    except OSError:
        return  # train unsupervised: only the naming of a killed rank is lost
    if child == 0:
        os.close(alive_w)
        # The child must never outlive its parent: a parent killed by itself would leave it
        # training on, orphaned, in an all-reduce that never completes (mpiexec does not clean
        # up the process group of a rank that has already ended, and the child still holds its
        # connection to mpiexec). The watcher names the rank and ends the child; SIGCONT as the
        # parent-death signal (PR_SET_PDEATHSIG = 1) wakes a stopped child to let it.
        if prctl(1, signal.SIGCONT, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(1)  # the parent is gone already: do not train orphaned
        threading.Thread(target=_watch_parent, args=(alive_r, rank, parent), name="distbp-parent-watch",
                         daemon=True).start()
        return
    os.close(alive_r)

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
        os.write(2, f"distbp-train[rank {rank}]: rank {rank} (pid {child} on {socket.gethostname()}) was killed "
                    f"by {_signal_name(sig)}; mpiexec ends the job\n".encode())
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


def _signal_name(sig: int) -> str:
    return signal.Signals(sig).name if sig in signal.valid_signals() else f"signal {sig}"


def _exit_signal(pid: int) -> int | None:
    """The signal that ended ``pid``, from its /proc entry while it is a zombie (the exit code
    field, 52nd, in waitpid's form), or None where that is gone or says no signal."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        status = int(fields[49])
    except (OSError, ValueError, IndexError):
        return None
    return status & 0x7F or None


def _watch_parent(alive: int, rank: int, parent: int) -> None:
    """In the child: block until the parent dies (the pipe's write end closes), then name the
    rank as the parent would have, and end this process."""
    try:
        while os.read(alive, 64):
            pass
    except OSError:
        pass
    sig = _exit_signal(parent) or signal.SIGKILL
    os.write(2, f"distbp-train[rank {rank}]: rank {rank} (pid {parent} on {socket.gethostname()}) was killed by "
                f"{_signal_name(sig)} (its supervising process; pid {os.getpid()}, which trained, ends with it); "
                "mpiexec ends the job\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
