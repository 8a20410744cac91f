"""launch/zmq-local N [distbp-train args...]: one ZeroMQ parameter server and N workers on
this machine, as separate processes, for the same job that docker/docker-compose.yml runs as
containers.

    launch/zmq-local 3                                   # the default config, 3 workers
    launch/zmq-local 2 --config configs/max-margin.yaml --run-dir runs/mm
    launch/zmq-local --print-commands 2 --set train.max_steps=20

Every process gets the same distbp-train arguments (yours), then the launcher's own:
``--set comm.backend=zmq --set comm.role=server|worker [--set comm.workers=N]
--set comm.endpoint=ipc://TMP/distbp-RANDOM.ipc`` (a Unix socket: every process is on this
machine, and it moves a step's gradients and parameters ~6% faster than TCP loopback,
bench/RESULTS.md; with the default umask only this user can connect to it), unless you pass
``--set comm.endpoint=...`` yourself; TCP loopback on a free port where the temporary directory's
path is too long for a socket name. The environment adds ``DISTBP_LOCAL_PROCS=N+1`` (so each
process caps its BLAS threads at cores // (N+1) unless comm.threads is given) and
``PYTHONUNBUFFERED=1``. The server's output passes through; workers' lines are prefixed with
``[worker i]`` (i is the launch index; the server assigns ranks in joining order) on stderr.

With ``--set comm.curve=DIR`` and per-worker keys in DIR (``distbp-keys DIR --workers N``),
worker i gets ``--set comm.curve=DIR/worker-i``: its own key (a key admits one worker).

The launcher exits with the server's exit code (128 + signal if the server was killed by one,
said as ``server (pid P) was killed by SIGKILL``). It watches the server: one that makes no
progress at all for 2 x comm.timeout_s (stopped, deadlocked: no CPU time, no wake-up; a live
server wakes at least every second), or that is still running max(2 x comm.timeout_s,
comm.join_timeout_s) after every worker has exited and one of them failed, is killed, the
launcher says why and exits 1. SIGINT, SIGTERM or SIGHUP to the launcher is forwarded to the
server, which finishes its step, writes a checkpoint, tells the workers to stop and exits
128 + signal; a second signal, or a server still running ``--grace`` seconds later, gets every
child killed. Each child runs in its own process group, which is killed on every way out of the
launcher; on Linux the children also get SIGTERM if the launcher itself is killed
(PR_SET_PDEATHSIG).

``--restart K``: a server that dies (killed, crashed, hung and killed by the watch) is started
again, up to K times, with ``--resume auto`` on the same run directory and endpoint: it resumes
from its newest checkpoint and the workers, which keep trying to rejoin for
``comm.reconnect_s`` (default 60 s), are admitted again; the job ends as if uninterrupted, the
steps since that checkpoint computed again. Not restarted: a server that ended with 0, 2, 130
or 143, or any after a signal to the launcher, or once every worker has exited.

``--print-commands`` prints, one line per process (the server first, then the workers), the
environment variables the launcher sets and the exact command line, shell-quoted, and exits.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import IO, Sequence

PROG = "zmq-local"
USAGE = f"usage: {PROG} [--print-commands] [--grace SECONDS] [--restart K] N [distbp-train args...]"
OWN_KEYS = ("comm.backend", "comm.role", "comm.workers")  # the launcher's to set, not the user's
WORKER_GRACE_S = 10.0  # after the server exits, how long workers get to exit by themselves
# A server that ended so is not restarted (--restart): done, a bad config, stopped by a signal.
NO_RESTART = (0, 2, 128 + signal.SIGINT, 128 + signal.SIGTERM)
KILL_WAIT_S = 5.0  # between SIGTERM and SIGKILL of a leftover process group
SAMPLE_S = 0.5  # how often the server's vital signs are read
DEFAULT_TIMEOUTS = (10.0, 60.0)  # comm.timeout_s, comm.join_timeout_s when the config cannot be read


class UsageError(Exception):
    pass


# -- the commands -------------------------------------------------------------------------------
def user_sets(args: Sequence[str]) -> dict[str, str]:
    """The ``--set key=value`` overrides among distbp-train arguments (both spellings)."""
    found = {}
    for i, a in enumerate(args):
        item = None
        if a == "--set" and i + 1 < len(args):
            item = args[i + 1]
        elif a.startswith("--set="):
            item = a[len("--set="):]
        if item is not None and "=" in item:
            key, _, value = item.partition("=")
            found[key.strip()] = value
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


IPC_PATH_MAX = 100  # a Unix socket's name holds 107 bytes on Linux, 103 on macOS


def local_endpoint() -> str:
    """A fresh endpoint for one job on this machine: a Unix socket in the temporary directory
    (not created here: the server binds it), or TCP loopback where that path is too long."""
    path = os.path.join(tempfile.gettempdir(), f"distbp-{uuid.uuid4().hex[:12]}.ipc")
    if len(path.encode()) <= IPC_PATH_MAX:
        return f"ipc://{path}"
    return f"tcp://127.0.0.1:{free_port()}"


def ipc_path(argv: Sequence[str]) -> str | None:
    """The socket file of an ipc:// endpoint among a command's --set overrides, if any."""
    endpoint = user_sets(argv).get("comm.endpoint", "")
    return endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None


def plan(n: int, args: Sequence[str], python: str = sys.executable,
         environ: dict[str, str] | None = None, endpoint: str | None = None) -> list[tuple[dict[str, str], list[str]]]:
    """(environment additions, argv) of the server, then of each of the n workers."""
    environ = os.environ if environ is None else environ
    sets = user_sets(args)
    for key in OWN_KEYS:
        if key in sets:
            raise UsageError(f"--set {key}=...: {PROG} sets {key} itself (N is the number of workers)")
    env = {"DISTBP_LOCAL_PROCS": environ.get("DISTBP_LOCAL_PROCS") or str(n + 1), "PYTHONUNBUFFERED": "1"}
    program = [python, "-m", "distbp.cli", *args, "--set", "comm.backend=zmq"]
    where = [] if "comm.endpoint" in sets else ["--set", f"comm.endpoint={endpoint or local_endpoint()}"]
    server = [*program, "--set", "comm.role=server", "--set", f"comm.workers={n}", *where]
    worker = [*program, "--set", "comm.role=worker", *where]
    return [(env, server)] + [(env, [*worker, *own_key(sets.get("comm.curve"), i, n)]) for i in range(n)]


def own_key(curve: str | None, i: int, n: int) -> list[str]:
    """Worker i's ``--set comm.curve=DIR/worker-i`` when DIR holds one key per worker."""
    if not curve or not os.path.isdir(os.path.join(curve, "worker-0")):
        return []  # no CURVE, or the single-key layout (for one worker)
    mine = os.path.join(curve, f"worker-{i}")
    if not os.path.isdir(mine):
        have = sum(os.path.isdir(os.path.join(curve, f"worker-{k}")) for k in range(n))
        raise UsageError(f"--set comm.curve={curve}: it holds keys for {have} worker(s), not {n} (a key admits "
                         f"one worker); make {n} with distbp-keys NEWDIR --workers {n}")
    return ["--set", f"comm.curve={mine}"]


def command_line(env: dict[str, str], argv: Sequence[str]) -> str:
    """One shell line: NAME=value ... argv, quoted so that it can be pasted into sh."""
    return " ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.quote(a) for a in argv])


# -- running them -------------------------------------------------------------------------------
def _die_with_parent_hook():
    """A preexec_fn that asks Linux to SIGTERM the child when the launcher dies (even by SIGKILL)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError, ImportError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the launcher died before the line above: do as it asks
            os.kill(os.getpid(), signal.SIGTERM)

    return hook if sys.platform.startswith("linux") else None


def _copy_prefixed(stream: IO[bytes], prefix: bytes, out: IO[bytes], lock: threading.Lock) -> None:
    try:
        for line in iter(stream.readline, b""):
            with lock:
                try:
                    out.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
                    out.flush()
                except (OSError, ValueError):
                    pass  # our stderr is gone; keep draining so the worker never blocks
    finally:
        stream.close()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _how_it_ended(name: str, proc: subprocess.Popen) -> str:
    code = proc.returncode
    if code is not None and code < 0:
        try:
            how = signal.Signals(-code).name
        except ValueError:
            how = f"signal {-code}"
        return f"{name} (pid {proc.pid}) was killed by {how}"
    return f"{name} (pid {proc.pid}) exited with code {code}"


def _vital_signs(pid: int) -> tuple[str, tuple[int, int]] | None:
    """(state, (CPU ticks, context switches)) of a process from /proc, or None where there
    is no /proc. The second part changes whenever it runs or wakes up at all; a stopped
    (T), traced (t) or deadlocked process leaves it unchanged."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    try:
        fields = stat[stat.rindex(")") + 2:].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime, every thread
        switches = sum(int(line.split()[1]) for line in status.splitlines()
                       if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))
    except (ValueError, IndexError):
        return None
    return fields[0], (ticks, switches)


class _Watch:
    """Whether the server still makes progress: its vital signs, sampled every SAMPLE_S."""

    STATES = {"T": "it is stopped", "t": "it is stopped by a debugger", "D": "it waits on a device or file system",
              "Z": "it has exited"}

    def __init__(self, pid: int) -> None:
        self.pid = pid
        now = time.monotonic()
        self.last_change, self.next_sample = now, now
        self.signs = _vital_signs(pid)
        self.state = self.signs[0] if self.signs else "?"

    def still_for(self) -> float:
        """Seconds since the server last showed a sign of life (0 without /proc)."""
        now = time.monotonic()
        if now >= self.next_sample:
            self.next_sample = now + SAMPLE_S
            signs = _vital_signs(self.pid)
            if signs is None:
                self.last_change = now
            else:
                self.state = signs[0]
                if self.signs is None or signs[1] != self.signs[1]:
                    self.last_change = now
                self.signs = signs
        return now - self.last_change

    def how(self) -> str:
        return self.STATES.get(self.state, "it uses no CPU and does not wake up")


def _config_timeouts(argv: Sequence[str], env: dict[str, str]) -> tuple[int, tuple[float, float]]:
    """Check the config once (the server's command line with --print-config): its exit code,
    and comm.timeout_s and comm.join_timeout_s."""
    check = subprocess.run([*argv, "--print-config"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    if check.returncode != 0:
        return check.returncode, DEFAULT_TIMEOUTS
    try:
        import yaml

        comm = yaml.safe_load(check.stdout)["comm"]
        return 0, (float(comm["timeout_s"]), float(comm["join_timeout_s"]))
    except Exception:  # the job still runs; the watch uses the defaults
        return 0, DEFAULT_TIMEOUTS


def _stop(procs: list[subprocess.Popen], wait_s: float) -> None:
    """Let procs exit within wait_s, then SIGTERM their groups, then SIGKILL; reap them all."""
    for sig, limit in ((None, wait_s), (signal.SIGTERM, KILL_WAIT_S), (signal.SIGKILL, KILL_WAIT_S)):
        if sig is not None:
            for p in procs:
                _signal_group(p, sig)
        deadline = time.monotonic() + limit
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        if all(p.returncode is not None for p in procs):
            return


def run(n: int, args: Sequence[str], grace_s: float, restart_max: int = 0) -> int:
    if importlib.util.find_spec("distbp") is None:
        print(f"{PROG}: error: distbp is not installed for {sys.executable}; run the README's set-up "
              "(python3 -m venv .venv && .venv/bin/pip install -e '.[digits]') or set DISTBP_PYTHON",
              file=sys.stderr)
        return 1
    commands = plan(n, args)
    # The config is checked once, by the server's command line, before anything starts: a bad
    # key gives one message and exit code 2, not one per process.
    env_add, argv = commands[0]
    checked, (timeout_s, join_timeout_s) = _config_timeouts(argv, dict(os.environ, **env_add))
    if checked != 0:
        return 128 - checked if checked < 0 else checked
    hook = _die_with_parent_hook()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    server: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = []
    readers: list[threading.Thread] = []
    lock = threading.Lock()
    try:
        for i, (env_add, argv) in enumerate(commands):
            env = dict(os.environ, **env_add)
            if i == 0:
                # A session of its own: a terminal's Ctrl-C reaches the launcher only, which
                # forwards it once, to the server (workers stop when the server says so).
                server = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                                          preexec_fn=hook)
            else:
                workers.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=hook))
        # Threads only after every fork (preexec_fn and threads do not mix).
        for i, w in enumerate(workers):
            t = threading.Thread(target=_copy_prefixed, args=(w.stdout, f"[worker {i}] ".encode(),
                                                             sys.stderr.buffer, lock), daemon=True)
            t.start()
            readers.append(t)

        forwarded, restarts = 0, 0
        while True:
            code, hung = _watch_server(server, workers, received, timeout_s, join_timeout_s, grace_s, forwarded)
            forwarded = len(received)
            if code is not None and code < 0:
                print(f"{PROG}: {_how_it_ended('server', server)}", file=sys.stderr, flush=True)
            if restarts >= restart_max or received or code in NO_RESTART or \
                    all(w.poll() is not None for w in workers):
                break
            restarts += 1
            print(f"{PROG}: restarting the server (restart {restarts} of {restart_max}); it resumes from its newest "
                  "checkpoint and the workers rejoin (comm.reconnect_s)", file=sys.stderr, flush=True)
            # No preexec_fn now that reader threads run (fork and threads do not mix): a restarted
            # server has no PR_SET_PDEATHSIG, and the launcher's own exit still ends its group.
            server = subprocess.Popen([*without_resume(commands[0][1]), "--resume", "auto"],
                                      env=dict(os.environ, **commands[0][0]), stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        # Workers exit by themselves once the server has sent the last parameters or a stop;
        # ones still waiting (say, for a server that never started) are ended.
        _stop(workers, WORKER_GRACE_S if code == 0 and hung is None else 2.0)
        if hung is not None:
            return 1
        return 128 - code if code < 0 else code
    finally:
        _stop([p for p in (server, *workers) if p is not None], 0)
        for t in readers:
            t.join(timeout=2.0)
        path = ipc_path(commands[0][1]) if "comm.endpoint" not in user_sets(args) else None
        if path is not None:  # a killed server leaves its socket file behind; a clean one removes it
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        for s, h in previous.items():
            signal.signal(s, h)


def _watch_server(server: subprocess.Popen, workers: list[subprocess.Popen], received: list[int], timeout_s: float,
                  join_timeout_s: float, grace_s: float, forwarded: int) -> tuple[int | None, str | None]:
    """Until the server ends (or is killed as hung): its exit code and why it was killed, if it was."""
    deadline = None
    reported: dict[int, float] = {}  # worker index: when it failed
    watch = _Watch(server.pid)
    all_gone: float | None = None  # when the last worker exited, if every one has and one failed
    hung: str | None = None
    while server.poll() is None:
        if len(received) > forwarded:
            if forwarded == 0:
                _signal_group(server, received[0])
                deadline = time.monotonic() + grace_s
                print(f"{PROG}: {signal.Signals(received[0]).name}: asked the server to checkpoint and stop "
                      f"(a second signal kills the job)", file=sys.stderr, flush=True)
            else:
                print(f"{PROG}: second signal: killing the job", file=sys.stderr, flush=True)
                for p in (server, *workers):
                    _signal_group(p, signal.SIGKILL)
            forwarded = len(received)
        if deadline is not None and time.monotonic() > deadline:
            print(f"{PROG}: the server did not stop within {grace_s:g} s: killing the job",
                  file=sys.stderr, flush=True)
            _stop([server, *workers], 0)
        for i, w in enumerate(workers):
            if w.poll() not in (None, 0) and i not in reported:
                reported[i] = time.monotonic()
            if i in reported and reported[i] and time.monotonic() - reported[i] > 1.0:
                reported[i] = 0.0  # said once, if the server has not ended the job by then
                print(f"{PROG}: {_how_it_ended(f'worker {i}', w)}; the server will stop the job "
                      "(comm.timeout_s, comm.join_timeout_s)", file=sys.stderr, flush=True)
        # A server that stops answering must not hold the launcher forever.
        if all_gone is None and reported and all(w.returncode is not None for w in workers):
            all_gone = time.monotonic()
        still = watch.still_for()
        if still >= 2 * timeout_s:
            hung = (f"the server (pid {server.pid}) has made no progress for {still:.0f} s (2 x comm.timeout_s; "
                    f"{watch.how()})")
        elif all_gone is not None and time.monotonic() - all_gone >= max(2 * timeout_s, join_timeout_s):
            hung = (f"the server (pid {server.pid}) is still running {time.monotonic() - all_gone:.0f} s after "
                    "every worker exited")
        if hung is not None:
            print(f"{PROG}: {hung}: killing it", file=sys.stderr, flush=True)
            if watch.state in "Tt":
                _signal_group(server, signal.SIGKILL)  # a stopped process never handles SIGTERM
            _stop([server], 0)
            break
        time.sleep(0.05)
    return server.returncode, hung


def without_resume(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--resume X`` (a restart adds ``--resume auto``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not a.startswith("--resume="):
            out.append(a)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    print_commands = "--print-commands" in argv
    argv = [a for a in argv if a != "--print-commands"]
    grace_s, restart_max = 60.0, 0
    while argv and argv[0].startswith("-"):
        opt = argv.pop(0)
        if opt in ("-h", "--help"):
            print(USAGE + "\n\n" + __doc__.strip())
            return 0
        if opt == "--restart" and argv:
            opt = "--restart=" + argv.pop(0)
        if opt.startswith("--restart="):
            value = opt.split("=", 1)[1]
            if not value.isdigit():
                print(f"{USAGE}\n{PROG}: error: --restart: expected a number of restarts (0 or more)", file=sys.stderr)
                return 2
            restart_max = int(value)
            continue
        if opt == "--grace" and argv:
            opt = "--grace=" + argv.pop(0)
        if opt.startswith("--grace="):
            try:
                grace_s = float(opt.split("=", 1)[1])
            except ValueError:
                grace_s = -1.0
            if not grace_s > 0:
                print(f"{USAGE}\n{PROG}: error: --grace: expected a positive number of seconds", file=sys.stderr)
                return 2
            continue
        print(f"{USAGE}\n{PROG}: error: unknown option {opt} (distbp-train's options go after N)", file=sys.stderr)
        return 2
    if not argv or not argv[0].isdigit() or int(argv[0]) < 1:
        got = f"got {argv[0]!r}" if argv else "none given"
        print(f"{USAGE}\n{PROG}: error: N, the number of workers, must be a positive integer ({got})",
              file=sys.stderr)
        return 2
    n, args = int(argv[0]), argv[1:]
    try:
        if print_commands:
            for env, cmd in plan(n, args):
                print(command_line(env, cmd))
            return 0
        return run(n, args, grace_s, restart_max)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the job started (run's handlers not yet in place)
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
