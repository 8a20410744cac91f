"""Time to 97% validation accuracy of the default config with 1, 2 and 4 workers (real
``distbp-train`` runs) and in PyTorch eager (tta_torch.py) (bench/README.md). Target: every worker
count reaches 97% in every repeat; distbp@1 / torch is information."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: E402  (bench/ is on sys.path)

# The runs it launches get the user's environment: the default config chooses its own BLAS threads.
CONFIG = common.ROOT / "configs" / "default.yaml"
TORCH_SCRIPT = Path(__file__).resolve().parent / "tta_torch.py"
POLL_S, TARGET = 1e-3, 0.97
QUICK_STEPS = 150  # --quick stops the runs here: past the crossing (step ~80), short of 390
THREADS_RE = re.compile(r"(\d+) BLAS thread\(s\) per worker")


def command(name: str, overrides: list[str], run_dir: Path, torch_threads: int) -> list[str]:
    """``distbp-train`` as a user runs it (the console script next to the interpreter, else
    ``python -m distbp.cli``; ``mpiexec -n N`` when N > 1), or the torch script."""
    args = ["--config", str(CONFIG), "--run-dir", str(run_dir), *common.sets(overrides)]
    if name == "torch":
        return [sys.executable, str(TORCH_SCRIPT), *args, "--threads", str(torch_threads), "--target", str(TARGET),
                "--summary", str(run_dir / "summary.json")]
    script = Path(sys.executable).parent / "distbp-train"
    cmd = [*([str(script)] if script.is_file() else [sys.executable, "-m", "distbp.cli"]), *args, "--resume", "never"]
    n = int(name.split("@")[1])
    return cmd if n == 1 else [str(common.mpiexec_path()), "-n", str(n), *cmd]


def tail_run(cmd: list[str], run_dir: Path, out: Path, timeout: float) -> dict:
    """Run ``cmd`` and stamp every line of ``run_dir/metrics.jsonl`` with the time since the
    launch at which it appeared (polled every POLL_S with raw os.read and os.path.exists, the
    cheapest checks: about 3% of one core). A failed run ends the benchmark."""
    metrics, records, created, pending, fd = str(run_dir / "metrics.jsonl"), [], None, b"", None
    with open(out, "w") as log, common.CpuWatch() as watch:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                cwd=common.ROOT, start_new_session=True)
        try:
            while True:
                exited = proc.poll() is not None
                now = time.perf_counter() - t0
                if fd is None and os.path.exists(metrics):
                    created, fd = now, os.open(metrics, os.O_RDONLY)
                if fd is not None:
                    while chunk := os.read(fd, 1 << 16):
                        pending += chunk
                    *lines, pending = pending.split(b"\n")
                    records += [(now, json.loads(line)) for line in lines if line.strip()]
                if exited:
                    break
                if now > timeout:
                    raise SystemExit(f"bench/tta.py: {cmd[:4]}... still running after {timeout:g} s; see {out}")
                time.sleep(POLL_S)
        finally:
            if fd is not None:
                os.close(fd)
            common.kill_group(proc)
    if proc.returncode != 0 or created is None:
        raise SystemExit(f"bench/tta.py: {' '.join(cmd)} exited {proc.returncode}" + ("" if created else
                         f" and {metrics} never appeared") + ":\n" + out.read_text()[-3000:])
    return {"records": records, "setup_s": created, "run_s": now, **watch.result}


def analyse(res: dict) -> dict:
    """The crossing (first eval with val_accuracy >= target) and the figures around it;
    ``curve`` is every eval as [seconds since launch, step, val_accuracy]."""
    evals = [(t, r) for t, r in res["records"] if "val_accuracy" in r]
    hit = next(((t, r) for t, r in evals if r["val_accuracy"] is not None and r["val_accuracy"] >= TARGET), None)
    out = {"setup_s": res["setup_s"], "run_s": res["run_s"], "other_cores": res["other_cores"],
           "steal_pct": res["steal_pct"], "evals": len(evals), "final_step": evals[-1][1]["step"] if evals else None,
           "final_val_accuracy": evals[-1][1]["val_accuracy"] if evals else None,
           "best_val_accuracy": max((r["val_accuracy"] or 0.0 for _, r in evals), default=None),
           "reached": hit is not None, "curve": [[round(t, 4), r["step"], r["val_accuracy"]] for t, r in evals]}
    if hit is not None:
        t, r = hit
        out.update(step=r["step"], launch_s=t, loop_s=t - res["setup_s"], val_accuracy=r["val_accuracy"],
                   evals_to_target=sum(1 for _, e in evals if e["step"] <= r["step"]))
    return out


def summarize(runs: list[dict]) -> dict:
    """Medians over the repeats that reached the target (all of them for setup and run time)."""
    hit = [r for r in runs if r["reached"]]

    def med(key: str, rs: list[dict]) -> float | None:
        return statistics.median(r[key] for r in rs) if rs else None

    return {"repeats": len(runs), "reached_in": len(hit), "steps": sorted({r["step"] for r in hit}),
            "launch_s": med("launch_s", hit), "setup_s": med("setup_s", runs), "loop_s": med("loop_s", hit),
            "run_s": med("run_s", runs), "final_val_accuracy": med("final_val_accuracy", runs),
            "worst_best_val_accuracy": min(r["best_val_accuracy"] or 0.0 for r in runs),
            "other_cores_max": max(r["other_cores"] for r in runs),
            "launch_s_per_run": [r.get("launch_s") for r in runs]}


def run_all(args, variants: list[str], overrides: list[str], torch_threads: int) -> dict[str, list]:
    """Untimed warm-up runs, then every repeat runs every variant once (``common.rotation``
    order, each through ``common.least_disturbed``)."""
    work, count, runs = Path(tempfile.mkdtemp(prefix="distbp-bench-tta-")), [0], {v: [] for v in variants}

    def run_once(name: str, extra: list[str]) -> dict:
        count[0] += 1
        d = work / f"{count[0]:02d}-{name.replace('@', '')}"
        d.mkdir()
        cmd = command(name, overrides + extra, d / "run", torch_threads)
        res = analyse(tail_run(cmd, d / "run", d / "output.txt", 120 if args.quick else 600))
        found = THREADS_RE.search((d / "output.txt").read_text())
        res.update(blas_threads=int(found.group(1)) if found else None, dir=str(d))
        if name == "torch":
            res["threads"] = json.loads((d / "run" / "summary.json").read_text())["threads"]
        return res
    try:
        for _ in range(args.warmup):
            for v in variants:
                run_once(v, [f"train.max_steps={args.eval_every}"])
        for r in range(args.repeats):
            for v in common.rotation(variants, r):
                res = common.least_disturbed(lambda: run_once(v, []), args.retries)
                runs[v].append(res)
                print(f"  repeat {r + 1} {v:<9}: " + (f"step {res['step']}, launch->target {res['launch_s']:.3f} s"
                      if res["reached"] else "target NOT reached") + f"; other processes kept {res['other_cores']:.2f} "
                      "cores busy", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return runs


def report_rows(report: dict, runs: dict) -> None:
    """The variants' medians into the report, printed (* : more ranks than cores)."""
    for v, rs in runs.items():
        row = report["variants"][v] = summarize(rs)
        n = 1 if v == "torch" else int(v.split("@")[1])
        row.update(processes=n, oversubscribed=v != "torch" and n > report["machine"]["usable_cores"], runs=rs,
                   blas_threads=rs[0].get("threads" if v == "torch" else "blas_threads"))
        print(f"{v + '*' * row['oversubscribed']:<9} medians, s: " + ", ".join(
            f"{k[:-2]} {row[k]:.3f}" for k in ("launch_s", "setup_s", "loop_s", "run_s") if row[k] is not None)
            + f"; {row['blas_threads']} thread(s); final accuracy {row['final_val_accuracy']}")


def verdicts(report: dict, args, pct: str) -> None:
    common.flag_noise(report, loads={v: row["other_cores_max"] for v, row in report["variants"].items()})
    for v, row in report["variants"].items():
        if v != "torch":
            common.judge(report, f"tta_reaches_{100 * TARGET:g}@{v.split('@')[1]}",
                         row["reached_in"] == row["repeats"],
                         f"{v} reaches {pct} in {row['reached_in']}/{row['repeats']} repeat(s), at step "
                         f"{','.join(map(str, row['steps'])) or '-'}", limit=TARGET,
                         value=row["worst_best_val_accuracy"], launch_s=row["launch_s"], loop_s=row["loop_s"],
                         steps=row["steps"])
    if "torch" in report["variants"]:
        one, t = report["variants"]["distbp@1"], report["variants"]["torch"]
        for what in ("launch", "loop"):
            a, b = one[f"{what}_s"], t[f"{what}_s"]
            ratio = report[f"distbp1_over_torch_{what}"] = a / b if a and b else None
            report["targets"][f"distbp@1/torch_{what}"] = {"limit": None, "value": ratio, "ok": ratio is not None,
                                                            "informational": True}
            print(f"INFO distbp@1 / torch, {what}->{pct}: {ratio} (< 1: distbp faster; torch's launch includes "
                  "importing torch)")


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--workers", type=lambda s: [int(v) for v in s.split(",")], help="worker counts (default 1,2,4; "
                    "--quick 1,2)")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="a further config override for every run (torch follows comm.threads)")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    args = common.parse(ap, argv, repeats=("runs of every variant, interleaved", 3, 1), max_steps=("stop every run "
                        "here", None, QUICK_STEPS), warmup=("untimed short runs of every variant first", 1, 0),
                        retries=("reruns of a repeat during which other processes were busy", 1, 0),
                        eval_every=("train.eval_every of every run", 5, 5), torch_threads=("torch.set_num_threads; "
                        "none: the BLAS threads of distbp's 1-worker run", None, None))
    args.workers = args.workers or ([1, 2] if args.quick else [1, 2, 4])
    if 1 not in args.workers or args.repeats < 1 or args.eval_every < 1:
        ap.error("--workers must include 1, --repeats and --eval-every >= 1")
    overrides = [f"train.eval_every={args.eval_every}"] + [f"train.max_steps={args.max_steps}"] * bool(args.max_steps)
    overrides += args.extra
    from distbp.process import cpu_count
    from distbp.train import load_config

    cfg, pct = load_config(CONFIG, overrides), f"{100 * TARGET:g}%"
    info = common.header(f"bench/tta.py: wall time to {pct} validation accuracy, configs/default.yaml with "
                         + ", ".join(overrides))
    torch_threads = args.torch_threads or cfg["comm"]["threads"] or max(1, cpu_count())  # distbp's rule for 1 worker
    version = None if args.no_torch else common.torch_version()
    print(f"torch {version}: tta_torch.py, set_num_threads({torch_threads})" if version else
          "torch: skipped (--no-torch)" if args.no_torch else "torch not installed: skipped")
    info["torch"] = version
    variants = [f"distbp@{n}" for n in args.workers] + ["torch"] * bool(version)
    runs = run_all(args, variants, overrides, torch_threads)
    report: dict = {"machine": info, "command": sys.argv, "args": vars(args), "config": str(CONFIG),
                    "overrides": overrides, "target": TARGET, "poll_s": POLL_S, "variants": {}, "targets": {}}
    report_rows(report, runs)
    verdicts(report, args, pct)
    return common.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
