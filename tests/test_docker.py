"""docker/Dockerfile and docker/docker-compose.yml for real, against a Docker engine: the image
builds from the repository, compose trains the default config with 3 workers to the result of
launch/zmq-local 3, `compose stop` and `up` resume it bitwise, `docker kill` of a worker leaves
the job to the others (or ends it with MIN_WORKERS=WORKERS, as the README says), a container
whose process dies is restarted by Docker (a worker rejoins, the coordinator resumes bitwise),
CURVE works with keys mounted read-only, nothing runs as root, and nothing is left behind. Skipped, with the reason, when no engine answers (.ci/run starts one where Docker
is installed).

The base image: $DISTBP_DOCKER_BASE_IMAGE, else python:3.12-slim (the Dockerfile's default)
where the engine has it or can pull it, else a local python:3.11-slim (the stand-in that
../shared/tools/docker-setup.sh makes where Docker Hub cannot be reached)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from distbp.train import read_checkpoint

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker" / "docker-compose.yml"
DOCKER = shutil.which("docker")
FINAL = 390  # the default config: 30 epochs of 13 steps (1,617 training images, global batch 128)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _run(*args: str, timeout: float = 120, check: bool = True, env: dict | None = None,
         input: str | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env, input=input)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def _engine() -> str | None:
    """Why there is no usable engine, or None."""
    if DOCKER is None:
        return "docker is not installed"
    try:
        res = subprocess.run([DOCKER, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                             timeout=20)
    except subprocess.TimeoutExpired:
        return "docker info did not answer in 20 s"
    if res.returncode != 0:
        return f"no Docker engine answers ({(res.stderr.strip().splitlines() or ['?'])[-1]})"
    if subprocess.run([DOCKER, "compose", "version"], capture_output=True, timeout=20).returncode != 0:
        return "the docker compose v2 plugin is not installed"
    return None


def _builder() -> str | None:
    """A docker CLI that builds with BuildKit (the Dockerfile's RUN --mount needs it): one with
    the buildx plugin (Docker 23 and later build with it), or an older one with BuildKit built in."""
    seen = []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        cli = os.path.join(d, "docker")
        if not os.access(cli, os.X_OK) or os.path.realpath(cli) in seen:
            continue
        seen.append(os.path.realpath(cli))
        if subprocess.run([cli, "buildx", "version"], capture_output=True, timeout=20).returncode == 0:
            return cli
        version = subprocess.run([cli, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True,
                                 timeout=20).stdout.strip()
        if version and int(version.split(".")[0]) < 23:
            return cli
    return None


def _has_image(name: str) -> bool:
    return subprocess.run([DOCKER, "image", "inspect", name], capture_output=True, timeout=30).returncode == 0


def _base_image() -> str | None:
    if os.environ.get("DISTBP_DOCKER_BASE_IMAGE"):
        return os.environ["DISTBP_DOCKER_BASE_IMAGE"]
    if _has_image("python:3.12-slim"):
        return "python:3.12-slim"
    try:
        if subprocess.run([DOCKER, "pull", "-q", "python:3.12-slim"], capture_output=True, timeout=120).returncode == 0:
            return "python:3.12-slim"
    except subprocess.TimeoutExpired:
        pass
    return "python:3.11-slim" if _has_image("python:3.11-slim") else None


@pytest.fixture(scope="session")
def image() -> dict:
    why = _engine()
    if why:
        pytest.skip(f"docker tests skipped: {why}")
    base = _base_image()
    if base is None:
        pytest.skip("docker tests skipped: no base image (python:3.12-slim cannot be pulled and there is no local "
                    "python:3.11-slim); set DISTBP_DOCKER_BASE_IMAGE")
    builder = _builder()
    if builder is None:
        pytest.skip("docker tests skipped: no docker CLI here builds with BuildKit (install the buildx plugin)")
    tag = f"distbp-test:{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    _run(builder, "build", "-q", "--build-arg", f"BASE_IMAGE={base}", "-f", "docker/Dockerfile", "-t", tag, str(REPO),
         timeout=1200, env=env)
    seconds = time.monotonic() - t0
    size = int(_run(DOCKER, "image", "inspect", "--format", "{{.Size}}", tag).stdout)
    print(f"\nimage {tag} from {base}: built in {seconds:.0f} s, {size / 1e6:.0f} MB")
    yield {"tag": tag, "base": base, "build_s": seconds, "size_bytes": size}
    _run(DOCKER, "image", "rm", "-f", tag, check=False)


class Compose:
    """One compose project of docker/docker-compose.yml on the test image; ``down`` removes its
    containers, network and volume, and checks that none is left."""

    def __init__(self, image: dict, workers: int, files: tuple[Path, ...] = (), **variables: str) -> None:
        self.project = f"distbp-test-{uuid.uuid4().hex[:8]}"
        self.env = dict(os.environ, DISTBP_IMAGE=image["tag"], WORKERS=str(workers),
                        DISTBP_LOCAL_PROCS=str(workers + 1), **variables)
        self.image, self.workers = image["tag"], workers
        self.files = [a for f in (COMPOSE, *files) for a in ("-f", str(f))]

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return _run(DOCKER, "compose", "-p", self.project, *self.files, *args, timeout=timeout, check=check,
                    env=self.env)

    def up(self) -> None:
        self("up", "-d", "--no-build", "--scale", f"worker={self.workers}")

    def ids(self, service: str) -> list[str]:
        return self("ps", "-a", "-q", service).stdout.split()

    def first_exit(self, service: str = "coordinator", timeout: float = 600) -> int:
        """``docker wait``: the container's next exit, even one that its restart policy follows
        with a restart."""
        (cid,) = self.ids(service)
        return int(_run(DOCKER, "wait", cid, timeout=timeout).stdout.strip())

    def wait(self, service: str = "coordinator", timeout: float = 600) -> int:
        """The exit code once the container has exited for good (restart: on-failure:3 may
        start it again after an exit), as the compose file's header waits for the job."""
        (cid,) = self.ids(service)
        return self.wait_id(cid, timeout)

    def wait_id(self, cid: str, timeout: float = 600) -> int:
        deadline = time.monotonic() + timeout
        while True:
            state = _run(DOCKER, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", cid).stdout.split()
            if state[0] == "exited":  # a restart pending reads "restarting", never "exited"
                return int(state[1])
            assert time.monotonic() < deadline, f"{cid} still {state[0]} after {timeout:g} s"
            time.sleep(0.5)

    def restarts(self, cid: str) -> int:
        return int(_run(DOCKER, "inspect", "-f", "{{.RestartCount}}", cid).stdout)

    def kill_process(self, cid: str) -> None:
        """kill -9 of the container's distbp-train (the child of tini, PID 1): a crash or the
        out-of-memory killer, not ``docker kill``, so the restart policy applies."""
        _run(DOCKER, "exec", cid, "sh", "-c", "kill -9 $(cat /proc/1/task/1/children)")

    def logs(self, service: str = "coordinator") -> str:
        res = self("logs", "--no-color", "--no-log-prefix", service)
        return ANSI.sub("", res.stdout + res.stderr)  # compose 2.26 starts each line with ESC[2K

    def wait_for_step(self, step: int, timeout: float = 300) -> None:
        """Until the coordinator has logged ``step`` (its plain log lines: no terminal in a container)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [int(s) for s in re.findall(r"^step (\d+)/", self.logs(), re.M)]
            if done and max(done) >= step:
                return
            (cid,) = self.ids("coordinator")
            state = _run(DOCKER, "inspect", "-f", "{{.State.Status}}", cid).stdout.strip()
            assert state == "running", f"the coordinator is {state} before step {step}:\n{self.logs()[-3000:]}"
            time.sleep(0.5)
        raise AssertionError(f"no step {step} in {timeout} s:\n{self.logs()[-3000:]}")

    def copy_run(self, dest: Path) -> Path:
        """The run directory, out of the (stopped or running) coordinator's volume."""
        (cid,) = self.ids("coordinator")
        _run(DOCKER, "cp", f"{cid}:/runs/digits-mlp", str(dest))
        return dest

    def down(self) -> None:
        self("down", "-v", "--remove-orphans", "--timeout", "10", check=False)
        label = f"label=com.docker.compose.project={self.project}"
        left = {what: _run(DOCKER, what, "ls", "-q", "--filter", label).stdout.split()
                for what in ("container", "network", "volume")}
        left["container"] = _run(DOCKER, "ps", "-a", "-q", "--filter", label).stdout.split()
        assert not any(left.values()), f"left behind by {self.project}: {left}"


@pytest.fixture
def compose(image):
    made: list[Compose] = []

    def make(workers: int, files: tuple[Path, ...] = ()) -> Compose:
        made.append(Compose(image, workers, files))
        return made[-1]

    yield make
    for c in made:
        c.down()


def _final(run: Path, step: int = FINAL) -> np.ndarray:
    return read_checkpoint(run / "checkpoints" / f"step-{step:08d}.npz").arrays["params"]


def _val_accuracy(run: Path) -> float:
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "val_accuracy" in line]
    return evals[-1]["val_accuracy"]


@pytest.fixture(scope="session")
def zmq_local_3(tmp_path_factory) -> np.ndarray:
    """launch/zmq-local 3 on this machine, the default config: the result compose must give."""
    run = tmp_path_factory.mktemp("zmq-local") / "run"
    env = dict(os.environ, DISTBP_PYTHON=sys.executable)
    _run(str(REPO / "launch" / "zmq-local"), "3", "--run-dir", str(run), timeout=600, env=env)
    return _final(run)


def test_the_image_builds_and_runs_as_a_non_root_user(image):
    assert image["size_bytes"] > 0
    uid = _run(DOCKER, "run", "--rm", "--entrypoint", "id", image["tag"], "-u").stdout.strip()
    assert uid != "0"
    out = _run(DOCKER, "run", "--rm", image["tag"], "--version").stdout
    assert out.startswith("distbp ")


def test_compose_with_3_workers_trains_the_default_config_as_zmq_local_3(compose, tmp_path, zmq_local_3):
    c = compose(3)
    t0 = time.monotonic()
    c.up()
    assert c.wait() == 0, c.logs()[-3000:]
    seconds = time.monotonic() - t0
    for cid in c.ids("worker"):
        assert int(_run(DOCKER, "wait", cid).stdout) == 0
    # Every container of the job ran as the image's user, not root.
    for cid in c.ids("coordinator") + c.ids("worker"):
        assert _run(DOCKER, "inspect", "-f", "{{.Config.User}}", cid).stdout.strip() == "distbp"
    run = c.copy_run(tmp_path / "run")
    accuracy = _val_accuracy(run)
    print(f"\ncompose, 3 workers: {seconds:.1f} s to the end, val_accuracy {accuracy:.4f}, "
          f"max|Δ| against zmq-local 3: {np.max(np.abs(_final(run) - zmq_local_3)):.2e}")
    assert accuracy >= 0.97
    np.testing.assert_allclose(_final(run), zmq_local_3, rtol=0, atol=1e-5)
    assert "3 worker(s)" in c.logs()


@pytest.fixture(scope="session")
def longer(image, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The default config for 100 epochs (1,300 steps, about 20 s here, so that a fault surely
    comes mid-run) with 2 workers: its compose override and its final parameters."""
    tmp = tmp_path_factory.mktemp("longer")
    override = _commands(tmp / "longer.yml", 2, ["train.epochs=100"])
    whole = Compose(image, 2, (override,))
    try:
        whole.up()
        assert whole.wait() == 0, whole.logs()[-3000:]
        final = _final(whole.copy_run(tmp / "whole"), 1300)
    finally:
        whole.down()
    return override, final


def test_compose_stop_checkpoints_and_up_resumes_bitwise(compose, tmp_path, longer):
    override, reference = longer
    c = compose(2, (override,))
    c.up()
    c.wait_for_step(100)
    c("stop", timeout=120)  # SIGTERM: the coordinator finishes its step, checkpoints, stops the workers
    logs = c.logs()
    stopped = re.search(r"stopped by SIGTERM after step (\d+); checkpoint", logs)
    assert stopped and int(stopped.group(1)) < 1300, logs[-3000:]
    c.up()
    assert c.wait() == 0, c.logs()[-3000:]
    assert f"resumed from /runs/digits-mlp/checkpoints/step-{int(stopped.group(1)):08d}.npz" in c.logs()
    assert np.array_equal(_final(c.copy_run(tmp_path / "resumed"), 1300), reference)


@pytest.fixture(scope="session")
def one_process(tmp_path_factory) -> np.ndarray:
    """The default config in one process on this machine: the result an elastic job must stay
    within 1e-5 of (float32 drift, 1e-7 measured at this length)."""
    run = tmp_path_factory.mktemp("one") / "run"
    _run(sys.executable, "-m", "distbp.cli", "--run-dir", str(run), "--set", "train.progress=plain", timeout=300)
    return _final(run)


def test_docker_kill_of_a_worker_leaves_the_job_to_the_others(compose, tmp_path, one_process):
    c = compose(3)  # elastic by default: MIN_WORKERS=1
    c.up()
    c.wait_for_step(30)
    victim = c.ids("worker")[0]
    _run(DOCKER, "kill", victim)
    assert c.wait() == 0, c.logs()[-3000:]
    logs = c.logs()
    assert re.search(r"worker \d \(\S+:\d+\) .*the job goes on without it; world size 2 from step \d+", logs), logs[-3000:]
    assert c.restarts(victim) == 0  # Docker restarts nothing that docker kill ended
    final = _final(c.copy_run(tmp_path / "run"))
    print(f"\ndocker kill of a worker: max|Δ| against one process {np.max(np.abs(final - one_process)):.2e}")
    np.testing.assert_allclose(final, one_process, rtol=0, atol=1e-5)


def test_a_worker_whose_process_dies_is_restarted_and_rejoins(compose, tmp_path):
    # 1,300 steps, so that the restarted container (a few seconds) is back well before the end.
    # That the re-cut steps are exact is tests/test_elastic.py's (bitwise, on this machine); here
    # the float32 drift of 1,300 steps (3e-4 between 1 and 3 workers) leaves the accuracy to check.
    c = compose(3, (_commands(tmp_path / "longer3.yml", 3, ["train.epochs=100"]),))
    c.up()
    c.wait_for_step(20)
    victim = c.ids("worker")[0]
    c.kill_process(victim)
    assert c.wait() == 0, c.logs()[-3000:]
    logs = c.logs()
    assert c.restarts(victim) == 1, logs[-3000:]
    left = re.search(r"the job goes on without it; world size 2 from step (\d+)", logs)
    back = re.search(r"worker \d joined: \S+:\d+", logs)
    regrown = re.search(r"world size 3 from step (\d+)", logs[back.end():] if back else "")
    assert left and back and regrown and int(regrown.group(1)) > int(left.group(1)), logs[-3000:]
    run = c.copy_run(tmp_path / "run")
    sizes = [json.loads(line)["world_size"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"world_size"' in line]
    assert sizes[0] == 3 and 2 in sizes and sizes[-1] == 3, sizes
    print(f"\nworker process killed at step ~20: left at step {left.group(1)}, back at step {regrown.group(1)}")
    assert _val_accuracy(run) >= 0.97


@pytest.mark.parametrize("how", ["docker kill", "its process killed"])
def test_a_killed_coordinator_comes_back_and_resumes_bitwise(compose, tmp_path, longer, how):
    """docker kill: Docker leaves it stopped (stopped by hand) and `up` starts it again; its
    process killed (a crash, the out-of-memory killer): Docker restarts it (on-failure). Either
    way it resumes from its newest checkpoint and the workers, trying to rejoin
    (comm.reconnect_s), are admitted again."""
    override, reference = longer
    c = compose(2, (override,))
    c.up()
    c.wait_for_step(100)
    (coordinator,) = c.ids("coordinator")
    if how == "docker kill":
        _run(DOCKER, "kill", coordinator)
        # docker kill returns before the container has stopped; up on a running one would do nothing
        assert c.first_exit() == 137
        c.up()
    else:
        c.kill_process(coordinator)
    assert c.wait() == 0, c.logs()[-3000:]
    assert c.restarts(coordinator) == (0 if how == "docker kill" else 1)
    assert "resumed from /runs/digits-mlp/checkpoints/step-" in c.logs()
    for cid in c.ids("worker"):
        assert c.wait_id(cid) == 0
    assert "trying to rejoin for" in c.logs("worker")
    assert np.array_equal(_final(c.copy_run(tmp_path / "run"), 1300), reference)


def test_docker_kill_of_a_worker_with_min_workers_all_stops_the_job_naming_it(compose, tmp_path):
    c = compose(3, (_commands(tmp_path / "longer.yml", 3, ["train.epochs=100"], min_workers=3),))
    c.up()
    c.wait_for_step(50)
    victim = c.ids("worker")[0]
    _run(DOCKER, "kill", victim)
    assert c.first_exit(timeout=120) == 1  # then Docker starts it again (on-failure), which down ends
    logs = c.logs()
    # As the README's failure table says: the server names the worker and checkpoints the last finished step.
    assert re.search(r"worker \d \(\S+:\d+\) (silent for|left during|is gone)", logs), logs[-3000:]
    assert re.search(r"checkpoint of step \d+ written", logs), logs[-3000:]


def test_curve_with_keys_mounted_read_only(compose, tmp_path):
    keys = tmp_path / "keys"
    _run(str(Path(sys.executable).parent / "distbp-keys"), str(keys))
    for f in [keys, *keys.rglob("*")]:
        f.chmod(0o755 if f.is_dir() else 0o644)  # the container's user is not this one
    # One worker with the single-key layout (a key admits one worker at a time); comm.insecure
    # goes: CURVE guards the port.
    curve = _commands(tmp_path / "curve.yml", 1, ["comm.curve=/keys"], insecure=False,
                      volumes=[f"{keys}:/keys:ro"])
    c = compose(1, (curve,))
    c.up()
    assert c.wait() == 0, c.logs()[-3000:]
    logs = c.logs()
    assert "CURVE, 1 client key(s)" in logs and "holds key" in logs
    assert _val_accuracy(c.copy_run(tmp_path / "run")) >= 0.97


def _commands(path: Path, workers: int, sets: list[str], insecure: bool = True, volumes: list[str] = (),
              min_workers: int = 1) -> Path:
    """A compose override: docker-compose.yml's two commands with ``sets`` added to both."""
    common = ["--run-dir", "/runs/digits-mlp", "--set", "comm.backend=zmq"]
    extra = [a for kv in sets for a in ("--set", kv)]
    server = [*common, "--set", "comm.role=server", "--set", f"comm.workers={workers}", "--set",
              f"comm.min_workers={min_workers}", "--set", f"comm.max_workers={workers}", "--set",
              "comm.endpoint=tcp://0.0.0.0:5555", *(["--set", "comm.insecure=true"] if insecure else []), *extra]
    worker = [*common, "--set", "comm.role=worker", "--set", "comm.endpoint=tcp://coordinator:5555", *extra]
    services = {"coordinator": {"command": server}, "worker": {"command": worker}}
    if volumes:
        for svc in services.values():
            svc["volumes"] = list(volumes)
    path.write_text(json.dumps({"services": services}))  # JSON is YAML
    return path


# -- MPI across hosts: three containers, one rank each, over TCP -----------------------------------
HOSTS = REPO / "docker" / "test" / "mpi-hosts.yml"


@pytest.fixture(scope="session")
def mpi_image(image) -> str:
    tag = f"distbp-test-mpi:{uuid.uuid4().hex[:8]}"
    _run(_builder(), "build", "-q", "--build-arg", f"IMAGE={image['tag']}", "-f", "docker/test/Dockerfile.mpi",
         "-t", tag, str(REPO / "docker" / "test"), timeout=900, env=dict(os.environ, DOCKER_BUILDKIT="1"))
    yield tag
    _run(DOCKER, "image", "rm", "-f", tag, check=False)


@pytest.fixture
def hosts(image, mpi_image):
    c = Compose(image, 0)
    c.files, c.env["DISTBP_MPI_IMAGE"] = ["-f", str(HOSTS)], mpi_image
    c("up", "-d")
    deadline = time.monotonic() + 30
    while c("exec", "-T", "-u", "distbp", "host1", "ssh", "host3", "true", check=False).returncode != 0:
        assert time.monotonic() < deadline, "sshd did not answer in 30 s"
        time.sleep(0.5)
    yield c
    c.down()


def _mpirun_hosts(hosts: Compose, run_dir: str, *sets: str, popen: bool = False, log: Path | None = None):
    script = ("cd /tmp && MPIRUN=mpiexec DISTBP_PYTHON=$(command -v python3) /launch/mpirun-hosts /etc/distbp-hosts 3 "
              f"--run-dir {run_dir} --set comm.threads=1 " + " ".join(f"--set {s}" for s in sets))
    cmd = [DOCKER, "compose", "-p", hosts.project, *hosts.files, "exec", "-T", "-u", "distbp", "host1", "sh", "-c",
           script]
    if popen:
        return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=hosts.env)
    return _run(*cmd, timeout=600, env=hosts.env)


def test_mpi_over_three_hosts_matches_one_process(hosts, tmp_path):
    res = _mpirun_hosts(hosts, "/runs/three")
    ranks = re.search(r"ranks: 0=pid \d+@(\S+), 1=pid \d+@(\S+), 2=pid \d+@(\S+)", res.stdout)
    assert ranks and sorted(ranks.groups()) == ["host1", "host2", "host3"], res.stdout[-2000:]  # one rank per host
    hosts("exec", "-T", "-u", "distbp", "host1", "distbp-train", "--run-dir", "/runs/one", "--set", "comm.threads=1")
    (cid,) = hosts.ids("host1")
    for name in ("three", "one"):
        _run(DOCKER, "cp", f"{cid}:/runs/{name}", str(tmp_path / name))
    delta = float(np.max(np.abs(_final(tmp_path / "three") - _final(tmp_path / "one"))))
    print(f"\nMPI, 3 ranks on 3 hosts over TCP against one process: max|Δ| {delta:.2e}")
    assert delta <= 1e-5


def test_killing_a_host_ends_the_job_naming_the_rank_and_the_host(hosts, tmp_path):
    log = tmp_path / "job.log"
    job = _mpirun_hosts(hosts, "/runs/lost", "train.epochs=100", "comm.timeout_s=3", popen=True, log=log)
    try:
        deadline = time.monotonic() + 120
        while not re.search(r"^step 50/", log.read_text(), re.M):
            assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        ranks = dict((h, r) for r, h in re.findall(r"(\d+)=pid \d+@(host\d)", log.read_text()))
        (victim,) = hosts.ids("host2")
        t0 = time.monotonic()
        _run(DOCKER, "kill", victim)
        code = job.wait(timeout=60)
        seconds = time.monotonic() - t0
    finally:
        if job.poll() is None:
            job.kill()
    text = log.read_text()
    print(f"\nhost2 killed: the job ended {seconds:.2f} s later with exit {code}")
    assert code != 0 and seconds <= 10, text[-2000:]
    assert re.search(rf"mpirun-hosts: lost host2 \(rank {ranks['host2']}, pid \d+\): ", text), text[-2000:]
    assert "[mpiexec@" not in text  # the launcher's error stack is replaced by that line


def test_mpirun_elastic_restarts_on_the_remaining_hosts(hosts, tmp_path):
    hosts("exec", "-T", "-u", "distbp", "host1", "sh", "-c", "printf 'host1:1\\nhost2:1\\nhost3:1\\n' > /runs/hosts")
    log = tmp_path / "job.log"
    script = ("cd /tmp && MPIRUN=mpiexec DISTBP_PYTHON=$(command -v python3) /launch/mpirun-elastic 3 --max-restarts 1 "
              "--hostfile /runs/hosts --run-dir /runs/elastic --set comm.threads=1 --set train.epochs=20")
    job = subprocess.Popen([DOCKER, "compose", "-p", hosts.project, *hosts.files, "exec", "-T", "-u", "distbp", "host1",
                            "sh", "-c", script], stdout=log.open("w"), stderr=subprocess.STDOUT, env=hosts.env)
    try:
        deadline = time.monotonic() + 120
        while not re.search(r"^step 100/", log.read_text(), re.M):
            assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        # The operator drops the dead host from the hostfile; mpirun-elastic reads it before the restart.
        hosts("exec", "-T", "-u", "distbp", "host1", "sh", "-c", "printf 'host1:1\\nhost3:1\\n' > /runs/hosts")
        (victim,) = hosts.ids("host2")
        _run(DOCKER, "kill", victim)
        code = job.wait(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert re.search(r"mpirun-elastic: lost host2 \(rank \d, pid \d+\): ", text), text[-3000:]
    assert "mpirun-elastic: restart 1 of 1: 2 rank(s), from the newest checkpoint" in text, text[-3000:]
    assert re.search(r"ranks: 0=pid \d+@host1, 1=pid \d+@host3", text), text[-3000:]
    hosts("exec", "-T", "-u", "distbp", "host1", "distbp-train", "--run-dir", "/runs/one", "--set", "comm.threads=1",
          "--set", "train.epochs=20")
    (cid,) = hosts.ids("host1")
    for name in ("elastic", "one"):
        _run(DOCKER, "cp", f"{cid}:/runs/{name}", str(tmp_path / name))
    # 260 steps: short enough that another N stays well within 1e-5 (the drift grows with steps: README)
    delta = float(np.max(np.abs(_final(tmp_path / "elastic", 260) - _final(tmp_path / "one", 260))))
    print(f"\nmpirun-elastic, 3 hosts then 2 after host2 was killed: max|Δ| against one process {delta:.2e}")
    assert delta <= 1e-5
