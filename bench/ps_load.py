"""Load test of the ZeroMQ parameter server: one server and 8 workers for 2,000 steps of a tiny model
(bench/README.md). Targets: no gradient lost or dropped; every process's RSS grows < 5 MB or < 5 %."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: E402  (bench/ is on sys.path)

GROWTH_MB, GROWTH_PCT = 5.0, 5.0
MODEL = ["data.name=synthetic", "data.samples=6400", "data.features=8", "data.classes=3", "model.sizes=[8,16,3]",
         "train.global_batch=64", "train.epochs=100000", "train.eval_every=1000", "checkpoint.every=1000",
         "train.progress=plain", "seed=3", "comm.backend=zmq", "comm.threads=1"]
STEP_RE = re.compile(r"^step (\d+)/\d+", re.M)
SUMMARY_RE = re.compile(r"messages: accepted (\d+)(?: \(([^)]*)\))?; dropped (\d+)(?: \(([^)]*)\))?")


def rss_mb(pid: int) -> float | None:
    """Resident MB of ``pid``; None once it is exiting (a zombie's statm reads 0 pages)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20 if pages else None


def table(text: str | None) -> dict[str, int]:
    return {k: int(v) for k, v in (p.strip().rsplit(" ", 1) for p in (text or "").split(",") if p.strip())}


def watch(procs: dict[str, subprocess.Popen], out_dir: Path, warm_step: int, timeout: float, interval: float):
    """Sample every process's RSS until all exited (or ``timeout``): (warm, last, samples, timed out)."""
    warm: dict[str, float] = {}
    last: dict[str, float] = {}
    samples, step, t0 = 0, 0, time.monotonic()
    while any(p.poll() is None for p in procs.values()):
        if time.monotonic() - t0 > timeout:
            return warm, last, samples, True
        m = STEP_RE.findall((out_dir / "server.out").read_text(errors="replace"))
        step = int(m[-1]) if m else step
        for name, p in procs.items():
            r = rss_mb(p.pid) if p.poll() is None else None
            if r is not None:
                last[name] = r
                if step >= warm_step:
                    warm.setdefault(name, r)
        samples += 1
        time.sleep(interval)
    return warm, last, samples, False


def run(steps: int, workers: int, out_dir: Path, timeout: float, interval: float, log_every: int) -> dict:
    args = common.sets([*MODEL, f"train.max_steps={steps}", f"train.log_every={log_every}",
                        f"comm.endpoint={common.free_endpoint()}"])
    (out_dir / "cwd").mkdir(parents=True, exist_ok=True)
    roles = {"server": ["--set", "comm.role=server", "--set", f"comm.workers={workers}", "--run-dir",
                        str(out_dir / "run")], **{f"worker{i}": ["--set", "comm.role=worker"] for i in range(workers)}}
    procs: dict[str, subprocess.Popen] = {}
    t0 = time.monotonic()
    try:
        for name, extra in roles.items():
            with open(out_dir / f"{name}.out", "w") as o, open(out_dir / f"{name}.err", "w") as e:
                procs[name] = subprocess.Popen([sys.executable, "-m", "distbp.cli", *args, *extra], stdout=o, stderr=e,
                                               cwd=out_dir / "cwd", env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                               start_new_session=True)
        warm_step = min(100, max(1, steps // 2))
        warm, last, samples, timed_out = watch(procs, out_dir, warm_step, timeout, interval)
    finally:
        for p in procs.values():  # only the processes this script started, each by its group id
            common.kill_group(p)
    m = STEP_RE.findall((out_dir / "server.out").read_text(errors="replace"))
    s = SUMMARY_RE.search((out_dir / "server.err").read_text(errors="replace"))
    accepted, dropped = (table(s.group(2)), table(s.group(4))) if s else ({}, {})
    mem = {}
    for name in procs:
        w, e = warm.get(name), last.get(name)
        mem[name] = {"warm_mb": w, "end_mb": e, "growth_mb": None, "growth_pct": None} if w is None or e is None else \
            {"warm_mb": round(w, 2), "end_mb": round(e, 2), "growth_mb": round(e - w, 2),
             "growth_pct": round(100 * (e - w) / w, 2)}
    steps_done = int(m[-1]) if m else 0
    return {"steps": steps, "workers": workers, "steps_done": steps_done, "wall_s": round(time.monotonic() - t0, 2),
            "timed_out": timed_out, "exit_codes": {n: p.returncode for n, p in procs.items()},
            "expected_grads": steps * workers, "accepted_grads": accepted.get("grad"), "accepted": accepted,
            "accepted_total": int(s.group(1)) if s else None, "dropped_total": int(s.group(3)) if s else None,
            "dropped": dropped, "summary_line": s.group(0) if s else None, "warm_step": warm_step,
            "samples": samples, "interval_s": interval, "memory": mem,
            "bound": f"growth < {GROWTH_MB:g} MB or < {GROWTH_PCT:g} % per process",
            "pass_no_loss": bool(s) and accepted.get("grad") == steps * workers and int(s.group(3)) == 0
            and steps_done == steps,
            "pass_memory_flat": all(v["growth_mb"] is not None and (v["growth_mb"] < GROWTH_MB or v["growth_pct"]
                                                                     < GROWTH_PCT) for v in mem.values())}


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=1800, help="kill the job after this many seconds")
    a = common.parse(ap, argv)
    if a.quick:  # 200 steps, 4 workers; it logs every 10 steps and RSS is sampled every 0.05 s: it is short
        a.steps, a.workers = 200, 4
    report = {"machine": common.header(f"bench/ps_load.py: ZeroMQ parameter server, {a.workers} workers on loopback, "
                                       f"{a.steps} steps"), "command": sys.argv}
    with tempfile.TemporaryDirectory(prefix="ps_load-") as tmp:
        r = run(a.steps, a.workers, Path(tmp), a.timeout, 0.05 if a.quick else 0.5, 10 if a.quick else 100)
        if not r["pass_no_loss"]:  # show why
            print("--- server stderr (tail):\n" + (Path(tmp) / "server.err").read_text(errors="replace")[-2000:])
    print(f"{r['steps_done']} / {r['steps']} steps in {r['wall_s']:.1f} s{' TIMED OUT' * r['timed_out']}, exit codes "
          f"{r['exit_codes']}; server: {r['summary_line']}; RSS MB from step {r['warm_step']} to the end: "
          + "; ".join(f"{n} {v['warm_mb']} -> {v['end_mb']}" for n, v in r["memory"].items()))
    report.update(r)
    worst = max((v["growth_pct"] for v in r["memory"].values() if v["growth_pct"] is not None), default=None)
    common.judge(report, f"ps_no_message_lost@{a.workers}", r["pass_no_loss"], f"no message lost: accepted grads "
                 f"{r['accepted_grads']} == {r['expected_grads']}, dropped {r['dropped_total']}",
                 limit=r["expected_grads"], value=r["accepted_grads"])
    common.judge(report, f"ps_rss_growth_pct@{a.workers}", r["pass_memory_flat"], f"memory flat: {r['bound']} (worst "
                 f"{worst}%)", limit=r["bound"], value=worst)
    return common.finish(report, a)


if __name__ == "__main__":
    sys.exit(main())
