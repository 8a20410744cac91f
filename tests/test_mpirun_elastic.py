"""launch/mpirun-elastic: a job whose rank dies is started again from the newest checkpoint,
at most --max-restarts times, and ends as the uninterrupted one (bitwise with the same N,
within 1e-5 with fewer ranks when the hostfile, read again before each start, lost slots).
The fault: kill -9 of a rank, timed from metrics.jsonl (never by sleeping)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_mpi import OVERRIDES, final_params, mpirun

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ELASTIC = REPO / "launch" / "mpirun-elastic"
STEPS = 60
SETS = [o for o in OVERRIDES if not o.startswith(("train.max_steps", "checkpoint.every"))] + [
    f"train.max_steps={STEPS}", "checkpoint.every=10", "comm.threads=1"]


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_", "MPI_"))}
    return dict(env, DISTBP_PYTHON=sys.executable, PYTHONUNBUFFERED="1")


def _logged_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(x)["step"] for x in lines if x.strip().endswith("}")]
    return max(steps, default=0)


def _elastic(run: Path, *options: str, kill_at: int | None = None, before_kill=None) -> tuple[int, str]:
    """mpirun-elastic 2 OPTIONS on SETS; with ``kill_at``, kill -9 rank 1 once the metrics show that step."""
    out = run.parent / f"{run.name}.log"
    with out.open("w") as log:
        job = subprocess.Popen([str(ELASTIC), "2", *options, "--run-dir", str(run), *_sets(SETS)], stdout=log,
                               stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
        try:
            if kill_at is not None:
                deadline = time.monotonic() + 120
                while _logged_step(run) < kill_at:
                    assert job.poll() is None and time.monotonic() < deadline, out.read_text()[-3000:]
                    time.sleep(0.05)
                pids = re.findall(r"1=pid (\d+)@", (run / "train.log").read_text())
                if before_kill is not None:
                    before_kill()
                os.kill(int(pids[-1]), signal.SIGKILL)
            code = job.wait(timeout=300)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
    return code, out.read_text()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> np.ndarray:
    run = tmp_path_factory.mktemp("whole") / "run"
    res = mpirun(2, run, overrides=SETS)
    assert res.returncode == 0, res.stderr
    return final_params(run, STEPS)


def test_a_killed_rank_is_restarted_from_the_newest_checkpoint_bitwise(tmp_path, uninterrupted):
    run = tmp_path / "run"
    code, log = _elastic(run, "--max-restarts", "2", kill_at=25)
    assert code == 0, log[-3000:]
    assert re.search(r"mpirun-elastic: the job failed \(exit \d+\): .*rank 1 .*killed by SIGKILL", log), log[-3000:]
    assert "mpirun-elastic: restart 1 of 2: 2 rank(s), from the newest checkpoint" in log
    resumed = re.findall(r"resumed from \S+step-(\d+)\.npz at step (\d+)", log)
    assert resumed and int(resumed[0][1]) >= 20, log[-3000:]  # a checkpoint at or after 20, not step 0
    assert np.array_equal(final_params(run, STEPS), uninterrupted)


def test_it_gives_up_after_max_restarts_with_the_last_error(tmp_path):
    code, log = _elastic(tmp_path / "run", "--max-restarts", "0", kill_at=15)
    assert code != 0
    assert re.search(r"mpirun-elastic: giving up after 0 restart\(s\) \(--max-restarts 0\); the last error: .*"
                     r"rank 1 .*killed by SIGKILL", log), log[-3000:]
    assert "restart 1 of" not in log


def test_the_hostfile_is_read_again_so_a_lost_host_can_be_dropped(tmp_path, uninterrupted):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost:2\n")
    run = tmp_path / "run"
    code, log = _elastic(run, "--max-restarts", "1", "--hostfile", str(hosts), kill_at=25,
                         before_kill=lambda: hosts.write_text("localhost:1\n"))  # the operator drops a slot
    assert code == 0, log[-3000:]
    assert "restart 1 of 1: 1 rank(s)" in log
    np.testing.assert_allclose(final_params(run, STEPS), uninterrupted, rtol=0, atol=1e-5)  # another N


@pytest.mark.parametrize("argv, message", [
    (["0", "--max-restarts", "1"], "N must be at least 1"),
    (["2"], "the following arguments are required: --max-restarts"),
    (["2", "--max-restarts", "1", "--hostfile", "/nonexistent"], "no hostfile /nonexistent"),
])
def test_bad_arguments_are_refused(argv, message):
    res = subprocess.run([str(ELASTIC), *argv], capture_output=True, text=True, timeout=60, env=_env())
    assert res.returncode == 2 and message in res.stderr, res.stderr
