"""Load test of the ZeroMQ parameter server: one server and N workers on
loopback for many steps; no message may be lost and memory must stay flat.

    python bench/ps_load.py                 # 2,000 steps x 8 workers
    python bench/ps_load.py --quick         # 200 steps x 4 workers
    python bench/ps_load.py --json out.json --strict

A tiny model (synthetic data, 8 features, model.sizes=[8,16,3], global batch 64, one BLAS
thread per process) so that 9 processes are feasible on a small machine: this measures the
messaging and the processes' memory, not arithmetic.

Counts come from the server itself: at close it logs ``messages: accepted N (grad G, ...);
dropped D``. Expected grads = steps x workers. Memory: the resident set size of the server
and of every worker is read from /proc/<pid>/statm every ~0.5 s; "warm" is the first sample
once the server has logged a step >= the warm-up step (100, or steps/2 if fewer), "end" the
last sample before the process exited. Memory is flat if every process grew by less than
5 MB or less than 5 % from warm to end.

Prints PASS/FAIL lines; exits 0 unless --strict (then 1 on any FAIL)."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
GROWTH_MB, GROWTH_PCT = 5.0, 5.0

MODEL = ["data.name=synthetic", "data.samples=6400", "data.features=8", "data.classes=3",
         "model.sizes=[8,16,3]", "train.global_batch=64", "train.epochs=100000",
         "train.eval_every=1000", "checkpoint.every=1000", "train.progress=plain",
         "seed=3", "comm.backend=zmq", "comm.threads=1"]

STEP_RE = re.compile(r"^step (\d+)/\d+", re.M)
SUMMARY_RE = re.compile(r"messages: accepted (\d+)(?: \(([^)]*)\))?; dropped (\d+)(?: \(([^)]*)\))?")


def free_endpoint() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def rss_mb(pid: int) -> float | None:
    """Resident MB of ``pid``; None once it is exiting (a zombie's statm reads 0 pages, which
    must not count as the process's last sample)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * PAGE / 2**20 if pages else None


def table(text: str | None) -> dict[str, int]:
    out = {}
    for part in (text or "").split(","):
        if part.strip():
            k, v = part.strip().rsplit(" ", 1)
            out[k] = int(v)
    return out


def run(steps: int, workers: int, out_dir: Path, timeout: float, interval: float = 0.5,
        log_every: int = 100) -> dict:
    endpoint = free_endpoint()
    sets = [*MODEL, f"train.max_steps={steps}", f"train.log_every={log_every}", f"comm.endpoint={endpoint}"]
    args = [a for o in sets for a in ("--set", o)]
    cwd = out_dir / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs: list[tuple[str, subprocess.Popen, Path]] = []

    def launch(name: str, extra: list[str]) -> None:
        err = out_dir / f"{name}.err"
        with open(out_dir / f"{name}.out", "w") as o, open(err, "w") as e:
            p = subprocess.Popen([sys.executable, "-m", "distbp.cli", *args, *extra], stdout=o, stderr=e,
                                 cwd=cwd, env=env, start_new_session=True)
        procs.append((name, p, err))

    warm_step = min(100, max(1, steps // 2))
    t0 = time.monotonic()
    launch("server", ["--set", "comm.role=server", "--set", f"comm.workers={workers}",
                      "--run-dir", str(out_dir / "run")])
    for i in range(workers):
        launch(f"worker{i}", ["--set", "comm.role=worker"])
    warm: dict[str, float] = {}
    last: dict[str, float] = {}
    samples = 0
    step = 0
    timed_out = False
    try:
        while any(p.poll() is None for _, p, _ in procs):
            if time.monotonic() - t0 > timeout:
                timed_out = True
                break
            m = STEP_RE.findall((out_dir / "server.out").read_text(errors="replace"))
            step = int(m[-1]) if m else step
            for name, p, _ in procs:
                r = rss_mb(p.pid) if p.poll() is None else None
                if r is None:
                    continue
                last[name] = r
                if step >= warm_step and name not in warm:
                    warm[name] = r
            samples += 1
            time.sleep(interval)
    finally:
        for _, p, _ in procs:  # only the processes this script started, each by its group id
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
    wall = time.monotonic() - t0
    server_err = (out_dir / "server.err").read_text(errors="replace")
    m = STEP_RE.findall((out_dir / "server.out").read_text(errors="replace"))
    steps_done = int(m[-1]) if m else 0
    s = SUMMARY_RE.search(server_err)
    accepted = table(s.group(2)) if s else {}
    dropped = table(s.group(4)) if s else {}
    mem = {}
    for name, _, _ in procs:
        w, e = warm.get(name), last.get(name)
        if w is None or e is None:
            mem[name] = {"warm_mb": w, "end_mb": e, "growth_mb": None, "growth_pct": None}
        else:
            mem[name] = {"warm_mb": round(w, 2), "end_mb": round(e, 2), "growth_mb": round(e - w, 2),
                         "growth_pct": round(100 * (e - w) / w, 2)}
    expected = steps * workers
    no_loss = bool(s) and accepted.get("grad") == expected and int(s.group(3)) == 0 and steps_done == steps
    flat = all(v["growth_mb"] is not None and (v["growth_mb"] < GROWTH_MB or v["growth_pct"] < GROWTH_PCT)
               for v in mem.values())
    return {
        "steps": steps, "workers": workers, "steps_done": steps_done, "wall_s": round(wall, 2),
        "timed_out": timed_out, "exit_codes": {n: p.returncode for n, p, _ in procs},
        "expected_grads": expected, "accepted_grads": accepted.get("grad"),
        "accepted": accepted, "accepted_total": int(s.group(1)) if s else None,
        "dropped_total": int(s.group(3)) if s else None, "dropped": dropped,
        "summary_line": s.group(0) if s else None, "warm_step": warm_step, "samples": samples,
        "interval_s": interval,
        "memory": mem, "bound": f"growth < {GROWTH_MB:g} MB or < {GROWTH_PCT:g} % per process",
        "pass_no_loss": no_loss, "pass_memory_flat": flat,
    }


def report(r: dict) -> str:
    lines = [f"ZeroMQ parameter server load: {r['workers']} workers on loopback, {r['steps']} steps",
             f"steps done        {r['steps_done']} / {r['steps']}  (wall {r['wall_s']:.1f} s"
             f"{', TIMED OUT' if r['timed_out'] else ''})",
             f"exit codes        {r['exit_codes']}",
             f"server summary    {r['summary_line']}",
             f"grads expected    {r['expected_grads']} (= {r['steps']} x {r['workers']})",
             f"grads accepted    {r['accepted_grads']}",
             f"dropped           {r['dropped_total']} {r['dropped'] or ''}".rstrip(),
             f"memory (RSS, MB): warm = first sample at step >= {r['warm_step']}, end = last sample; "
             f"{r['samples']} samples every {r['interval_s']:g} s",
             f"  {'process':<10} {'warm':>8} {'end':>8} {'growth':>8} {'%':>7}"]
    for name, v in r["memory"].items():
        if v["growth_mb"] is None:
            lines.append(f"  {name:<10} {'-':>8} {'-':>8} {'-':>8} {'-':>7}")
        else:
            lines.append(f"  {name:<10} {v['warm_mb']:8.2f} {v['end_mb']:8.2f} {v['growth_mb']:+8.2f} "
                         f"{v['growth_pct']:+6.2f}%")
    lines.append(f"{'PASS' if r['pass_no_loss'] else 'FAIL'} no message lost: accepted grads "
                 f"{r['accepted_grads']} == {r['expected_grads']}, dropped {r['dropped_total']}")
    lines.append(f"{'PASS' if r['pass_memory_flat'] else 'FAIL'} memory flat: {r['bound']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--quick", action="store_true",
                    help="200 steps, 4 workers (logs every 10 steps, samples every 0.05 s: it is short)")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--out-dir", type=Path, help="keep the processes' logs here (default: a temporary dir)")
    ap.add_argument("--timeout", type=float, default=1800, help="kill the job after this many seconds")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a check fails")
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.workers, a.interval = 200, 4, min(a.interval, 0.05)
    with tempfile.TemporaryDirectory(prefix="ps_load-") as tmp:
        out_dir = a.out_dir or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        r = run(a.steps, a.workers, out_dir, a.timeout, a.interval, 10 if a.quick else 100)
        if not r["pass_no_loss"]:  # show why
            err = (out_dir / "server.err").read_text(errors="replace")
            print("--- server stderr (tail):\n" + err[-2000:], file=sys.stderr)
    print(report(r), flush=True)
    worst = max((v["growth_pct"] for v in r["memory"].values() if v["growth_pct"] is not None), default=None)
    r["targets"] = {f"ps_no_message_lost@{a.workers}": {"limit": r["expected_grads"], "value": r["accepted_grads"],
                                                         "ok": r["pass_no_loss"]},
                    f"ps_rss_growth_pct@{a.workers}": {"limit": r["bound"], "value": worst, "ok": r["pass_memory_flat"]}}
    if a.json:
        a.json.write_text(json.dumps(r, indent=2) + "\n")
    return 1 if a.strict and not (r["pass_no_loss"] and r["pass_memory_flat"]) else 0


if __name__ == "__main__":
    sys.exit(main())
