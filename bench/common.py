"""What every benchmark shares: the command line (--quick, --json, --strict), the header (the
machine and the code measured), targets and the JSON report, and starting processes (mpiexec,
process groups) while measuring how busy the shared machine was meanwhile."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

MLP = [784, 1024, 1024, 10]  # the MLP: 1,863,690 float32 parameters
BUSY_CORES = 0.25  # other processes using more cores than this during a job: run it again, say so
NOISY_SPREAD = 0.10  # interquartile range / median above this: a busy machine, verdicts unreliable


def parser(doc: str, worker: bool = False) -> argparse.ArgumentParser:
    """The options every benchmark takes (and, ``worker``, the hidden ones of its MPI ranks)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI smoke: a short run (explicit flags still win)")
    ap.add_argument("--json", metavar="PATH", help="write every figure as JSON to PATH")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    if worker:
        ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
        ap.add_argument("--out", help=argparse.SUPPRESS)
        ap.add_argument("--hostfile", help="spread the ranks over the hosts of this file (mpiexec -f)")
    return ap


def parse(ap: argparse.ArgumentParser, argv: list[str] | None, **options: tuple) -> argparse.Namespace:
    """Add the integer ``options`` (name=(what, default, --quick default)) and parse; one left
    unset gets its default, or with --quick its --quick default."""
    for name, (what, full, quick) in options.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"{what} (default {full}; --quick {quick})")
    args = ap.parse_args(argv)
    for name, (_, full, quick) in options.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:  # older numpy has no mode="dicts"; the BLAS name is only informative
        blas = "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "host": platform.node(), "python": platform.python_version(), "numpy": np.__version__, "blas": blas,
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"), "loadavg_at_start": os.getloadavg(),
            "mpi4py": importlib.metadata.version("mpi4py") if importlib.util.find_spec("mpi4py") else "-",
            "code": code_version()}


def code_version() -> str:
    """The commit the measured distbp comes from, and whether distbp/ had uncommitted changes."""
    try:
        head, dirty = (subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
                       for cmd in (["rev-parse", "--short", "HEAD"], ["status", "--porcelain", "--", "distbp"]))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line[3:] for line in dirty.split("\n") if line.strip()]
    return f"git {head.strip()}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else "") \
        if head.strip() else "unknown (not a git checkout)"


def header(title: str) -> dict:
    """Print the title, the command, the machine and the code; return ``machine_info()``."""
    info = machine_info()
    print(f"{title}\ncommand: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), python {info['python']}, "
          f"numpy {info['numpy']}, BLAS {info['blas']} ({info['blas_threads']} thread), mpi4py {info['mpi4py']}; "
          f"load average at start {', '.join(f'{v:.2f}' for v in info['loadavg_at_start'])}\ncode: {info['code']}",
          flush=True)
    return info


def judge(report: dict, key: str, ok: bool, line: str, **figures) -> None:
    """A target: into ``report["targets"][key]`` (``figures``: limit, value, ...) and a PASS/FAIL line."""
    report.setdefault("targets", {})[key] = {**figures, "ok": bool(ok)}
    print(f"{'PASS' if ok else 'FAIL'} {line}")


def flag_noise(report: dict, spreads: dict[str, float] | None = None, loads: dict[str, float] | None = None) -> None:
    """``report["noisy"]`` and a NOISY line when a spread (interquartile range / median) is above
    NOISY_SPREAD; ``report["busy"]`` and a BUSY line when other processes kept more than
    BUSY_CORES cores busy during a job (``loads``): the verdicts need a rerun then."""
    for key, what, values, limit, unit in (("noisy", "NOISY spread above 10%", spreads, NOISY_SPREAD, "{:.0%}"),
                                           ("busy", "BUSY other processes ran", loads, BUSY_CORES, "{:.2f} cores")):
        over = {k: v for k, v in (values or {}).items() if v > limit}
        report[key] = bool(over)
        if over:
            print(f"{what} (" + "; ".join(f"{k}: {unit.format(v)}" for k, v in over.items())
                  + "): rerun before trusting the verdicts")


def finish(report: dict, args: argparse.Namespace) -> int:
    """Write the figures to ``--json PATH`` if asked; the exit status: 1 under --strict when a
    target (not an informational one) failed, else 0: a benchmark reports, it does not judge."""
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {args.json}")
    failed = [k for k, t in report.get("targets", {}).items() if not t["ok"] and not t.get("informational")]
    return 1 if args.strict and failed else 0


def rotation(names: list, r: int) -> list:
    """Round r's order: rotated by r, reversed every other round, so drift hits all alike."""
    k = r % len(names)
    order = names[k:] + names[:k]
    return order[::-1] if r % 2 else order


def rss_bytes() -> int:
    """Current resident set size (not the peak), from /proc/self/statm."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mpiexec_path() -> Path:
    """The mpiexec next to the interpreter (the mpich wheel's)."""
    path = Path(sys.executable).parent / "mpiexec"
    path = path if path.is_file() else Path(shutil.which("mpiexec") or path)  # a system Python's wheel: on PATH
    if not path.is_file():
        raise SystemExit(f"no mpiexec next to the interpreter ({path}); install the mpich wheel")
    return path


def _cpu_ticks() -> tuple[float, float, float]:
    """(busy, steal, total) seconds of all CPUs since boot, from /proc/stat."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    hz, steal = os.sysconf("SC_CLK_TCK"), fields[7] if len(fields) > 7 else 0.0
    idle, total = fields[3] + (fields[4] if len(fields) > 4 else 0.0), sum(fields[:8])
    return (total - idle - steal) / hz, steal / hz, total / hz


class CpuWatch:
    """CPU used by everything else on the machine while a job runs: the busy time of all CPUs
    minus what this process and its (waited-for) children used, in cores, and the time the
    hypervisor stole. The machine is shared; this says how shared it was."""

    def __enter__(self) -> "CpuWatch":
        self.t0, self.cpu0, self.me0 = time.perf_counter(), _cpu_ticks(), os.times()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.t0
        cpu1, me1 = _cpu_ticks(), os.times()
        mine = sum(getattr(me1, k) - getattr(self.me0, k)
                   for k in ("user", "system", "children_user", "children_system"))
        busy, steal, total = (b - a for a, b in zip(self.cpu0, cpu1))
        self.result = {"wall_s": wall, "other_cores": max(0.0, busy - mine) / max(wall, 1e-9),
                       "steal_pct": 100.0 * steal / max(total, 1e-9)}


def least_disturbed(run: Callable[[], dict], retries: int) -> dict:
    """``run()`` (whose result has "other_cores"), again up to ``retries`` times while other
    processes kept more than BUSY_CORES cores busy; the least disturbed attempt is kept."""
    attempts = []
    for _ in range(retries + 1):
        attempts.append(run())
        if attempts[-1]["other_cores"] <= BUSY_CORES:
            break
    best = min(attempts, key=lambda a: a["other_cores"])
    best["attempts"] = len(attempts)
    best["discarded_other_cores"] = [a["other_cores"] for a in attempts if a is not best]
    return best


def launch(script: Path, n: int, worker_args: list[str], timeout: float, retries: int, hosts: str | None = None) -> dict:
    """``script --worker --out FILE ...`` under ``mpiexec -n n`` through ``least_disturbed``: the figures
    rank 0 wrote to FILE, with the job's load. A failed job ends the benchmark."""
    def once() -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "worker.json"
            cmd = [str(mpiexec_path()), *(["-f", hosts] if hosts else []), "-n", str(n), sys.executable, str(script),
                   "--worker", "--out", str(out), *worker_args]
            try:
                with CpuWatch() as watch:
                    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
            except subprocess.TimeoutExpired:
                raise SystemExit(f"{' '.join(cmd)}: no result after {timeout:.0f} s") from None
            if res.returncode != 0 or not out.is_file():
                raise SystemExit(f"{res.stdout}{res.stderr}{' '.join(cmd)}: exit status {res.returncode}")
            return {**json.loads(out.read_text()), **watch.result}
    res = least_disturbed(once, retries)
    print(f"  ran {n} rank(s) in {res['wall_s']:.1f} s; other processes kept {res['other_cores']:.2f} cores busy "
          f"meanwhile, hypervisor steal {res['steal_pct']:.1f}%", flush=True)
    return res


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def sets(overrides: list[str]) -> list[str]:
    """distbp-train's ``--set KEY=VALUE`` arguments."""
    return [a for o in overrides for a in ("--set", o)]


def kill_group(proc: subprocess.Popen) -> None:
    """Stop a process this script started with start_new_session=True, and its children."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def torch_version() -> str | None:
    """torch's version if it is installed, without importing it (torch stays optional)."""
    try:
        return importlib.metadata.version("torch") if importlib.util.find_spec("torch") else None
    except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
        return None
