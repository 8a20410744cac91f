"""MPI fault trials: kill -9 one rank of ``mpiexec -n 3 distbp-train`` (its training process,
or the supervising process mpiexec launched) or SIGSTOP one at a random step, or send
SIGTERM/SIGINT to mpiexec; each trial returns a dict of figures.

Every job runs in its own session with its output in files, and every process whose command
line holds the trial's unique run directory is killed (and counted) before a trial returns."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from distbp.train import CheckpointError, list_checkpoints, read_checkpoint

MPIEXEC = Path(sys.executable).parent / "mpiexec"
N = 3
FINAL = 60  # every resume, and every uninterrupted reference, ends here
# The synthetic data of tests/test_mpi.py, every step logged (the last metrics line is the
# last finished step), a checkpoint every 5 steps, one BLAS thread per rank. 270 steps at
# most (30 epochs of 9): the faults land well before that.
BASE = ["data.name=synthetic", "data.samples=600", "data.features=8", "data.classes=3",
        "model.sizes=[8,32,3]", "model.dropout=0.2", "train.global_batch=64", "train.eval_every=20",
        "train.log_every=1", "checkpoint.every=5", "checkpoint.keep=100", "comm.threads=1", "seed=3"]
EXIT_WITHIN_S = 15.0
STOP_TIMEOUT_S = 3.0  # comm.timeout_s of the SIGSTOP trials: the job must end within twice that
# What MPICH prints when an MPI call fails and nothing catches it ("Fatal error in
# internal_Allreduce: ..., error stack:", then one line per layer).
MPICH_STACK = re.compile(r"error stack|Fatal error in|^\S+\(\d+\)\.+:", re.M)


def _cmd(n: int, run_dir: Path, max_steps: int | None, *extra: str) -> list[str]:
    sets = BASE + ([f"train.max_steps={max_steps}"] if max_steps else [])
    return [str(MPIEXEC), "-n", str(n), sys.executable, "-m", "distbp.cli", "--run-dir", str(run_dir),
            *[a for o in sets for a in ("--set", o)], *extra]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1")


def run_to_end(n: int, run_dir: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """A whole job to step FINAL (a fresh run, or ``--resume auto``)."""
    res = subprocess.run(_cmd(n, run_dir, FINAL, *extra), capture_output=True, text=True, timeout=timeout,
                         env=_env(), start_new_session=True)
    leftovers = kill_leftovers(run_dir)
    if res.returncode != 0 or leftovers:
        raise RuntimeError(f"job in {run_dir} exited {res.returncode}, {leftovers} process(es) left\n{res.stderr[-3000:]}")
    return res


def final_params(run_dir: Path, step: int = FINAL) -> np.ndarray:
    return read_checkpoint(run_dir / "checkpoints" / f"step-{step:08d}.npz").arrays["params"]


_REFERENCES: dict[tuple[str, int], np.ndarray] = {}


def reference(tmp_dir: Path, n: int) -> np.ndarray:
    """Final parameters of an uninterrupted n-rank run to FINAL, computed once per n (and tmp root)."""
    key = (str(tmp_dir), n)
    if key not in _REFERENCES:
        run_dir = Path(tmp_dir) / f"reference-n{n}"
        run_to_end(n, run_dir, "--resume", "never")
        _REFERENCES[key] = final_params(run_dir)
    return _REFERENCES[key]


# ---- processes ------------------------------------------------------------------------------

def _procs() -> list[tuple[int, list[str]]]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        out.append((int(entry), argv))
    return out


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def processes_of(run_dir: Path) -> list[int]:
    """Live processes (not zombies) whose command line names ``run_dir``."""
    return [pid for pid, argv in _procs() if str(run_dir) in argv and not _is_zombie(pid)]


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def rank_pids(run_dir: Path, n: int, timeout: float = 20, launched: bool = False) -> dict[int, int]:
    """{rank: pid} of the job in ``run_dir`` (PMI_RANK in /proc/<pid>/environ): the processes
    that train, or with ``launched`` the ones mpiexec started (distbp.process.supervise forks
    each rank: the launched process waits, its child trains)."""
    deadline = time.monotonic() + timeout
    found: dict[int, list[int]] = {}
    while time.monotonic() < deadline:
        found = {}
        for pid, argv in _procs():
            if str(run_dir) not in argv or "distbp.cli" not in argv:
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
            except OSError:
                continue
            if b"PMI_RANK" in env:
                found.setdefault(int(env[b"PMI_RANK"]), []).append(pid)
        pairs = {r: sorted(pids, key=lambda p: _ppid(p) in pids) for r, pids in found.items() if len(pids) == 2}
        if len(pairs) == n:
            return {r: p[0] if launched else p[1] for r, p in pairs.items()}
        time.sleep(0.05)
    raise RuntimeError(f"ranks of {run_dir} not found: {found}")


def kill_leftovers(run_dir: Path) -> int:
    """SIGKILL every live process naming ``run_dir``; returns how many there were."""
    left = processes_of(run_dir)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(left)


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]
    return max(steps, default=0)


def _proxies(mpiexec: int) -> list[int]:
    """mpiexec's hydra_pmi_proxy processes (they start the ranks and outlive nothing)."""
    return [pid for pid, argv in _procs() if _ppid(pid) == mpiexec and any("hydra_pmi_proxy" in a for a in argv)]


class _Job:
    """One interrupted job: mpiexec in its own session, output in files."""

    def __init__(self, n: int, run_dir: Path, *extra: str) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.out, self.err = run_dir.parent / f"{run_dir.name}.out", run_dir.parent / f"{run_dir.name}.err"
        with open(self.out, "w") as o, open(self.err, "w") as e:
            self.popen = subprocess.Popen(_cmd(n, run_dir, None, "--resume", "never", *extra), stdout=o, stderr=e,
                                          env=_env(), start_new_session=True)
        self.proxies: list[int] = []

    def note_proxies(self) -> None:
        """Remember mpiexec's proxies (call once the ranks run), to count any left afterwards."""
        self.proxies = _proxies(self.popen.pid)

    def wait_for_step(self, step: int, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reached = last_step(self.run_dir)
            if reached >= step:
                return reached
            if self.popen.poll() is not None:
                raise RuntimeError(f"job ended early ({self.popen.returncode})\n{self.output()[-3000:]}")
            time.sleep(0.02)
        raise RuntimeError(f"no progress to step {step} within {timeout} s\n{self.output()[-3000:]}")

    def wait_exit(self, timeout: float) -> tuple[int | None, float]:
        """(exit code or None if still running after ``timeout``, seconds waited)."""
        t0 = time.monotonic()
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - t0

    def cleanup(self) -> int:
        """Kill the session if mpiexec is still there, then every process naming the run dir.
        Returns the number of processes that had to be killed."""
        killed = 0
        if self.popen.poll() is None:
            killed += 1
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(timeout=10)
        # Processes SIGKILLed as mpiexec ended take a moment to go: count what is left after 3 s.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and (processes_of(self.run_dir)
                                               or any(not _is_zombie(pid) for pid in self.proxies)):
            time.sleep(0.05)
        for pid in self.proxies:
            if not _is_zombie(pid):  # a proxy still running (_is_zombie says True for one that is gone)
                killed += 1
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return killed + kill_leftovers(self.run_dir)

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")


def rank_named(output: str) -> int | None:
    """The rank distbp names as killed ("rank r (pid p on host) was killed by SIGKILL"), or
    None if no line says so."""
    named = re.findall(r"^distbp-train\[rank \d+\]: rank (\d+) \(pid \d+ on \S+\) was killed by", output, re.M)
    return int(named[0]) if len(named) == 1 else None


def silent_named(output: str) -> list[int]:
    """The ranks distbp names as silent ("rank r (pid p on host) silent for 3 s ..."), in
    order, each once."""
    found = re.findall(r"rank (\d+) \(pid \d+ on \S+\) silent for", output)
    return sorted({int(r) for r in found})


def mpiexec_named(output: str, launched: dict[int, int]) -> int | None:
    """The rank of the PID mpiexec reports ("BAD TERMINATION ... PID p RUNNING AT host"), by
    ``launched`` ({pid mpiexec launched: rank})."""
    lost = re.search(r"PID (\d+) RUNNING AT", output)
    return None if not lost else launched.get(int(lost.group(1)))


def newest_checkpoint(run_dir: Path) -> tuple[int | None, bool, str]:
    found = list_checkpoints(run_dir / "checkpoints")
    if not found:
        return None, False, "no checkpoint"
    try:
        ckpt = read_checkpoint(found[-1])
        return ckpt.step, True, ""
    except CheckpointError as e:
        return None, False, str(e)


def wait_for_lock_holder(run_dir: Path, timeout: float = 10) -> None:
    """Wait until the process named in RUN/.lock is gone, not only dead: this host's init reaps
    orphaned zombies about a second late, and the run-dir lock counts a zombie as running."""
    try:
        pid = int(json.loads((run_dir / ".lock").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)


def _resume(tmp_dir: Path, run_dir: Path, n: int) -> tuple[bool, bool]:
    """(resumed and finished, final params bitwise equal to the uninterrupted n-rank run)."""
    wait_for_lock_holder(run_dir)
    try:
        res = run_to_end(n, run_dir, "--resume", "auto")
    except (RuntimeError, subprocess.TimeoutExpired):
        return False, False
    return "resumed from" in res.stdout, bool(np.array_equal(final_params(run_dir), reference(tmp_dir, n)))


# ---- the trials -----------------------------------------------------------------------------

def kill_random_rank(tmp_dir: str | Path, seed: int, target: str = "trainer") -> dict:
    """kill -9 a random rank of a 3-rank job after a random step; then the figures. ``target``:
    the rank's process that trains, or (``"supervisor"``) the one mpiexec launched, which
    forked it (distbp.process.supervise)."""
    rng = random.Random(seed)
    tmp_dir = Path(tmp_dir)
    at_step, rank = rng.randint(6, 30), rng.randrange(N)
    resume_n = rng.choice([N, 2])
    run_dir = tmp_dir / (f"kill-seed{seed}" if target == "trainer" else f"kill-{target}-seed{seed}")
    job = _Job(N, run_dir)
    try:
        pids = rank_pids(run_dir, N)
        launched_pids = rank_pids(run_dir, N, launched=True)
        launched = {pid: r for r, pid in launched_pids.items()}
        job.note_proxies()
        reached = job.wait_for_step(at_step)
        os.kill((pids if target == "trainer" else launched_pids)[rank], signal.SIGKILL)
        code, took = job.wait_exit(EXIT_WITHIN_S)
    finally:
        leftovers = job.cleanup()
    out = job.output()
    named = rank_named(out)
    by_mpiexec = mpiexec_named(out, launched)
    lost_lines = [line.strip() for line in out.splitlines()
                  if "BAD TERMINATION" in line or "KILLED BY SIGNAL" in line or "RANK" in line]
    ckpt_step, loads, why = newest_checkpoint(run_dir)
    resumed, bitwise = _resume(tmp_dir, run_dir, resume_n) if loads else (False, False)
    return {"fault": "kill -9 rank" if target == "trainer" else f"kill -9 rank's {target}", "seed": seed,
            "killed_rank": rank, "killed_after_step": reached,
            "exit_code": code, "seconds_to_exit": took, "exited_nonzero": code is not None and code != 0,
            "rank_named": named, "names_rank": named == rank, "mpich_stack": bool(MPICH_STACK.search(out)),
            "mpiexec_names_rank": by_mpiexec == rank, "mpiexec_says": lost_lines[:4], "leftover_processes": leftovers,
            "checkpoint_step": ckpt_step, "checkpoint_loads": loads, "checkpoint_error": why,
            "resume_n": resume_n, "resumed": resumed, "bitwise_resume": bitwise}


def signal_job(tmp_dir: str | Path, seed: int, signum: int, target: str = "mpiexec") -> dict:
    """SIGTERM or SIGINT after a random step, to mpiexec (which forwards it to every rank)
    or to rank 0 alone (``target="rank0"``: the others learn of it in the next exchange)."""
    rng = random.Random(seed)
    tmp_dir = Path(tmp_dir)
    at_step = rng.randint(6, 30)
    name = signal.Signals(signum).name
    run_dir = tmp_dir / f"{name.lower()}-{target}-seed{seed}"
    job = _Job(N, run_dir)
    try:
        pids = rank_pids(run_dir, N)
        reached = job.wait_for_step(at_step)
        if target == "mpiexec":
            job.popen.send_signal(signum)
        else:
            os.kill(pids[0], signum)
        code, took = job.wait_exit(EXIT_WITHIN_S)
    finally:
        leftovers = job.cleanup()
    out = job.output()
    last = last_step(run_dir)
    ckpt_step, loads, why = newest_checkpoint(run_dir)
    within_one = ckpt_step is not None and 0 <= last - ckpt_step <= 1
    resumed, bitwise = _resume(tmp_dir, run_dir, N) if loads else (False, False)
    return {"fault": f"{name} to {target}", "seed": seed, "signalled_after_step": reached, "exit_code": code,
            "seconds_to_exit": took, "exited_nonzero": code is not None and code != 0,
            "exit_is_128_plus_signum": code == 128 + signum, "last_logged_step": last,
            "leftover_processes": leftovers, "checkpoint_step": ckpt_step, "checkpoint_loads": loads,
            "checkpoint_error": why, "checkpoint_within_one_step": within_one,
            "stderr_tail": out.strip().splitlines()[-2:], "resumed": resumed, "bitwise_resume": bitwise}


def stop_random_rank(tmp_dir: str | Path, seed: int) -> dict:
    """SIGSTOP a random rank's training process after a random step (a hung node, an NFS
    stall), with comm.timeout_s = STOP_TIMEOUT_S: the job must end within twice that, naming
    the rank, with a checkpoint of the last finished step unless rank 0 (which writes them) is
    the stopped one, and leave no process behind, the stopped one included."""
    rng = random.Random(seed)
    tmp_dir = Path(tmp_dir)
    at_step, rank = rng.randint(6, 30), rng.randrange(N)
    run_dir = tmp_dir / f"stop-seed{seed}"
    job = _Job(N, run_dir, "--set", f"comm.timeout_s={STOP_TIMEOUT_S:g}")
    try:
        pids = rank_pids(run_dir, N)
        job.note_proxies()
        reached = job.wait_for_step(at_step)
        os.kill(pids[rank], signal.SIGSTOP)
        code, took = job.wait_exit(2 * STOP_TIMEOUT_S + 10)
    finally:
        leftovers = job.cleanup()
    out = job.output()
    named = silent_named(out)
    last = last_step(run_dir)
    ckpt_step, loads, why = newest_checkpoint(run_dir)
    resumed, bitwise = _resume(tmp_dir, run_dir, N) if loads else (False, False)
    return {"fault": "SIGSTOP rank", "seed": seed, "stopped_rank": rank, "stopped_after_step": reached,
            "exit_code": code, "seconds_to_exit": took, "exited_nonzero": code is not None and code != 0,
            "within_2x_timeout": code is not None and took <= 2 * STOP_TIMEOUT_S,
            "ranks_named": named, "names_rank": named == [rank], "mpich_stack": bool(MPICH_STACK.search(out)),
            "last_logged_step": last, "checkpoint_step": ckpt_step, "checkpoint_loads": loads, "checkpoint_error": why,
            "last_step_checkpointed": ckpt_step == last, "leftover_processes": leftovers,
            "stderr_tail": out.strip().splitlines()[-3:], "resumed": resumed, "bitwise_resume": bitwise}


ELASTIC = Path(__file__).resolve().parents[2] / "launch" / "mpirun-elastic"


def elastic_kill(tmp_dir: str | Path, seed: int) -> dict:
    """launch/mpirun-elastic N --max-restarts 2, and kill -9 of a random rank after a random
    step: the job must restart from its newest checkpoint and end at FINAL, bitwise as the
    uninterrupted N-rank run. 'seconds to exit' is the whole job's, 'lost one named' the
    restart line's naming of the killed rank."""
    rng = random.Random(seed)
    tmp_dir = Path(tmp_dir)
    at_step, rank = rng.randint(6, 50), rng.randrange(N)
    run_dir = tmp_dir / f"elastic-seed{seed}"
    run_dir.mkdir(parents=True)
    out = run_dir.parent / f"{run_dir.name}.out"
    sets = [a for o in [*BASE, f"train.max_steps={FINAL}"] for a in ("--set", o)]
    t0 = time.monotonic()
    with open(out, "w") as o:
        popen = subprocess.Popen([str(ELASTIC), str(N), "--max-restarts", "2", "--run-dir", str(run_dir), *sets],
                                 stdout=o, stderr=subprocess.STDOUT, env=dict(_env(), DISTBP_PYTHON=sys.executable),
                                 start_new_session=True)
    try:
        pids = rank_pids(run_dir, N)
        deadline = time.monotonic() + 60
        while last_step(run_dir) < at_step and popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        reached = last_step(run_dir)
        os.kill(pids[rank], signal.SIGKILL)
        try:
            code: int | None = popen.wait(timeout=120)
        except subprocess.TimeoutExpired:
            code = None
    finally:
        took = time.monotonic() - t0
        leftovers = 0
        if popen.poll() is None:
            leftovers += 1
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(timeout=10)
        leftovers += kill_leftovers(run_dir)
    text = out.read_text(errors="replace")
    ckpt_step, loads, why = newest_checkpoint(run_dir)
    bitwise = code == 0 and ckpt_step == FINAL and bool(np.array_equal(final_params(run_dir), reference(tmp_dir, N)))
    return {"fault": "kill -9 rank under mpirun-elastic", "seed": seed, "killed_rank": rank,
            "killed_after_step": reached, "exit_code": code, "seconds_to_exit": took, "completed": code == 0,
            "names_rank": bool(re.search(rf"mpirun-elastic: the job failed \(exit \d+\): .*rank {rank} ", text)),
            "restarted": "mpirun-elastic: restart 1 of 2" in text, "checkpoint_step": ckpt_step,
            "checkpoint_loads": loads, "checkpoint_error": why, "bitwise_resume": bitwise,
            "leftover_processes": leftovers}
