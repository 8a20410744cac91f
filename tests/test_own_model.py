"""Your own model, loss and data through the distributed machinery: Trainer(model=...,
loss_fn=..., train_data=...), the data protocol on a np.memmap, and examples/own_module.py
under mpirun and the parameter server, each against the single-process run."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import distbp.functional as F
from distbp import nn
from distbp.autodiff.tensor import Tensor, no_grad
from distbp.data import DataError, Dataset
from distbp.train import ConfigError, Trainer, list_checkpoints, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "own_module.py"
sys.path.insert(0, str(EXAMPLE.parent))
import own_module  # noqa: E402  (the example is the model under test)

CONFIG = {"train": {"global_batch": 64, "max_steps": 40, "eval_every": 20, "log_every": 10, "progress": "plain"},
          "optimizer": {"name": "adam", "lr": 0.005}, "checkpoint": {"every": 10, "keep": 10}, "seed": 3}
SETS = ["train.max_steps=40", "checkpoint.every=10", "checkpoint.keep=10", "comm.threads=1"]


def _trainer(run_dir: Path, config: dict = CONFIG, **objects) -> Trainer:
    train, val = own_module.make_data()
    kwargs = dict(model=own_module.TiedResidual(10, 32, 4, np.random.default_rng(0)),
                  loss_fn=own_module.per_sample_cross_entropy, train_data=train, val_data=val)
    kwargs.update(objects)
    return Trainer(config, run_dir=run_dir, stream=io.StringIO(), **kwargs)


def _params(run_dir: Path, step: int = 40) -> np.ndarray:
    return read_checkpoint(run_dir / "checkpoints" / f"step-{step:08d}.npz").arrays["params"]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> np.ndarray:
    run = tmp_path_factory.mktemp("single")
    own_module.main(["--run-dir", str(run), *[a for s in SETS for a in ("--set", s)]])
    return _params(run)


# -- in one process ----------------------------------------------------------------------------

def test_fit_returns_the_final_metrics_computed_by_hand(tmp_path):
    margin = lambda out, y: float(np.mean(out[np.arange(len(y)), y] - out.max(axis=1)))
    t = _trainer(tmp_path, metrics={"margin": margin})
    result = t.fit()
    model = t.model.eval()
    _, (xv, yv) = own_module.make_data()
    with no_grad():
        out = model(Tensor(xv))
    losses = F.cross_entropy(out, yv, reduction="none").data
    assert set(result) == {"step", "loss", "val_loss", "val_accuracy", "margin"}
    assert result["step"] == 40
    assert result["val_loss"] == pytest.approx(float(losses.mean()), rel=1e-5)
    assert result["val_accuracy"] == pytest.approx(float((out.data.argmax(axis=1) == yv).mean()), abs=1e-12)
    assert result["margin"] == pytest.approx(margin(out.data, yv), rel=1e-5)
    evals = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    assert [e["step"] for e in evals] == [20, 40] and all("margin" in e for e in evals)
    header = (tmp_path / "config.yaml").read_text().splitlines()[1]
    assert header.startswith("# passed in as objects") and "own_module.TiedResidual" in header


def test_the_loss_is_the_global_mean_of_the_per_sample_losses(tmp_path):
    # One SGD step: the update is lr times the gradient of the batch's mean loss.
    config = dict(CONFIG, train=dict(CONFIG["train"], max_steps=1, global_batch=50), optimizer={"name": "sgd", "lr": 0.1})
    t = _trainer(tmp_path, config)
    before = own_module.TiedResidual(10, 32, 4, np.random.default_rng(0))
    t.fit()
    (x, y), _ = own_module.make_data()
    from distbp.data import DistributedSampler
    idx = DistributedSampler(len(x), 50, 3).global_batch_indices(0)
    loss = F.cross_entropy(before(Tensor(x[idx])), y[idx])  # reduction="mean"
    loss.backward()
    for (name, p), (_, q) in zip(before.named_parameters(), t.model.named_parameters()):
        np.testing.assert_allclose(q.data, p.data - 0.1 * p.grad, rtol=1e-5, atol=1e-7, err_msg=name)


def test_stop_and_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    _trainer(tmp_path / "full").fit()
    part = tmp_path / "part"
    short = dict(CONFIG, train=dict(CONFIG["train"], max_steps=17))
    _trainer(part, short).fit()
    # A new process would build a new model with other weights: the checkpoint wins.
    other = own_module.TiedResidual(10, 32, 4, np.random.default_rng(99))
    t = _trainer(part, model=other)
    assert t.fit()["step"] == 40
    assert np.array_equal(_params(part), _params(tmp_path / "full"))


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    _trainer(tmp_path).fit()
    wider = own_module.TiedResidual(10, 33, 4, np.random.default_rng(0))
    with pytest.raises(Exception, match="was written by another config .*another model or data set"):
        _trainer(tmp_path, model=wider).fit()


class MemmapData:
    """The data protocol: __len__ and batch(indices) -> (x, y), over arrays on disk."""

    def __init__(self, directory: Path, x: np.ndarray, y: np.ndarray) -> None:
        self.x = np.memmap(directory / "x.f32", np.float32, "w+", shape=x.shape)
        self.y = np.memmap(directory / "y.i64", np.int64, "w+", shape=y.shape)
        self.x[:], self.y[:] = x, y
        self.x.flush(), self.y.flush()
        self.x = np.memmap(directory / "x.f32", np.float32, "r", shape=x.shape)
        self.y = np.memmap(directory / "y.i64", np.int64, "r", shape=y.shape)
        self.num_classes = 4
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices):
        self.reads.append(len(indices))
        return np.asarray(self.x[indices]), np.asarray(self.y[indices])


def test_a_memmap_through_the_data_protocol_trains_as_the_arrays(tmp_path):
    (x, y), val = own_module.make_data()
    data = MemmapData(tmp_path, x, y)
    a = _trainer(tmp_path / "mm", train_data=data, val_data=val).fit()
    b = _trainer(tmp_path / "arrays", train_data=(x, y), val_data=val).fit()
    assert np.array_equal(_params(tmp_path / "mm"), _params(tmp_path / "arrays")) and a == b
    assert max(data.reads) == 64  # one global batch at a time, never the whole file


def test_a_scalar_loss_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError) as e:
        _trainer(tmp_path, loss_fn=lambda out, y: F.cross_entropy(out, y)).fit()
    assert str(e.value) == (
        "Trainer(loss_fn=...): returned shape () for a batch of 2; it must return one loss per sample, shape (2,), "
        "like torch's reduction='none'. The Trainer takes the mean over the global batch itself: with N workers "
        "each holds a slice of it, and a mean per slice would weigh samples differently for each N")
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was written


def test_a_model_whose_output_does_not_fit_the_data_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^Trainer\(model=...\): the model's output has shape \(2, 5\) for a batch "
                                          r"of 2, but the data has 4 classes; model.loss cross_entropy needs \(2, 4\)$"):
        _trainer(tmp_path, model=nn.MLP([10, 5]), loss_fn=None).fit()


@pytest.mark.parametrize("kwargs, message", [
    ({"model": [nn.Linear(2, 2)]}, "Trainer(model=...): expected an nn.Module, got list"),
    ({"train_data": "x.csv"}, "Trainer(train_data=...): expected a distbp.data.Dataset, an (x, y) pair of numpy "
                              "arrays, or an object with __len__ and batch(indices) -> (x, y); got str"),
    ({"metrics": {"loss": len}}, "Trainer(metrics=...): 'loss' must be a name other than epoch, loss, lr, "
                                 "samples_per_s, step, val_accuracy, val_loss, world_size, mapped to a function "
                                 "fn(outputs, targets)"),
])
def test_bad_objects(tmp_path, kwargs, message):
    with pytest.raises((TypeError, DataError)) as e:
        _trainer(tmp_path, **kwargs).fit()
    assert str(e.value) == message


def test_a_dataset_and_partial_config_dicts(tmp_path):
    (x, y), (xv, yv) = own_module.make_data()
    train = Dataset("blobs", x, y, ["a", "b", "c", "d"])
    result = Trainer({"train": {"max_steps": 5, "progress": "plain"}}, model=nn.MLP([10, 16, 4]),
                     train_data=train, val_data=Dataset("blobs", xv, yv, train.classes), run_dir=tmp_path,
                     stream=io.StringIO()).fit()
    assert result["step"] == 5 and 0 <= result["val_accuracy"] <= 1
    assert read_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1]).arrays["classes"].tolist() == train.classes


def test_float64_arrays_are_cast_to_the_parameters_dtype(tmp_path):
    (x, y), val = own_module.make_data()
    a = _trainer(tmp_path / "f32", train_data=(x, y), val_data=val).fit()
    b = _trainer(tmp_path / "f64", train_data=(x.astype(np.float64), y), val_data=val).fit()
    assert a == b


# -- N workers ----------------------------------------------------------------------------------

RUN_EXAMPLE = f"import runpy, sys; sys.argv[0] = {str(EXAMPLE)!r}; runpy.run_path(sys.argv[0], run_name='__main__')"


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2, 3])
def test_own_module_under_mpirun_matches_one_process(n, tmp_path, single):
    from test_mpi import MPIEXEC
    import subprocess
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, "-c", RUN_EXAMPLE, "--run-dir", str(tmp_path),
           *[a for s in SETS for a in ("--set", s)]]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    np.testing.assert_allclose(_params(tmp_path), single, rtol=0, atol=1e-5)
    # fit() returns the coordinator's final metrics on every rank.
    import re
    finals = re.findall(r"final: (\{[^}]*\})", res.stdout)  # ranks' lines may interleave
    assert len(finals) == n and len(set(finals)) == 1 and "top2_accuracy" in finals[0], res.stdout


@pytest.mark.slow
def test_own_module_under_mpirun_resumes_bitwise(tmp_path):
    from test_mpi import MPIEXEC
    import subprocess

    def run(run_dir: Path, *sets: str) -> None:
        cmd = [str(MPIEXEC), "-n", "2", sys.executable, "-c", RUN_EXAMPLE, "--run-dir", str(run_dir),
               *[a for s in [*SETS, *sets] for a in ("--set", s)]]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr

    run(tmp_path / "full")
    run(tmp_path / "part", "train.max_steps=17")
    run(tmp_path / "part")
    assert np.array_equal(_params(tmp_path / "part"), _params(tmp_path / "full"))


@pytest.mark.slow
def test_own_module_with_two_zmq_workers_matches_one_process(tmp_path, single):
    from faults.zmq_faults import Job, free_endpoint
    job = Job(tmp_path)
    endpoint = free_endpoint()
    try:
        server = job.launch("own-server", [*Job.common(endpoint, SETS, "comm.role=server", "comm.workers=2"),
                                           "--run-dir", str(tmp_path / "run")], RUN_EXAMPLE)
        workers = [job.launch(f"own-worker{i}", Job.common(endpoint, SETS, "comm.role=worker"), RUN_EXAMPLE)
                   for i in range(2)]
        for p in [server, *workers]:
            assert p.wait(60) == 0, p.report()
        np.testing.assert_allclose(_params(tmp_path / "run"), single, rtol=0, atol=1e-5)
        assert "2 worker(s)" in server.stdout
        job.assert_all_ended()
    finally:
        job.kill_all()


def test_sigterm_stops_a_run_of_objects_with_a_checkpoint_and_it_resumes_bitwise(tmp_path):
    import os
    import signal
    from distbp.train import Interrupted
    (x, y), val = own_module.make_data()

    class Signalling(Dataset):
        """The training arrays; reading step 11's batch signals this process (the data, not
        the loss, so that the resumed run's objects are the same as the first's)."""
        calls = 0

        def batch(self, indices):
            Signalling.calls += 1
            if Signalling.calls == 2 + 11:  # data_info and the shape check, then step 11's batch
                os.kill(os.getpid(), signal.SIGTERM)
            return super().batch(indices)

    with pytest.raises(Interrupted) as e:
        _trainer(tmp_path / "part", train_data=Signalling("blobs", x, y, list("abcd")), val_data=val).fit()
    # The step in flight finishes, is checkpointed, and the run stops.
    assert e.value.step == 11 and e.value.path == tmp_path / "part" / "checkpoints" / "step-00000011.npz"
    _trainer(tmp_path / "part").fit()
    _trainer(tmp_path / "full").fit()
    assert np.array_equal(_params(tmp_path / "part"), _params(tmp_path / "full"))


RANK1_FAILS = f"""
import sys
sys.path.insert(0, {str(EXAMPLE.parent)!r})
import own_module
from distbp.comm import world_rank
calls = []
def loss(out, y):
    calls.append(1)
    if world_rank() == 1 and len(calls) == 5:
        raise ValueError("a bad batch on rank 1")
    return own_module.per_sample_cross_entropy(out, y)
own_module.per_sample_cross_entropy, original = loss, own_module.per_sample_cross_entropy
own_module.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_an_error_in_your_loss_on_rank_1_ends_the_trainer_job_naming_the_rank(tmp_path):
    import subprocess
    import time
    from test_mpi import MPIEXEC
    t0 = time.monotonic()
    res = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-c", RANK1_FAILS, "--run-dir", str(tmp_path),
                          "--set", "comm.threads=1"], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and time.monotonic() - t0 < 10, res.stderr
    assert "[rank 1] ValueError: a bad batch on rank 1" in res.stderr.splitlines()
    assert any(line.startswith("distbp: rank 1 (pid ") and line.endswith(
        "raised ValueError: a bad batch on rank 1; ending all 2 ranks") for line in res.stderr.splitlines()), res.stderr


def test_config_from_a_yaml_path_and_config_yaml_leaves_out_what_objects_replace(tmp_path):
    import yaml
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    assert _trainer(tmp_path / "run", config=path).fit()["step"] == 40
    text = (tmp_path / "run" / "config.yaml").read_text()
    recorded = yaml.safe_load(text)
    assert "data" not in recorded and "model" not in recorded  # model, loss_fn and data were passed in
    assert recorded["optimizer"] == {"name": "adam", "lr": 0.005, "weight_decay": 0.0, "decay_biases": False,
                                     "betas": [0.9, 0.999], "eps": None}
    assert "# passed in as objects, in place of the config keys they replace: model: own_module.TiedResidual, " \
           "loss_fn: own_module.per_sample_cross_entropy, train_data: builtins.tuple" in text
