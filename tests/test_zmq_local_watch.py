"""launch/zmq_local.py watches the server it started: one that makes no progress at all (a
stopped process) for 2 x comm.timeout_s, or that is still running after every worker has
exited and one failed, is killed, named, and the launcher exits 1; a server killed by a signal
is named with it. Here run() drives stand-in processes (a server that stops itself, one that
spins, one that kills itself), so each rule is met at once and deterministically, with
comm.timeout_s = comm.join_timeout_s = 1. The real jobs are in tests/faults/test_zmq_faults.py."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("zmq_local", REPO / "launch" / "zmq_local.py")
zmq_local = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zmq_local)

PY = sys.executable
STOPS_ITSELF = "import os, signal; os.kill(os.getpid(), signal.SIGSTOP)"
SPINS = "while True: pass"
KILLS_ITSELF = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
WAITS = "import signal; signal.pause()"  # a worker waiting for a server that never answers
FAILS = "import sys; print('worker gives up', flush=True); sys.exit(1)"


@pytest.fixture
def stand_ins(monkeypatch, tmp_path):
    """run() with these programs for the server and the workers, and timeouts of 1 s."""
    tag = str(tmp_path)  # in every stand-in's command line, to find leftovers

    def use(server: str, *workers: str) -> None:
        monkeypatch.setattr(zmq_local, "plan", lambda n, args: [({}, [PY, "-c", server, tag])] +
                            [({}, [PY, "-c", w, tag]) for w in workers])
        monkeypatch.setattr(zmq_local, "_config_timeouts", lambda argv, env: (0, (1.0, 1.0)))

    yield use
    left = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _names(p, tag)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


def _names(proc: Path, tag: str) -> bool:
    try:
        if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
        return tag.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


def _run(n: int) -> tuple[int, float]:
    t0 = time.monotonic()
    code = zmq_local.run(n, [], grace_s=60.0)
    return code, time.monotonic() - t0


def test_a_stopped_server_is_killed_after_2_timeouts_and_named(stand_ins, capfd):
    stand_ins(STOPS_ITSELF, WAITS, WAITS)
    code, took = _run(2)
    err = capfd.readouterr().err
    assert code == 1, err
    # 2 s without progress (sampled every SAMPLE_S), then the workers, still waiting for it,
    # get the 2 s that workers of a failed server always get before they are ended.
    assert 2.0 <= took <= 2.0 + 2 * zmq_local.SAMPLE_S + 2.0 + 1.0, (took, err)
    assert "zmq-local: the server (pid " in err and "has made no progress for 2 s (2 x comm.timeout_s; it is stopped): " \
        "killing it" in err, err
    assert "was killed by SIGKILL" in err, err


def test_a_server_still_running_after_every_worker_failed_is_killed(stand_ins, capfd):
    stand_ins(SPINS, FAILS, FAILS)
    code, took = _run(2)
    err = capfd.readouterr().err
    assert code == 1, err
    assert took <= 1.0 + 2.0 + zmq_local.KILL_WAIT_S, (took, err)
    assert "[worker 0] worker gives up" in err and "worker 1 (pid " in err and "exited with code 1" in err, err
    assert "is still running" in err and "after every worker exited: killing it" in err, err


def test_a_server_killed_by_a_signal_is_named_with_it(stand_ins, capfd):
    stand_ins(KILLS_ITSELF, WAITS)
    code, took = _run(1)
    err = capfd.readouterr().err
    assert code == 128 + signal.SIGKILL, err
    assert "zmq-local: server (pid " in err and ") was killed by SIGKILL" in err, err


def test_vital_signs_tell_a_stopped_process_from_a_waiting_one():
    p = subprocess.Popen([PY, "-c", "import time\nwhile True: time.sleep(0.01)"])
    try:
        first = zmq_local._vital_signs(p.pid)
        deadline = time.monotonic() + 5
        while zmq_local._vital_signs(p.pid)[1] == first[1] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert zmq_local._vital_signs(p.pid)[1] != first[1]  # it wakes up: progress
        os.kill(p.pid, signal.SIGSTOP)
        while zmq_local._vital_signs(p.pid)[0] != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        stopped = zmq_local._vital_signs(p.pid)
        assert stopped[0] == "T"
        time.sleep(0.3)  # nothing is injected here: only a stopped process is watched for a while
        assert zmq_local._vital_signs(p.pid) == stopped
    finally:
        p.kill()
        p.wait()
    assert zmq_local._vital_signs(p.pid) is None
