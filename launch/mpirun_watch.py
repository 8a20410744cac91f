"""Run an MPI launcher's command line (what launch/mpirun-hosts builds) and watch it: the ranks'
output passes through as it is, while the launcher's own error stack (MPICH hydra's
``[mpiexec@host] ...`` lines) is replaced by one line that names the host that was lost and
the rank it held, from the coordinator's ``ranks: 0=pid P@host1, 1=pid Q@host2`` log line:

    mpirun-hosts: lost host2 (rank 1, pid 28): Connection to host2 closed by remote host; mpiexec ended the job

Exits with the launcher's exit code. SIGINT, SIGTERM and SIGHUP are forwarded to it (mpiexec
forwards them to every rank, which checkpoint and stop). DISTBP_DEBUG=1 keeps the launcher's
own lines too."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

RANKS = re.compile(r"ranks: (.*)$")
RANK = re.compile(r"(\d+)=pid (\d+)@([^,\s]+)")
CLOSED = re.compile(r"Connection to (\S+) closed")
LAUNCHER = re.compile(r"^\[(mpiexec|proxy:[^\]]*)@")  # hydra's own lines, each one frame of its stack
ERROR = re.compile(r"error:|was killed by|silent for|: lost ")  # a line that says what went wrong


class Watch:
    def __init__(self, prog: str = "mpirun-hosts") -> None:
        self.prog = prog
        self.hosts: dict[str, list[tuple[int, int]]] = {}  # host -> [(rank, pid)]
        self.lost: list[tuple[str, str]] = []  # (host, the line that said so)
        self.hidden: list[str] = []
        self.last_error: str | None = None  # the last line of the ranks' output that says what went wrong
        self.lock = threading.Lock()

    def line(self, text: str, out) -> None:
        m = RANKS.search(text)
        if m:
            for rank, pid, host in RANK.findall(m.group(1)):
                self.hosts.setdefault(host, []).append((int(rank), int(pid)))
        closed = CLOSED.search(text)
        with self.lock:
            if closed:
                self.lost.append((closed.group(1), text.strip()))
            if (closed or LAUNCHER.match(text)) and not os.environ.get("DISTBP_DEBUG"):
                self.hidden.append(text)
                return
        if ERROR.search(text):
            self.last_error = text.strip()
        out.write(text)
        out.flush()

    def summary(self, code: int) -> str | None:
        if code == 0 or not (self.lost or self.hidden):
            return None
        if self.lost:
            host, said = self.lost[0]
            held = self.hosts.get(host) or self.hosts.get(host.split(".")[0], [])
            ranks = ", ".join(f"rank {r}, pid {p}" for r, p in held) or "its ranks"
            return f"{self.prog}: lost {host} ({ranks}): {said.rstrip('.')}; mpiexec ended the job (exit {code})"
        first = self.hidden[0].strip()
        return (f"{self.prog}: mpiexec ended the job (exit {code}): {first} "
                "(set DISTBP_DEBUG=1 for the launcher's whole message)")


def watched(argv: list[str], prog: str = "mpirun-hosts") -> tuple[int, str | None, int | None]:
    """Run ``argv`` watched: (its exit code, what went wrong in one line or None, the signal
    forwarded to it or None). The line is the one naming what was lost, which is also
    printed, else the ranks' last error line."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    got: list[int] = []

    def forward(sig: int, _frame: object) -> None:
        got.append(sig)
        proc.send_signal(sig)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    watch = Watch(prog)
    readers = [threading.Thread(target=lambda src=src, out=out: [watch.line(t, out) for t in src], daemon=True)
               for src, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))]
    try:
        for r in readers:
            r.start()
        code = proc.wait()
        for r in readers:
            r.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    said = watch.summary(code)
    if said:
        print(said, file=sys.stderr, flush=True)
    return code, said or (watch.last_error if code != 0 else None), got[0] if got else None


def main(argv: list[str]) -> int:
    return watched(argv)[0]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
