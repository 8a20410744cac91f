"""launch/mpirun-elastic N --max-restarts K [--hostfile F] [distbp-train args...]: N MPI ranks
of distbp-train, started again from the newest valid checkpoint when the job fails, at most K
times (torchrun's --max-restarts, for MPI, which cannot shrink a communicator after a rank dies).

    launch/mpirun-elastic 4 --max-restarts 3 --config C --run-dir runs/r
    launch/mpirun-elastic 8 --max-restarts 2 --hostfile hosts --run-dir /shared/run

Each restart resumes from the newest checkpoint that verifies (``--resume auto``), so the job
ends as the uninterrupted one would: bitwise with the same N, within the N-invariance drift
otherwise; the steps since that checkpoint are computed again. With ``--hostfile`` the file is
read again before every start, so a dead host can be dropped from it meanwhile: the job then
runs with as many ranks as its slots give, at most N (``host:4`` or ``host slots=4`` lines;
a bare host is one slot).

Not restarted: a job that ends with 0, with 2 (a bad config or command line: it would fail
again), with 130 or 143 (SIGINT or SIGTERM stopped it after a checkpoint), or that this
launcher stopped by forwarding SIGINT, SIGTERM or SIGHUP (run the same command to continue). After K restarts it gives up with the
last error and the job's exit code. The launcher: $MPIRUN, else the mpirun next to the Python,
else mpirun on PATH; extra options in $MPIRUN_ARGS; the Python: sys.executable (the wrapper
launch/mpirun-elastic picks it as the other launchers do).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mpirun_watch import watched  # noqa: E402
from zmq_local import without_resume  # noqa: E402

NO_RESTART = {0: "done", 2: "a bad config or command line", 130: "stopped by SIGINT", 143: "stopped by SIGTERM"}


def slots(hostfile: Path) -> int:
    """The slots of a hostfile: MPICH's ``host:N``, Open MPI's ``host slots=N``, or ``host`` (1)."""
    total = 0
    for line in hostfile.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^\S+?(?::(\d+))?(?:\s+slots=(\d+))?\s*$", line)
        if m is None:
            raise SystemExit(f"mpirun-elastic: error: {hostfile}: cannot read the line {line!r} (host:N or host slots=N)")
        total += int(m.group(1) or m.group(2) or 1)
    return total


def launcher() -> tuple[list[str], str]:
    """The mpirun command and its hostfile option."""
    if os.environ.get("MPIRUN"):
        cmd = shlex.split(os.environ["MPIRUN"])
    else:
        nearby = Path(sys.executable).parent / "mpirun"
        cmd = [str(nearby) if nearby.exists() else (shutil.which("mpirun") or "mpirun")]
    version = subprocess.run([*cmd, "--version"], capture_output=True, text=True).stdout
    return cmd, "--hostfile" if re.search(r"Open MPI|OpenRTE|PRRTE", version) else "-f"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mpirun-elastic", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("n", type=int, metavar="N", help="MPI ranks (at most; fewer if the hostfile has fewer slots)")
    ap.add_argument("--max-restarts", type=int, required=True, metavar="K", help="restarts at most (0: none)")
    ap.add_argument("--hostfile", type=Path, metavar="F", help="read again before every start")
    args, train = ap.parse_known_args(argv)
    if args.n < 1 or args.max_restarts < 0:
        ap.error("N must be at least 1 and --max-restarts at least 0")
    mpirun, hostopt = launcher()
    extra = shlex.split(os.environ.get("MPIRUN_ARGS", ""))
    restarts = 0
    while True:
        hosts: list[str] = []
        n = args.n
        if args.hostfile is not None:
            if not args.hostfile.is_file():
                print(f"mpirun-elastic: error: no hostfile {args.hostfile}", file=sys.stderr)
                return 2
            n = min(args.n, slots(args.hostfile))
            if n == 0:
                print(f"mpirun-elastic: error: {args.hostfile} has no host left", file=sys.stderr)
                return 1
            hosts = [hostopt, str(args.hostfile)]
        if restarts:
            print(f"mpirun-elastic: restart {restarts} of {args.max_restarts}: {n} rank(s), from the newest checkpoint",
                  file=sys.stderr, flush=True)
        run = train if restarts == 0 else [*without_resume(train), "--resume", "auto"]
        cmd = [*mpirun, *hosts, "-n", str(n), *extra, sys.executable, "-m", "distbp.cli", *run,
               "--set", "comm.backend=mpi"]
        code, said, signalled = watched(cmd, "mpirun-elastic")
        if code in NO_RESTART or signalled is not None:
            return code
        why = said or f"exit {code}"
        if restarts >= args.max_restarts:
            print(f"mpirun-elastic: giving up after {restarts} restart(s) (--max-restarts {args.max_restarts}); "
                  f"the last error: {why}", file=sys.stderr, flush=True)
            return code
        restarts += 1
        print(f"mpirun-elastic: the job failed (exit {code}): {why}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
