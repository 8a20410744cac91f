"""Launchers and containers: launch/zmq-local, launch/mpirun-hosts,
launch/slurm.sbatch, docker/Dockerfile and docker/docker-compose.yml.

No container engine runs here, so the compose file is checked against what
``launch/zmq-local --print-commands`` runs, and its topology is run as local processes on
loopback. Every subprocess has a deadline, and the tests check that no process is left behind.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from distbp.train import Trainer, list_checkpoints, read_checkpoint, resolve

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
ZMQ_LOCAL = [sys.executable, str(LAUNCH / "zmq_local.py")]  # this interpreter, whatever the wrapper picks
COMPOSE = REPO / "docker" / "docker-compose.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
# What the compose services pass to distbp-train besides the launcher's own arguments: the
# run directory on the coordinator's volume. Change it here and in the compose file together.
COMPOSE_USER_ARGS = ["--run-dir", "/runs/digits-mlp"]
PROGRAM = [sys.executable, "-m", "distbp.cli"]
SMALL = ["--set", "train.progress=plain"]


# -- helpers --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISTBP_LOCAL_PROCS", "DISTBP_PYTHON", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def parse_command_lines(text: str) -> list[tuple[dict[str, str], list[str]]]:
    """--print-commands output: one shell line per process, NAME=value words, then argv."""
    out = []
    for line in text.splitlines():
        words = shlex.split(line)
        env = {}
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            k, _, v = words.pop(0).partition("=")
            env[k] = v
        out.append((env, words))
    return out


def print_commands(n: int, *args: str, env: dict[str, str] | None = None) -> list[tuple[dict[str, str], list[str]]]:
    res = subprocess.run([*ZMQ_LOCAL, "--print-commands", str(n), *args], capture_output=True, text=True,
                         timeout=30, env=clean_env() if env is None else env)
    assert res.returncode == 0, res.stderr
    return parse_command_lines(res.stdout)


def endpoint_of(argv: list[str]) -> str:
    found = [a.split("=", 1)[1] for a in argv if a.startswith("comm.endpoint=")]
    assert len(found) == 1, argv
    return found[0]


def interpolate(value, variables: dict[str, str]):
    """Compose's ${VAR} and ${VAR:-default}, recursively through lists and mappings."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if variables.get(name):
            return variables[name]
        assert default is not None, f"${{{name}}} has no default in {COMPOSE.name}"
        return default

    out, previous = value, None
    while out != previous:  # innermost first: ${A:-${B:-2}}
        previous, out = out, re.sub(r"\$\{(\w+)(?::-([^${}]*))?\}", sub, out)
    assert "$" not in out, value
    return out


def compose_file() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def compose_services(variables: dict[str, str]) -> dict[str, dict]:
    return interpolate(compose_file()["services"], variables)


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), per stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def entrypoint() -> list[str]:
    lines = [i for i in dockerfile_stages()[-1] if i.upper().startswith("ENTRYPOINT ")]
    assert len(lines) == 1
    return json.loads(lines[0].split(None, 1)[1])


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains text (zombies have none)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmdline = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                pids.append(int(d.name))
    return pids


def assert_none_left(text: str, within_s: float = 0.0) -> None:
    deadline = time.monotonic() + within_s
    while (left := processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left behind: {left}"


def single_process_params(run_dir: Path, overrides: list[str]) -> np.ndarray:
    cfg = resolve(None, overrides)
    result = Trainer(cfg, run_dir=run_dir, resume="never", stream=io.StringIO()).run()
    return read_checkpoint(result.checkpoint).arrays["params"]


def final_params(run_dir: Path, step: int) -> np.ndarray:
    return read_checkpoint(run_dir / "checkpoints" / f"step-{step:08d}.npz").arrays["params"]


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


# -- zmq-local: its command lines -----------------------------------------------------------------
def test_print_commands_gives_one_server_and_n_identical_workers():
    procs = print_commands(3, "--set", "train.max_steps=20")
    assert len(procs) == 4
    (server_env, server), workers = procs[0], procs[1:]
    assert server[:3] == PROGRAM
    assert server[3:5] == ["--set", "train.max_steps=20"]  # the user's arguments first, for every process
    assert "comm.role=server" in server and "comm.workers=3" in server and "comm.backend=zmq" in server
    assert all(w == workers[0] for w in workers)
    env, worker = workers[0]
    assert "comm.role=worker" in worker and not any(a.startswith("comm.workers=") for a in worker)
    assert endpoint_of(server) == endpoint_of(worker)
    # A Unix socket in the temporary directory, a new one per job; nothing is created before the server binds it.
    path = re.fullmatch(r"ipc://(.*/distbp-[0-9a-f]{12}\.ipc)", endpoint_of(server)).group(1)
    assert Path(path).parent == Path(tempfile.gettempdir()) and not Path(path).exists()
    assert endpoint_of(print_commands(3)[0][1]) != endpoint_of(server)
    assert server_env == env == {"DISTBP_LOCAL_PROCS": "4", "PYTHONUNBUFFERED": "1"}


def test_a_temporary_directory_too_long_for_a_socket_name_gets_tcp_loopback(tmp_path):
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    (_, server), (_, worker) = print_commands(1, env=clean_env(TMPDIR=str(deep)))
    assert endpoint_of(server) == endpoint_of(worker)
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", endpoint_of(server))


def test_print_commands_keeps_the_users_endpoint_and_local_procs():
    procs = print_commands(2, "--set", "comm.endpoint=tcp://127.0.0.1:6123",
                           env=clean_env(DISTBP_LOCAL_PROCS="7"))
    for env, argv in procs:
        assert endpoint_of(argv) == "tcp://127.0.0.1:6123"
        assert env["DISTBP_LOCAL_PROCS"] == "7"


@pytest.mark.parametrize("args", [[], ["0"], ["two"], ["2", "--set", "comm.role=server"],
                                  ["2", "--set=comm.workers=3"], ["--bogus", "2"], ["--grace", "x", "2"],
                                  ["--restart", "x", "2"], ["--restart=-1", "2"]])
def test_bad_launcher_arguments_exit_2(args):
    res = subprocess.run([*ZMQ_LOCAL, *args], capture_output=True, text=True, timeout=30, env=clean_env())
    assert res.returncode == 2
    assert "zmq-local" in res.stderr and "Traceback" not in res.stderr


def test_the_wrapper_finds_the_python_with_distbp():
    wrapper = LAUNCH / "zmq-local"
    assert wrapper.stat().st_mode & 0o111 and wrapper.read_text().startswith("#!/bin/sh\n")
    res = subprocess.run([str(wrapper), "--print-commands", "1"], capture_output=True, text=True, timeout=30,
                         env=clean_env(DISTBP_PYTHON=sys.executable))
    assert res.returncode == 0, res.stderr
    assert parse_command_lines(res.stdout)[0][1][0] == sys.executable
    venv_python = REPO / ".venv" / "bin" / "python"
    if venv_python.exists():  # the README's set-up: `launch/zmq-local 3` from the repository root
        res = subprocess.run(["launch/zmq-local", "--print-commands", "1"], cwd=REPO, capture_output=True,
                             text=True, timeout=30, env=clean_env())
        assert res.returncode == 0, res.stderr
        assert Path(parse_command_lines(res.stdout)[0][1][0]).parent == venv_python.parent


# -- the compose file runs exactly what zmq-local runs --------------------------------------------
def test_compose_file_parses_with_the_two_services():
    doc = compose_file()
    services = doc["services"]
    assert set(services) == {"coordinator", "worker"}
    for s in services.values():
        assert s["restart"] == "on-failure:3"  # a crashed process's container, started again (not docker kill's)
        assert (COMPOSE.parent / s["build"]["context"] / s["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert "entrypoint" not in s  # the image's: distbp-train
    # The run directory is a named volume on the coordinator, where --run-dir points.
    volume, target = services["coordinator"]["volumes"][0].split(":")[:2]
    assert volume in doc["volumes"]
    run_dir = services["coordinator"]["command"][services["coordinator"]["command"].index("--run-dir") + 1]
    assert run_dir.startswith(target + "/")
    assert "volumes" not in services["worker"]  # workers write nothing


def test_the_worker_count_comes_from_the_environment():
    raw = compose_file()["services"]
    assert "comm.workers=${WORKERS:-2}" in raw["coordinator"]["command"]
    assert raw["worker"]["deploy"]["replicas"] == "${WORKERS:-2}"
    assert compose_services({"WORKERS": "4"})["worker"]["deploy"]["replicas"] == "4"
    # Elastic: down to MIN_WORKERS (1), up to MAX_WORKERS (WORKERS unless given).
    for variables, (lo, hi) in [({}, ("1", "2")), ({"WORKERS": "4"}, ("1", "4")),
                                ({"WORKERS": "4", "MIN_WORKERS": "4", "MAX_WORKERS": "6"}, ("4", "6"))]:
        command = compose_services(variables)["coordinator"]["command"]
        assert f"comm.min_workers={lo}" in command and f"comm.max_workers={hi}" in command, (variables, command)


@pytest.mark.parametrize("n", [2, 4])
def test_compose_services_run_what_zmq_local_runs(n):
    """The coordinator's and workers' entrypoint + command + environment are zmq-local's
    server and worker command lines, up to the documented differences: the endpoint
    (bind every interface / connect to the service name), the coordinator's comm.insecure,
    where comm.workers comes from, and the elastic bounds comm.min_workers and comm.max_workers."""
    variables = {} if n == 2 else {"WORKERS": str(n), "DISTBP_LOCAL_PROCS": str(n + 1)}
    services = compose_services(variables)
    procs = print_commands(n, *COMPOSE_USER_ARGS)
    (server_env, server), (worker_env, worker) = procs[0], procs[1]
    assert all(p == procs[1] for p in procs[1:]), "zmq-local's workers run one identical command"
    assert int(services["worker"]["deploy"]["replicas"]) == len(procs) - 1

    # distbp-train (the image's entrypoint) is `python -m distbp.cli`.
    assert entrypoint() == ["distbp-train"]
    assert server[:3] == worker[:3] == PROGRAM
    local = endpoint_of(server)
    at = server.index(f"comm.workers={n}") + 1
    server = [*server[:at], "--set", "comm.min_workers=1", "--set", f"comm.max_workers={n}", *server[at:]]
    expected = {"coordinator": [a.replace(local, "tcp://0.0.0.0:5555") for a in server[3:]]
                + ["--set", "comm.insecure=true"],  # a bind beyond loopback, without CURVE
                "worker": [a.replace(local, "tcp://coordinator:5555") for a in worker[3:]]}
    for name, argv in expected.items():
        assert services[name]["command"] == argv, f"{name}: compose and zmq-local differ"
    assert services["coordinator"]["environment"] == server_env
    assert services["worker"]["environment"] == worker_env


def test_distbp_train_is_python_m_distbp_cli():
    meta = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^distbp-train = "distbp\.cli:train_main"$', meta, re.M)
    assert (REPO / "distbp" / "cli.py").read_text().rstrip().endswith('if __name__ == "__main__":\n    sys.exit(train_main())')


# -- the Dockerfile ---------------------------------------------------------------------------------
def test_dockerfile_is_multi_stage_non_root_without_compilers():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    builder, final = stages[0], stages[-1]
    assert re.search(r"\bAS\s+builder\b", builder[0], re.I)
    assert any("pip wheel" in i and ".[digits]" in i for i in builder)
    final_text = "\n".join(final)
    assert final[0] == "FROM ${BASE_IMAGE}" and builder[0].startswith("FROM ${BASE_IMAGE} ")
    assert not re.search(r"build-essential|\bgcc\b|\bg\+\+|\bclang\b|apt-get install", final_text)
    assert re.search(r"pip install .*--no-index.*'distbp\[digits\]'", final_text)
    users = [i.split()[1] for i in final if i.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith("0:")
    assert entrypoint() == ["distbp-train"]
    # The run directory's mount point belongs to that user, so a fresh named volume does too.
    assert re.search(rf"chown {users[-1]}(:{users[-1]})? /runs", final_text)


def test_dockerfile_builds_offline_from_a_base_image_you_name():
    text = DOCKERFILE.read_text(encoding="utf-8")
    # A syntax directive makes BuildKit pull docker/dockerfile from Docker Hub before anything.
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    before_from = text[:text.index("\nFROM ")]
    assert re.search(r"^ARG BASE_IMAGE=python:3\.12-slim$", before_from, re.M)


def test_docker_build_context_has_what_the_dockerfile_copies():
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert {".git", ".venv"} <= set(ignored)
    copies = [i.split() for s in dockerfile_stages() for i in s if i.upper().startswith("COPY ") and "--from" not in i]
    assert copies
    for words in copies:
        for src in [w for w in words[1:-1] if not w.startswith("--")]:
            assert (REPO / src).exists(), src
            assert src.split("/")[0] not in ignored, f"{src} is excluded from the build context"


@pytest.mark.slow
def test_the_builder_stages_sources_make_a_working_install(tmp_path):
    """What the image does, minus Docker: a wheel from exactly the files the builder stage
    copies, installed (not editable) into a fresh venv, runs distbp-train from elsewhere."""
    src = tmp_path / "src"
    src.mkdir()
    for words in (i.split() for i in dockerfile_stages()[0] if i.upper().startswith("COPY ")):
        for name in [w for w in words[1:-1] if not w.startswith("--")]:
            copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
            copy(REPO / name, src / name)
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # With build isolation, as the Dockerfile builds: the build backend comes from the index.
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(src)],
                   check=True, timeout=120, capture_output=True)
    (wheel,) = wheels.glob("distbp-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True,
                   timeout=120, capture_output=True)
    # The dependencies come from this environment's site-packages (a plain path: its .pth
    # files, among them distbp's editable install, are not read).
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "deps.pth").write_text("\n".join(deps) + "\n")
    (entry_points,) = site.glob("distbp-*.dist-info/entry_points.txt")
    assert "distbp-train = distbp.cli:train_main" in entry_points.read_text()  # the image's ENTRYPOINT
    python = venv / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import distbp, sys; print(distbp.__file__)"], capture_output=True,
                           text=True, timeout=60, cwd=tmp_path)
    assert where.stdout.startswith(str(site)), where
    res = subprocess.run([str(python), "-c", "import sys; from distbp.cli import train_main; sys.exit(train_main())",
                          "--set", "train.max_steps=5", *SMALL], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "runs" / "digits-mlp" / "checkpoints" / "step-00000005.npz").is_file()


# -- the compose topology, as local processes -----------------------------------------------------
@pytest.mark.slow
def test_compose_topology_on_loopback_matches_one_process(tmp_path):
    """coordinator + WORKERS=2 workers, with the compose commands and environment; the
    endpoint becomes a free loopback port and the named volume a temporary directory."""
    services = compose_services({})
    port = free_port()
    volume_target = services["coordinator"]["volumes"][0].split(":")[1]
    runs = tmp_path / "runs"
    program = [str(Path(sys.executable).parent / "distbp-train")]
    if not Path(program[0]).exists():
        program = PROGRAM
    assert entrypoint() == ["distbp-train"]
    extra = ["--set", "train.max_steps=30"]

    def localize(argv: list[str]) -> list[str]:
        out = []
        for a in argv:
            a = re.sub(r"comm\.endpoint=tcp://[^:]+:5555", f"comm.endpoint=tcp://127.0.0.1:{port}", a)
            if a == volume_target or a.startswith(volume_target + "/"):
                a = str(runs) + a[len(volume_target):]
            out.append(a)
        return [*program, *out, *extra]

    roles = ["coordinator"] + ["worker"] * int(services["worker"]["deploy"]["replicas"])
    procs = []
    try:
        for i, role in enumerate(roles):
            env = dict(clean_env(), **services[role]["environment"])
            log = open(tmp_path / f"{role}-{i}.log", "w")
            procs.append(subprocess.Popen(localize(services[role]["command"]), env=env, cwd=tmp_path,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        for p in procs:
            kill_group(p)
    logs = {p.name: p.read_text() for p in sorted(tmp_path.glob("*.log"))}
    assert codes == [0] * len(roles), logs
    run_dir = runs / "digits-mlp"
    assert (run_dir / "config.yaml").is_file() and "2 worker(s)" in logs["coordinator-0.log"]
    single = single_process_params(tmp_path / "single", ["train.max_steps=30"])
    np.testing.assert_allclose(final_params(run_dir, 30), single, rtol=0, atol=1e-5)
    assert_none_left(str(tmp_path))


# -- zmq-local: running a job -----------------------------------------------------------------------
def launch(n: int, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*ZMQ_LOCAL, str(n), *args], capture_output=True, text=True, timeout=timeout,
                          env=clean_env(), stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_zmq_local_trains_and_exits_with_the_servers_code(tmp_path):
    run_dir = tmp_path / "run"
    res = launch(2, "--set", "train.max_steps=20", "--run-dir", str(run_dir), *SMALL)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("done: 20 steps") == 1 and "2 worker(s)" in res.stdout
    single = single_process_params(tmp_path / "single", ["train.max_steps=20"])
    np.testing.assert_allclose(final_params(run_dir, 20), single, rtol=0, atol=1e-5)
    assert_none_left(str(run_dir))


@pytest.mark.slow
def test_zmq_local_bad_config_exits_2_with_one_message(tmp_path):
    res = launch(2, "--set", "optimizer.lrr=1", "--run-dir", str(tmp_path / "run"), timeout=60)
    assert res.returncode == 2
    assert res.stderr.count("optimizer.lrr: unknown key; did you mean optimizer.lr?") == 1, res.stderr
    assert not (tmp_path / "run").exists()
    assert_none_left(str(tmp_path))


@pytest.mark.slow
def test_a_failing_worker_is_prefixed_and_the_servers_code_is_returned(tmp_path):
    """Workers that cannot start (no CURVE client key): their messages come prefixed, and
    zmq-local returns the server's code once the server gives up waiting for them."""
    from distbp.comm.zmq_ps import make_keys

    keys = tmp_path / "keys"
    make_keys(keys)
    (keys / "client.key_secret").unlink()
    res = launch(2, "--set", f"comm.curve={keys}", "--set", "comm.join_timeout_s=3", "--run-dir",
                 str(tmp_path / "run"), *SMALL, timeout=120)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.splitlines()
    for i in (0, 1):
        assert any(line.startswith(f"[worker {i}] ") and "client.key_secret" in line for line in lines), res.stderr
    assert "only 0 of 2 workers joined within 3 s" in res.stderr
    assert not [line for line in lines if "client.key_secret" in line and not line.startswith("[worker ")]
    assert_none_left(str(tmp_path))


def _start_long_job(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    """zmq-local 2 on a job far too long to finish, once its server has logged a step."""
    run_dir = tmp_path / "run"
    out = tmp_path / "launcher.log"
    with open(out, "w") as f:
        proc = subprocess.Popen([*ZMQ_LOCAL, "2", "--set", "train.epochs=100000", "--set", "train.log_every=5",
                                 "--set", "checkpoint.every=1000000", "--run-dir", str(run_dir), *SMALL],
                                stdout=f, stderr=subprocess.STDOUT, env=clean_env(), stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + 90
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text().count('"loss"') >= 2):
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_group(proc)
            pytest.fail(f"the job did not start training: {out.read_text()}")
        time.sleep(0.1)
    return proc, run_dir, out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_zmq_local_checkpoints_and_leaves_nothing(tmp_path, sig):
    proc, run_dir, out = _start_long_job(tmp_path)
    try:
        proc.send_signal(sig)
        code = proc.wait(timeout=90)
    finally:
        kill_group(proc)
    log = out.read_text()
    assert code == 128 + sig, log
    stopped = re.search(rf"stopped by {signal.Signals(sig).name} after step (\d+)", log)
    assert stopped, log
    # The checkpoint of the step it stopped after (periodic ones are off), and it verifies.
    (ckpt,) = list_checkpoints(run_dir / "checkpoints")
    assert read_checkpoint(ckpt).step == int(stopped.group(1))
    worker_lines = [line for line in log.splitlines() if "the server stopped the job" in line]
    assert all(line.startswith("[worker ") for line in worker_lines), log
    assert_none_left(str(run_dir))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_children_end_when_zmq_local_is_killed(tmp_path):
    proc, run_dir, out = _start_long_job(tmp_path)
    try:
        proc.send_signal(signal.SIGKILL)  # no handler runs: the kernel tells the children
        proc.wait(timeout=30)
        assert_none_left(str(run_dir), within_s=60)
    finally:
        kill_group(proc)
        for pid in processes_mentioning(str(run_dir)):
            os.kill(pid, signal.SIGKILL)
    # The server got SIGTERM (or lost a worker that did) and kept its last finished step.
    assert list_checkpoints(run_dir / "checkpoints"), out.read_text()


# -- mpirun with a hostfile; Slurm ------------------------------------------------------------------
MPIRUN_HOSTS = LAUNCH / "mpirun-hosts"


def test_mpirun_hosts_uses_each_launchers_hostfile_option(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost:2\n")
    fake = tmp_path / "ompi-mpirun"
    fake.write_text("#!/bin/sh\necho 'mpirun (Open MPI) 4.1.6'\n")
    fake.chmod(0o755)
    for mpirun, option in ((str(Path(sys.executable).parent / "mpirun"), "-f"), (str(fake), "--hostfile")):
        if not Path(mpirun).exists():
            continue
        res = subprocess.run([str(MPIRUN_HOSTS), "--dry-run", str(hosts), "3", "--set", "train.max_steps=5"],
                             capture_output=True, text=True, timeout=30,
                             env=clean_env(MPIRUN=mpirun, DISTBP_PYTHON=sys.executable))
        assert res.returncode == 0, res.stderr
        assert shlex.split(res.stdout) == [mpirun, option, str(hosts), "-n", "3", *PROGRAM, "--set",
                                           "train.max_steps=5", "--set", "comm.backend=mpi"]
    res = subprocess.run([str(MPIRUN_HOSTS), str(hosts), "0"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "positive integer" in res.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (Path(sys.executable).parent / "mpirun").exists(), reason="needs the mpich wheel's mpirun")
def test_mpirun_hosts_runs_on_a_localhost_hostfile(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost:2\n")
    run_dir = tmp_path / "run"
    res = subprocess.run([str(MPIRUN_HOSTS), str(hosts), "2", "--set", "train.max_steps=20", "--run-dir",
                          str(run_dir), *SMALL], capture_output=True, text=True, timeout=180,
                         env=clean_env(DISTBP_PYTHON=sys.executable))
    assert res.returncode == 0, res.stderr
    assert "2 worker(s)" in res.stdout
    single = single_process_params(tmp_path / "single", ["train.max_steps=20"])
    np.testing.assert_allclose(final_params(run_dir, 20), single, rtol=0, atol=1e-5)


@pytest.mark.parametrize("code, requeued", [(0, False), (143, True), (1, False)])
def test_slurm_template_runs_distbp_on_shared_storage_and_requeues(tmp_path, code, requeued):
    """launch/slurm.sbatch under bash with fake srun and scontrol: what it starts, where
    the run directory is, and when it requeues the job."""
    script = (LAUNCH / "slurm.sbatch").read_text(encoding="utf-8")
    for directive in ("--nodes=", "--ntasks-per-node=", "--requeue", "--signal=TERM@", "--time="):
        assert f"#SBATCH {directive}" in script
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name, body in (("srun", f'echo "srun $*" >> {calls}\nexit {code}'),
                       ("scontrol", f'echo "scontrol $*" >> {calls}')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    submit = tmp_path / "submit"
    submit.mkdir()
    env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_SUBMIT_DIR=str(submit), SLURM_JOB_NAME="digits",
                    SLURM_JOB_ID="4242", SLURM_NTASKS="8", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="n[1-2]",
                    SLURM_CPUS_PER_TASK="2")
    res = subprocess.run(["bash", str(LAUNCH / "slurm.sbatch"), "--set", "train.epochs=3"], capture_output=True,
                         text=True, timeout=30, env=env)
    assert res.returncode == code, res.stderr
    lines = calls.read_text().splitlines()
    srun = shlex.split(lines[0])
    run_dir = submit / "runs" / "digits"  # the job's name, not its id: a requeued job finds it
    assert srun[:4] == ["srun", "--mpi=pmi2", "--kill-on-bad-exit=1", f"{submit}/.venv/bin/python"]
    assert srun[4:] == ["-m", "distbp.cli", "--run-dir", str(run_dir), "--resume", "auto", "--set",
                        "train.epochs=3", "--set", "comm.backend=mpi", "--set", "comm.threads=2"]
    assert run_dir.is_dir()
    assert (lines[1:] == ["scontrol requeue 4242"]) == requeued and len(lines) == 1 + requeued
