"""python -m tests.faults.report [--trials N]: N trials of each fault (MPI and ZeroMQ), one
hostile-message trial, and a table of the figures."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

# The ZeroMQ trials share test_mpi's config, imported as pytest imports it (tests/ on the path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from .config_faults import BOMB_LIMIT_S, yaml_bomb  # noqa: E402
from .flood_faults import connection_flood  # noqa: E402
from .elastic_faults import drop_and_rejoin, join_worker, lose_worker, restart_server  # noqa: E402
from .mpi_faults import (EXIT_WITHIN_S, STOP_TIMEOUT_S, elastic_kill, kill_random_rank, signal_job,  # noqa: E402
                         stop_random_rank)
from .rundir_faults import all_damaged, two_jobs  # noqa: E402
from .zmq_faults import (TIMEOUT_S, Job, hostile_trial, kill_server, kill_server_launched, kill_worker,  # noqa: E402
                         nan_worker, rogue_worker, sigstop_server_launched, signal_server)


def _row(name: str, figs: list[dict], limit: float) -> tuple:
    exits = [f["exit_code"] for f in figs]
    named = [f.get("names_rank", f.get("names_lost")) for f in figs]
    return (name, len(figs), f"{max(f['seconds_to_exit'] for f in figs):.2f}", f"{limit:g}",
            ",".join("hung" if c is None else str(c) for c in exits),
            "-" if named[0] is None else f"{sum(map(bool, named))}/{len(figs)}",
            f"{sum(f['checkpoint_loads'] for f in figs)}/{len(figs)}",
            f"{sum(f['bitwise_resume'] for f in figs)}/{len(figs)}",
            str(sum(f["leftover_processes"] for f in figs)))


def _elastic_row(name: str, figs: list[dict]) -> tuple:
    def count(key: str) -> str:
        return f"{sum(bool(f.get(key)) for f in figs)}/{len(figs)}" if key in figs[0] else "-"

    def worst(key: str, fmt: str) -> str:
        return format(max(f[key] for f in figs), fmt) if key in figs[0] else "-"

    over = [f for f in figs if "limit_s" in f and f["seconds_fault_to_step_end"] > f["limit_s"]]
    return (name, len(figs), count("completed"), count("admitted") if "admitted" in figs[0] else count("restarted"),
            count("bitwise") if "bitwise" in figs[0] else count("world_sizes_as_expected"),
            worst("max_abs_diff", ".2e"), worst("max_abs_diff_single", ".2e"),
            worst("seconds_fault_to_step_end", ".2f"), worst("limit_s", ".2f"),
            f"{len(over)}" if "limit_s" in figs[0] else "-", str(sum(f["leftover_processes"] for f in figs)))


def _table(head: tuple, rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.report")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--verbose", action="store_true", help="print every trial's figures")
    parser.add_argument("--only", default="", help="run only the faults whose name contains this text")
    args = parser.parse_args()
    zmq_limit = 2 * TIMEOUT_S
    faults = [("MPI: kill -9 random rank", kill_random_rank, EXIT_WITHIN_S),
              ("MPI: SIGTERM to mpiexec", lambda d, s: signal_job(d, s, signal.SIGTERM), EXIT_WITHIN_S),
              ("MPI: SIGINT to mpiexec", lambda d, s: signal_job(d, s, signal.SIGINT), EXIT_WITHIN_S),
              ("MPI: SIGTERM to rank 0", lambda d, s: signal_job(d, s, signal.SIGTERM, "rank0"), EXIT_WITHIN_S),
              ("MPI: kill -9 random rank's supervisor", lambda d, s: kill_random_rank(d, s, target="supervisor"),
               EXIT_WITHIN_S),
              ("MPI: SIGSTOP random rank", stop_random_rank, 2 * STOP_TIMEOUT_S),
              ("MPI: kill -9 random rank under mpirun-elastic (completes)", elastic_kill, 120.0),
              ("ZMQ: kill -9 worker", kill_worker, zmq_limit),
              ("ZMQ: kill -9 server", kill_server, zmq_limit),
              ("ZMQ: SIGTERM to server", lambda d, s: signal_server(d, s, signal.SIGTERM), zmq_limit),
              ("ZMQ: SIGINT to server", lambda d, s: signal_server(d, s, signal.SIGINT), zmq_limit),
              ("ZMQ: SIGSTOP server (zmq-local)", sigstop_server_launched, 2 * TIMEOUT_S + 2.0),
              ("ZMQ: kill -9 server (zmq-local)", kill_server_launched, zmq_limit),
              ("ZMQ: rogue worker with a valid key", rogue_worker, 5.0),
              ("ZMQ: NaN-loss worker", lambda d, s: nan_worker(d, s, what="loss"), zmq_limit),
              ("run dir: all checkpoints damaged", all_damaged, 30.0),
              ("run dir: two jobs", two_jobs, 30.0),
              ("config: YAML bomb", yaml_bomb, BOMB_LIMIT_S)]
    elastic = [("ZMQ elastic: kill -9 random worker", lambda d, s: lose_worker(d, s, "SIGKILL")),
               ("ZMQ elastic: SIGSTOP random worker", lambda d, s: lose_worker(d, s, "SIGSTOP")),
               ("ZMQ elastic: a worker joins", join_worker),
               ("ZMQ elastic: SIGSTOP worker, continued: dropped, rejoins", drop_and_rejoin),
               ("ZMQ elastic: kill -9 server, zmq-local --restart 1", restart_server)]
    rows, elastic_rows = [], []
    with tempfile.TemporaryDirectory(prefix="distbp-faults-") as tmp:
        def trials(name: str, trial) -> list[dict] | None:
            if args.only not in name:
                return None
            figs = [trial(tmp, seed) for seed in range(args.trials)]
            if args.verbose:
                for f in figs:
                    print(f)
            return figs

        for name, trial in elastic:
            if (figs := trials(name, trial)) is not None:
                elastic_rows.append(_elastic_row(name, figs))
        for name, trial, limit in faults:
            if (figs := trials(name, trial)) is not None:
                rows.append(_row(name, figs, limit))
        floods = []
        if args.only in "connection flood":
            floods = [connection_flood(200, cap) for cap in (18, None)]  # 18: the default for 1 worker
        hostile = None
        if not args.only or args.only in "hostile":
            hostile_dir = Path(tmp) / "hostile"
            hostile_dir.mkdir()
            job = Job(hostile_dir)
            try:
                hostile = hostile_trial(job, hostile_dir)
            finally:
                job.kill_all()
    if elastic_rows:
        _table(("elastic fault", "trials", "completed", "admitted/restarted", "world sizes/bitwise",
                "worst max|d| vs undisturbed", "vs 1 process", "worst s fault to step end", "limit s", "over limit",
                "leftover procs"), elastic_rows)
        print("(completed: the job ended with exit 0, every surviving worker too, no process restarted except "
              "the server under --restart; world sizes: metrics.jsonl's world_size is N before the change and "
              f"N-1 (N+1) from it on; limit: comm.timeout_s ({TIMEOUT_S:g} s) + 2 steps for SIGSTOP, 1 s + 2 steps "
              "for kill -9, which the server sees at its next send)")
        print()
    for f in floods:
        cap = (f"comm.max_connections {f['max_connections']}: refused {f['refused']}, bound "
               f"{f['bound_mib']:.0f} MiB" if f["max_connections"] else "no cap")
        print(f"connection flood, {f['senders']} connections x 16 messages of {f['message_mib']:.2f} MiB: server RSS "
              f"+{f['rss_growth_mib']:.0f} MiB ({cap})")
    if floods:
        print()
    if not rows:
        return
    _table(("fault", "trials", "max s to exit", "limit s", "exit codes", "lost one named", "checkpoints intact",
            "bitwise resumes", "leftover procs"), rows)
    print("('lost one named': MPI, distbp's 'rank N (pid P on HOST) was killed by SIGKILL' names the killed "
          "rank; ZeroMQ, the server names the worker, each worker the server. 'hung' = still running at the "
          "limit, then killed and counted as a leftover)")
    if hostile is None:
        return
    print()
    print(f"hostile ZeroMQ messages: tried {hostile['messages_tried']}, accepted {hostile['accepted_hostile']} "
          f"(dropped and counted {hostile['dropped']}; the rest were well-formed hellos of another config, refused, "
          f"and a frame larger than any gradient, cut off by libzmq); final parameters equal to a clean run: "
          f"{'yes' if hostile['final_params_equal_clean_run'] else 'no'}")
    print("dropped by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(hostile["dropped_by_reason"].items())))


if __name__ == "__main__":
    main()
