"""python -m tests.faults.report [--trials N]: N trials of each MPI fault, and a table of figures."""

from __future__ import annotations

import argparse
import signal
import tempfile

from .mpi_faults import kill_random_rank, signal_rank0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.report")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--verbose", action="store_true", help="print every trial's figures")
    args = parser.parse_args()
    faults = {"kill -9 random rank": lambda d, s: kill_random_rank(d, s),
              "SIGTERM to mpiexec": lambda d, s: signal_rank0(d, s, signal.SIGTERM),
              "SIGINT to mpiexec": lambda d, s: signal_rank0(d, s, signal.SIGINT)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="distbp-faults-") as tmp:
        for name, trial in faults.items():
            figs = [trial(tmp, seed) for seed in range(args.trials)]
            if args.verbose:
                for f in figs:
                    print(f)
            exits = [f["exit_code"] for f in figs]
            rows.append((name, len(figs),
                         f"{max(f['seconds_to_exit'] for f in figs):.2f}",
                         "yes" if all(f["exited_nonzero"] for f in figs) else "no",
                         ",".join("hung" if c is None else str(c) for c in exits),
                         f"{sum(f['checkpoint_loads'] for f in figs)}/{len(figs)}",
                         f"{sum(f['bitwise_resume'] for f in figs)}/{len(figs)}",
                         str(sum(f["leftover_processes"] for f in figs))))
    head = ("fault", "trials", "max s to exit", "all exits non-zero", "exit codes",
            "checkpoints intact", "bitwise resumes", "leftover procs")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print("(exit waits up to 15 s; 'hung' = mpiexec still running then, killed and counted as a leftover)")
    print("ZeroMQ fault trials (kill -9 / SIGSTOP a worker, kill -9 the server) live in tests/test_zmq.py; "
          "not repeated here.")


if __name__ == "__main__":
    main()
