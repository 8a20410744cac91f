"""Data parallelism under mpiexec (the mpich wheel's launcher, as root, more ranks than cores):
the invariants 1-3 of docs/ARCHITECTURE.md checked against the single-process run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distbp.train import Trainer, resolve

pytestmark = pytest.mark.slow

MPIEXEC = Path(sys.executable).parent / "mpiexec"
OVERRIDES = ["data.name=synthetic", "data.samples=600", "data.features=8", "data.classes=3",
             "model.sizes=[8,32,3]", "model.dropout=0.2", "train.global_batch=64", "train.max_steps=40",
             "train.eval_every=20", "train.log_every=10", "checkpoint.every=10", "checkpoint.keep=10",
             "seed=3"]


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def mpirun(n: int, run_dir: Path, *extra: str, overrides: list[str] = OVERRIDES, script: str | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    """distbp-train (or a Python script taking the same arguments) under mpiexec -n n."""
    program = [sys.executable, "-m", "distbp.cli"] if script is None else [sys.executable, "-c", script]
    cmd = [str(MPIEXEC), "-n", str(n), *program, "--run-dir", str(run_dir), *_sets(overrides), *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def final_params(run_dir: Path, step: int = 40) -> np.ndarray:
    with np.load(run_dir / "checkpoints" / f"step-{step:08d}.npz", allow_pickle=False) as f:
        return f["params"]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> np.ndarray:
    """The single-process reference: the same config, no MPI at all."""
    run_dir = tmp_path_factory.mktemp("single")
    import io
    Trainer(resolve(None, OVERRIDES), run_dir=run_dir, resume="never", stream=io.StringIO()).run()
    return final_params(run_dir)


def test_mpiexec_is_installed_with_the_package():
    assert MPIEXEC.is_file(), "the mpich wheel ships mpiexec next to the interpreter"


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_n_workers_match_the_single_process_run(n, tmp_path, single):
    # 3 ranks split a batch of 64 unequally (21, 21, 22); dropout masks are drawn per global
    # batch, so they match too.
    res = mpirun(n, tmp_path)
    assert res.returncode == 0, res.stderr
    np.testing.assert_allclose(final_params(tmp_path), single, rtol=0, atol=1e-5)
    # Only the coordinator talks: one "done" line, and the run directory is complete.
    assert res.stdout.count("done:") == 1
    assert (tmp_path / "metrics.jsonl").read_text().count('"val_accuracy"') == 2
    assert f"{n} worker(s)" in res.stdout


def test_same_n_twice_is_bitwise_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        res = mpirun(2, d)
        assert res.returncode == 0, res.stderr
    assert np.array_equal(final_params(a), final_params(b))


def test_resume_with_same_n_is_bitwise_and_with_other_n_continues(tmp_path, single):
    full, part = tmp_path / "full", tmp_path / "part"
    assert mpirun(2, full).returncode == 0
    stop = [o for o in OVERRIDES if not o.startswith("train.max_steps")] + ["train.max_steps=17"]
    res = mpirun(2, part, overrides=stop)  # stops mid-epoch (9 steps per epoch)
    assert res.returncode == 0, res.stderr
    other = tmp_path / "other"
    other_ckpt = other / "checkpoints"
    other_ckpt.mkdir(parents=True)
    (other_ckpt / "step-00000017.npz").write_bytes((part / "checkpoints" / "step-00000017.npz").read_bytes())

    res = mpirun(2, part, "--resume", "auto")
    assert res.returncode == 0, res.stderr
    assert "resumed from" in res.stdout
    assert np.array_equal(final_params(part), final_params(full))

    res = mpirun(3, other, "--resume", "auto")  # a different world size continues the same order
    assert res.returncode == 0, res.stderr
    np.testing.assert_allclose(final_params(other), single, rtol=0, atol=1e-5)


PERTURB = """
import sys
import numpy as np
from distbp.train import trainer as T
original = T.Trainer._train_step
def perturbed(self, step, *args):
    out = original(self, step, *args)
    if self.comm.rank == 1 and step == 4:
        args[0].opt.flat.data[0] += 1e-3   # args: the Trainer's run state
    return out
T.Trainer._train_step = perturbed
from distbp.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def test_replica_drift_stops_the_job_naming_the_rank(tmp_path):
    res = mpirun(3, tmp_path, "--set", "comm.check_every=2", script=PERTURB)
    assert res.returncode == 1
    assert "parameter checksum differs between ranks" in res.stderr
    assert "rank 1 has" in res.stderr and "rank 2 has" not in res.stderr
    assert "replicas diverged by step 6" in res.stderr
    assert "Traceback" not in res.stderr


CRASH = """
import sys
from distbp.train import trainer as T
original = T.Trainer._train_step
def crashing(self, step, *args):
    if self.comm.rank == 2 and step == 3:
        raise RuntimeError("injected fault")
    return original(self, step, *args)
T.Trainer._train_step = crashing
from distbp.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def test_an_error_on_one_rank_aborts_the_whole_job(tmp_path):
    res = mpirun(3, tmp_path, script=CRASH, timeout=60)
    assert res.returncode == 1
    assert "distbp-train[rank 2]: error: internal error RuntimeError: injected fault" in res.stderr
    assert "Traceback" not in res.stderr


LATE_SIGNAL = """
import signal, sys
from distbp.train import trainer as T
original = T.Trainer._train_step
def late(self, step, *args):
    out = original(self, step, *args)
    if self.comm.rank == 1 and step == 6:
        self._signal = signal.SIGTERM  # as if SIGTERM reached rank 1 just after its exchange
    return out
T.Trainer._train_step = late
from distbp.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def test_a_signal_seen_by_one_rank_after_its_exchange_stops_all_at_the_next_step(tmp_path):
    # The flag went out as 0 in step 7's exchange; rank 1 alone must not stop after step 7
    # (the others would wait for it in step 8's all-reduce forever): all stop after step 8.
    res = mpirun(3, tmp_path, script=LATE_SIGNAL, timeout=60)
    assert res.returncode == 128 + signal.SIGTERM, res.stderr
    assert "stopped by SIGTERM after step 8" in res.stderr
    assert (tmp_path / "checkpoints" / "step-00000008.npz").exists()


def test_ranks_with_different_configs_are_refused(tmp_path):
    base = [sys.executable, "-m", "distbp.cli", "--run-dir", str(tmp_path), *_sets(OVERRIDES)]
    cmd = [str(MPIEXEC), "-n", "1", *base, ":", "-n", "1", *base, "--set", "optimizer.lr=0.01"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "config hash differs between ranks" in res.stderr and "rank 1 has" in res.stderr
    assert res.stderr.count("error:") == 1  # reported once, by rank 0


def test_blas_threads_are_split_between_ranks(tmp_path):
    from distbp.comm import cpu_count
    res = mpirun(2, tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"{max(1, cpu_count() // 2)} BLAS thread(s) per worker" in res.stdout
    res = mpirun(2, tmp_path / "pinned", "--set", "comm.threads=1")
    assert "1 BLAS thread(s) per worker" in res.stdout


@pytest.mark.parametrize("n", [2, 3])
def test_overlapped_buckets_match_the_single_process_run(n, tmp_path, single):
    # bucket_mb tiny: one bucket per parameter, each all-reduced as soon as backward has it.
    res = mpirun(n, tmp_path, "--set", "comm.overlap=true", "--set", "comm.bucket_mb=0.0001")
    assert res.returncode == 0, res.stderr
    np.testing.assert_allclose(final_params(tmp_path), single, rtol=0, atol=1e-5)


def test_the_readme_main_job_four_workers_on_the_default_config(tmp_path):
    """README command 1 after set-up: mpirun -n 4 distbp-train, from an empty directory."""
    import json
    res = subprocess.run([str(Path(sys.executable).parent / "mpirun"), "-n", "4",
                          str(Path(sys.executable).parent / "distbp-train")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    run = tmp_path / "runs" / "digits-mlp"
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "val_accuracy" in line]
    assert evals[-1]["val_accuracy"] >= 0.97
    assert "4 worker(s)" in res.stdout and res.stderr == ""
    assert (run / "checkpoints" / "step-00000390.npz").is_file()


SCRAMBLED_STATE = """
import sys
import numpy as np
from distbp.train import trainer as T
original = T.Trainer._restore
def restore(self, ckpt, model, opt, sched, pre):
    original(self, ckpt, model, opt, sched, pre)
    if self.comm.rank == 1:  # as if rank 1 had read another file: rank 0's state must win
        for v in opt.state.values():
            if isinstance(v, np.ndarray):
                v += 1.0
T.Trainer._restore = restore
from distbp.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def test_resumed_replicas_take_the_coordinators_optimizer_state(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert mpirun(2, full).returncode == 0
    stop = [o for o in OVERRIDES if not o.startswith("train.max_steps")] + ["train.max_steps=17"]
    assert mpirun(2, part, overrides=stop).returncode == 0
    res = mpirun(2, part, "--resume", "auto", "--set", "comm.check_every=1", script=SCRAMBLED_STATE)
    assert res.returncode == 0, res.stderr
    assert np.array_equal(final_params(part), final_params(full))


def test_clipping_is_applied_to_the_global_gradient(tmp_path):
    """Clipped after the all-reduce: 3 ranks end where one process ends, and clipping acts."""
    clip = ["train.clip_grad_norm=0.05"]
    res = mpirun(3, tmp_path / "mpi", overrides=OVERRIDES + clip)
    assert res.returncode == 0, res.stderr
    import io
    Trainer(resolve(None, OVERRIDES + clip), run_dir=tmp_path / "one", resume="never", stream=io.StringIO()).run()
    np.testing.assert_allclose(final_params(tmp_path / "mpi"), final_params(tmp_path / "one"), rtol=0, atol=1e-5)
    unclipped = tmp_path / "free"
    Trainer(resolve(None, OVERRIDES), run_dir=unclipped, resume="never", stream=io.StringIO()).run()
    assert np.abs(final_params(unclipped) - final_params(tmp_path / "one")).max() > 1e-3
