"""Elastic parameter-server trials (docs/ARCHITECTURE.md, "Elastic parameter server"): a worker
lost at a chosen step (kill -9 or SIGSTOP, injected by a hook in the worker, never by
sleeping), a worker that joins at a chosen step, and a server killed under ``zmq-local
--restart``. Each returns a dict of figures; tests/test_elastic.py asserts on them and
``python -m tests.faults.report`` tabulates them.

The config is the faults' (tests/faults/mpi_faults.py BASE, FINAL steps). The reference for a
disturbed run is the same job undisturbed; where ``composite`` is asked for, also the run that
is bitwise what the disturbed one must be: the same job to the step before the change with the
old workers, resumed from that checkpoint with the new ones."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np

from .mpi_faults import BASE, FINAL, final_params, reference
from .zmq_faults import (HOLD_WORKER, LIVENESS, TIMEOUT_S, ZMQ_LOCAL, Job, Proc, _reference, _sets, _sets_final, _wait,
                         _wait_for_file, _with, free_endpoint, server_pid_of, wait_for_step)

# A worker that, holding rank RANK at step STEP (counted from 1), is lost there before it sends
# its gradient: kill -9 or SIGSTOP of itself. MARK (created once, O_EXCL) records the moment,
# and keeps the worker that takes over rank RANK when the step is re-cut from doing the same.
LOSE_WORKER = """
import os, signal, sys, time
from distbp.comm import zmq_ps
RANK, STEP, HOW, MARK = {rank}, {step}, {how!r}, {mark!r}
original = zmq_ps.ZMQWorker.step
def lost(self, grad, params, update, stats):
    if self.rank == RANK and self._step == STEP - 1:
        try:
            fd = os.open(MARK, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            fd = None
        if fd is not None:
            os.write(fd, repr(time.time()).encode())
            os.close(fd)
            os.kill(os.getpid(), getattr(signal, HOW))
    return original(self, grad, params, update, stats)
zmq_ps.ZMQWorker.step = lost
from distbp.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""

# Both at once: rank LOST stops itself at step STEP (MARK as above), and rank 0 holds at step
# HOLD_STEP until GO exists (HELD says it holds), so that the stopped worker, once continued,
# asks to join again while the job certainly still runs.
STOP_THEN_HOLD = """
import os, signal, sys, time
from distbp.comm import zmq_ps
LOST, STEP, MARK, HOLD_STEP, HELD, GO = {lost}, {step}, {mark!r}, {hold_step}, {held!r}, {go!r}
original = zmq_ps.ZMQWorker.step
def hooked(self, grad, params, update, stats):
    if self.rank == LOST and self._step == STEP - 1 and not os.path.exists(MARK):
        open(MARK, "w").close()
        os.kill(os.getpid(), signal.SIGSTOP)
    if self.rank == 0 and self._step == HOLD_STEP - 1 and not os.path.exists(GO):
        open(HELD, "w").close()
        while not os.path.exists(GO):
            time.sleep(0.01)
    return original(self, grad, params, update, stats)
zmq_ps.ZMQWorker.step = hooked
from distbp.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def _state(pid: int) -> str:
    """The process state letter of /proc/PID/stat (T: stopped), or "" once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _worlds(run: Path) -> dict[int, int]:
    """step -> world_size, from metrics.jsonl (every step is logged under BASE)."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "world_size" in rec:
            out[rec["step"]] = rec["world_size"]
    return out


def _logged_at(run: Path, step: int, procs: list[Proc], timeout: float = 60) -> float:
    """time.time() when metrics.jsonl first shows ``step`` (polled every 10 ms)."""
    path, deadline = run / "metrics.jsonl", time.monotonic() + timeout
    needle = f'"step": {step}, "epoch"'
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text():
            return time.time()
        if all(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    return float("nan")


def _step_seconds(run_s: float) -> float:
    return run_s / FINAL


def composite(tmp_dir: Path, name: str, before: int, n_before: int, n_after: int) -> np.ndarray:
    """The final parameters of a job run with n_before workers to step ``before`` (a checkpoint
    there), then resumed with n_after to FINAL: bitwise what a job whose workers changed from
    n_before to n_after after step ``before`` must end with."""
    root = Path(tmp_dir) / name
    root.mkdir(parents=True)
    job, run = Job(root), root / "run"
    try:
        job.run("first", n_before, run, [*BASE, f"train.max_steps={before}"], LIVENESS, ("--resume", "never"))
        job.run("then", n_after, run, _sets_final(), LIVENESS, ("--resume", "auto"))
    finally:
        job.kill_all()
    return final_params(run, FINAL)


def _common(root: Path, n: int, min_workers: int, max_workers: int) -> tuple[Job, Path, str, tuple]:
    (root / "job").mkdir(parents=True)
    comm = (*LIVENESS, f"comm.min_workers={min_workers}", f"comm.max_workers={max_workers}")
    return Job(root / "job"), root / "run", free_endpoint(), comm


def lose_worker(tmp_dir: str | Path, seed: int, how: str = "SIGKILL", n: int = 3, composite_check: bool = False) -> dict:
    """kill -9 (or SIGSTOP) of a random worker at a random step, with comm.min_workers n-1: the
    server re-cuts that step among the n-1 left and the job ends with exit 0, no restart, no
    checkpoint reloaded; its final parameters within the N-invariance tolerance of the
    undisturbed job. The figures: completed, max|Δ| against the undisturbed job, seconds from
    the fault to the step's end (target: comm.timeout_s + 2 steps)."""
    tmp_dir = Path(tmp_dir)
    rng = random.Random(seed)
    rank, at_step = rng.randrange(n), rng.randint(6, 30)
    root = tmp_dir / f"elastic-{how.lower()}-worker-seed{seed}"
    job, run, endpoint, comm = _common(root, n, n - 1, n)
    mark = root / "lost-at"
    script = LOSE_WORKER.format(rank=rank, step=at_step, how=how, mark=str(mark))
    t0 = time.monotonic()
    server = job.server("server", endpoint, n, run, _sets_final(), comm, ("--resume", "never"))
    workers = [job.worker(f"worker{i}", endpoint, _sets_final(), comm, script) for i in range(n)]
    try:
        done_at = _logged_at(run, at_step, [server])
        code = _wait(server, 120)
        run_s = time.monotonic() - t0
        stopped = [w for w in workers if _state(w.pid) == "T"]
        codes = {w.name: _wait(w, 10) for w in workers if w not in stopped}
        victim = stopped[0] if stopped else next((w for w in workers if codes[w.name] == -signal.SIGKILL), None)
        victim_says = ""
        if stopped:
            os.kill(victim.pid, signal.SIGCONT)  # it reads the server's drop and leaves
            codes[victim.name] = _wait(victim, 15)
            victim_says = victim.stderr
    finally:
        leftovers = sum(p.poll() is None for p in job.procs)
        job.kill_all()
    lost_at = float(mark.read_text()) if mark.exists() else float("nan")
    survivors = [c for name, c in codes.items() if victim is None or name != victim.name]
    final = final_params(run, FINAL) if code == 0 else None
    ref, single = _reference(tmp_dir, n), reference(tmp_dir, 1)
    worlds = _worlds(run) if (run / "metrics.jsonl").exists() else {}
    expected_worlds = {s: (n if s < at_step else n - 1) for s in range(1, FINAL + 1)}
    figs = {"fault": f"{how} worker, elastic", "seed": seed, "rank": rank, "at_step": at_step, "exit_code": code,
            "completed": code == 0 and all(c == 0 for c in survivors) and len(survivors) == n - 1,
            "survivor_exits": survivors, "victim_exit": codes.get(victim.name) if victim else None,
            "max_abs_diff": float(np.abs(final - ref).max()) if final is not None else float("inf"),
            "max_abs_diff_single": float(np.abs(final - single).max()) if final is not None else float("inf"),
            "seconds_fault_to_step_end": done_at - lost_at, "step_s": _step_seconds(run_s),
            "limit_s": TIMEOUT_S + 2 * _step_seconds(run_s) if how == "SIGSTOP" else 2 * _step_seconds(run_s) + 1.0,
            "world_sizes_as_expected": worlds == expected_worlds,
            "no_restart": "resumed from" not in server.stdout and server.stderr.count("parameter server on") == 1,
            "says": [line for line in (server.stdout + server.stderr).splitlines() if "goes on without it" in line][:1],
            "victim_told": how != "SIGSTOP" or "goes on without this worker" in victim_says,
            "leftover_processes": leftovers}
    if composite_check and final is not None:
        figs["bitwise_composite"] = bool(np.array_equal(final, composite(tmp_dir, root.name + "-composite",
                                                                         at_step - 1, n, n - 1)))
    return figs


def join_worker(tmp_dir: str | Path, seed: int, n: int = 2, composite_check: bool = False) -> dict:
    """A worker started while rank 0 holds at a random step K, with comm.max_workers n+1: its
    hello is read during step K, it is admitted at the step boundary and computes from step
    K+1 on; every process exits 0, metrics.jsonl says world size n to K and n+1 after, and the
    final parameters are within the N-invariance tolerance of the undisturbed job."""
    tmp_dir = Path(tmp_dir)
    at_step = random.Random(seed).randint(6, 30)
    root = tmp_dir / f"elastic-join-seed{seed}"
    job, run, endpoint, comm = _common(root, n, n, n + 1)
    held, go = root / "held", root / "go"
    hold = HOLD_WORKER.format(rank=0, step=at_step, held=str(held), go=str(go))
    server = job.server("server", endpoint, n, run, _sets_final(), comm, ("--resume", "never"))
    workers = [job.worker(f"worker{i}", endpoint, _sets_final(), comm, hold) for i in range(n)]
    try:
        _wait_for_file(held, [server, *workers])
        joiner = job.worker("joiner", endpoint, _sets_final(), comm)
        deadline = time.monotonic() + 30
        while "asks to join" not in server.stdout and time.monotonic() < deadline and joiner.poll() is None:
            time.sleep(0.01)
        asked = "asks to join" in server.stdout
        go.touch()
        code = _wait(server, 120)
        codes = [_wait(w, 15) for w in [*workers, joiner]]
    finally:
        leftovers = sum(p.poll() is None for p in job.procs)
        job.kill_all()
    final = final_params(run, FINAL) if code == 0 else None
    worlds = _worlds(run) if (run / "metrics.jsonl").exists() else {}
    said = server.stdout
    admitted = asked and f"worker {n} joined: " in said and f"world size {n + 1} from step {at_step + 1}" in said
    figs = {"fault": "worker joins, elastic", "seed": seed, "at_step": at_step, "exit_code": code,
            "admitted": admitted, "completed": code == 0 and all(c == 0 for c in codes), "exits": codes,
            "max_abs_diff": float(np.abs(final - _reference(tmp_dir, n)).max()) if final is not None else float("inf"),
            "world_sizes_as_expected": worlds == {s: (n if s <= at_step else n + 1) for s in range(1, FINAL + 1)},
            "leftover_processes": leftovers}
    if composite_check and final is not None:
        figs["bitwise_composite"] = bool(np.array_equal(final, composite(tmp_dir, root.name + "-composite",
                                                                         at_step, n, n + 1)))
    return figs


def restart_server(tmp_dir: str | Path, seed: int, n: int = 2) -> dict:
    """kill -9 of the server of ``zmq-local n --restart 1`` at a random step: the launcher starts
    it again, it resumes from its newest checkpoint, the workers rejoin (comm.reconnect_s), the
    job completes (exit 0) and its final parameters are bitwise the undisturbed job's."""
    tmp_dir = Path(tmp_dir)
    at_step = random.Random(seed).randint(6, 30)
    root = tmp_dir / f"elastic-restart-server-seed{seed}"
    root.mkdir(parents=True)
    run = root / "run"
    comm = _with(list(LIVENESS), "comm.reconnect_s=30")
    cmd = [sys.executable, str(ZMQ_LOCAL), "--restart", "1", str(n), *_sets([*_sets_final(), *comm]),
           "--run-dir", str(run), "--resume", "never"]
    launcher = Proc("launcher", cmd, root, root)
    try:
        wait_for_step(run, at_step, [launcher], timeout=60)
        pid = server_pid_of(run)
        os.kill(pid, signal.SIGKILL)
        code = _wait(launcher, 120)
    finally:
        leftovers = int(launcher.poll() is None)
        if leftovers:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.popen.wait(timeout=10)
    text = launcher.stdout + launcher.stderr
    final = final_params(run, FINAL) if code == 0 else None
    return {"fault": "kill -9 server, zmq-local --restart 1", "seed": seed, "at_step": at_step, "exit_code": code,
            "completed": code == 0, "restarted": f"server (pid {pid}) was killed by SIGKILL" in text
            and "resumed from" in text,
            "bitwise": final is not None and bool(np.array_equal(final, _reference(tmp_dir, n))),
            "leftover_processes": leftovers}


def drop_and_rejoin(tmp_dir: str | Path, seed: int, n: int = 3) -> dict:
    """Worker n-1 stops itself at a random step K (SIGSTOP: a hung container); the server drops
    it after comm.timeout_s and goes on with n-1. Continued, it hears that it was dropped,
    rejoins (comm.reconnect_s) and is admitted at the end of step K+3 (rank 0 holds there until
    its hello is read): world size n, n-1 from K, n again after K+3; every process exits 0."""
    tmp_dir = Path(tmp_dir)
    at_step = random.Random(seed).randint(6, 30)
    root = tmp_dir / f"elastic-rejoin-seed{seed}"
    job, run, endpoint, comm = _common(root, n, n - 1, n)
    comm = _with(list(comm), "comm.reconnect_s=30")
    mark, held, go = root / "stopped", root / "held", root / "go"
    script = STOP_THEN_HOLD.format(lost=n - 1, step=at_step, mark=str(mark), hold_step=at_step + 3, held=str(held),
                                   go=str(go))
    server = job.server("server", endpoint, n, run, _sets_final(), comm, ("--resume", "never"))
    workers = [job.worker(f"worker{i}", endpoint, _sets_final(), comm, script) for i in range(n)]
    victim = None
    try:
        _wait_for_file(held, [server])  # the others reached step K+3: the stopped one was dropped
        victim = next(w for w in workers if _state(w.pid) == "T")
        os.kill(victim.pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while "asks to join" not in server.stdout and time.monotonic() < deadline and victim.poll() is None:
            time.sleep(0.01)
        go.touch()
        code = _wait(server, 120)
        codes = [_wait(w, 15) for w in workers]
    finally:
        leftovers = sum(p.poll() is None for p in job.procs)
        job.kill_all()
    said = server.stdout
    final = final_params(run, FINAL) if code == 0 else None
    worlds = _worlds(run) if (run / "metrics.jsonl").exists() else {}
    expected = {s: (n - 1 if at_step <= s <= at_step + 3 else n) for s in range(1, FINAL + 1)}
    pid = victim.pid if victim else -1
    return {"fault": "SIGSTOP worker, dropped, continued, rejoins", "seed": seed, "at_step": at_step,
            "exit_code": code, "completed": code == 0 and all(c == 0 for c in codes), "exits": codes,
            "dropped": f":{pid}) silent for {TIMEOUT_S:g} s" in said and "goes on without it" in said,
            "admitted": f"worker {n - 1} joined: " in said and said.count(f":{pid}") >= 3
            and f"world size {n} from step {at_step + 4}" in said,
            "rejoined_said": "goes on without this worker" in (victim.stderr if victim else "")
            and "trying to rejoin" in (victim.stderr if victim else ""),
            "world_sizes_as_expected": worlds == expected,
            "max_abs_diff": float(np.abs(final - _reference(tmp_dir, n)).max()) if final is not None else float("inf"),
            "leftover_processes": leftovers}
