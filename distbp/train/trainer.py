"""The training loop. One code path for one process and for N workers: each worker runs the
forward and backward pass on its slice of every global batch, the Communicator sums the
gradients, and every replica applies the same optimizer step. The coordinator (rank 0)
logs, evaluates and writes checkpoints.

What it trains is built from the config, or passed in as objects (``Trainer(model=...,
loss_fn=..., train_data=...)``); either way the same invariants hold (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Sequence

import numpy as np

from .. import __version__, nn
from .. import metrics as M
from ..autodiff.tensor import Tensor, no_grad
from ..comm import (Communicator, PeerLost, Protocol, Recut, ServerStopped, as_protocol, get_protocol,
                    install_abort_hook, local_world, pin_blas_threads)
from ..data import (BatchSource, DataInfo, DistributedSampler, Preprocessor, Subset, as_source, data_info,
                    load_data, num_classes, split_indices)
from ..errors import DistbpError
from .build import LossFn, build_loss, build_model, build_optimizer, build_scheduler, per_sample_loss
from .checkpoint import (BEST, DAMAGED, Checkpoint, CheckpointError, check_fits, checkpoint_name, list_checkpoints,
                         lock_run_dir, newest_to_resume, read_checkpoint, remove_stale_temporaries, save_training,
                         training_state)
from .config import (ConfigError, better, check_run_dir, config_hash, defaults, dump, load_config, resolve,
                     run_dir_error, run_dir_path, semantic_diff)
from .factory import call_factory, import_object
from .metrics import MetricsFile, RunLog, Throughput

EVAL_BATCH = 1024
Metric = Callable[[np.ndarray, np.ndarray], float]
_RESERVED = {"step", "epoch", "loss", "lr", "samples_per_s", "val_loss", "val_accuracy", "world_size"}


class TrainingError(DistbpError, RuntimeError):
    """The run cannot go on (a non-finite loss or gradient, ...); the message says where."""


class Interrupted(DistbpError):
    """SIGINT or SIGTERM arrived; a checkpoint of the last finished step was written. Every
    rank stops after the same step, so all raise it together."""

    collective = True

    def __init__(self, signum: int, step: int, path: Path | None) -> None:
        self.signum, self.step, self.path = signum, step, path
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        where = f"; checkpoint {path}" if path else ""
        super().__init__(f"stopped by {name} after step {step}{where}; continue with --resume auto")


@dataclass
class RunResult:
    """How a finished run ended; ``metrics`` is what ``fit()`` returns."""

    step: int
    val_loss: float | None
    val_accuracy: float | None
    checkpoint: Path | None
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Data:
    train: BatchSource
    val: BatchSource | None
    info: DataInfo
    preprocessor: Preprocessor
    vocab: list[str] | None
    classes: list[str] | None
    test: BatchSource | None = None


@dataclass
class _Run:
    """What the set-up builds and the loop advances."""

    data: _Data
    model: nn.Module
    loss_fn: LossFn
    opt: Any
    sched: Any
    sampler: DistributedSampler
    total: int
    step: int
    checkpoint: Path | None
    log: RunLog | None
    metrics: MetricsFile | None
    dropouts: list[nn.Dropout]
    loss: float | None = None
    world: int = 1  # workers that computed the last step
    evaluation: dict[str, Any] = field(default_factory=dict)
    # keep_best's best value; early stopping's best value and evaluations since it improved
    # (in the checkpoint's meta, so that a resumed run decides as the uninterrupted one).
    tracking: dict[str, Any] = field(default_factory=dict)
    stop_early: bool = False
    throughput: Throughput = field(default_factory=Throughput)


def _clip_grad_norm(grad: np.ndarray, squares: float, max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ on the flat global gradient: scaled by
    max_norm / (norm + 1e-6) when that is below 1. ``squares`` is grad . grad, already computed."""
    norm = math.sqrt(squares) if math.isfinite(squares) else float(np.linalg.norm(grad.astype(np.float64)))
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        grad *= grad.dtype.type(coef)


def as_input(x: np.ndarray, dtype: np.dtype) -> Any:
    """A batch as the model takes it: integer ids as they are (embeddings look them up),
    features as a Tensor of the parameters' dtype."""
    x = np.asarray(x)
    return x if x.dtype.kind in "iu" else Tensor._wrap(x.astype(dtype, copy=False))


def is_classification(val: BatchSource, y: np.ndarray, out: Tensor) -> bool:
    return num_classes(val) is not None or (y.dtype.kind in "iu" and y.ndim == 1 and out.ndim == 2 and out.shape[1] > 1)


@no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, val: BatchSource, metrics: Mapping[str, Metric] | None = None,
             dtype: Any = np.float32, names: Sequence[str] = (), report: bool = False) -> dict[str, Any]:
    """Mean validation loss, accuracy for classification, the ``names`` of distbp.metrics
    (train.metrics), and each of ``metrics`` (your functions) on all of ``val``, read
    EVAL_BATCH samples at a time with dropout off. ``report``: also the whole report that
    distbp-eval writes (per class, confusion, per entity type)."""
    model.eval()
    n = len(val)
    total_loss, correct, classify = 0.0, 0, False
    outputs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    keep = bool(metrics or names or report)
    try:
        for lo in range(0, n, EVAL_BATCH):
            x, y = val.batch(np.arange(lo, min(lo + EVAL_BATCH, n)))
            y = np.asarray(y)
            out = model(as_input(x, dtype))
            total_loss += loss_fn(out, y, 1.0).item()
            classify = is_classification(val, y, out)
            if classify:
                correct += int((out.data.argmax(axis=1) == y).sum())
            if keep:
                outputs.append(out.data.copy())
                targets.append(y)
    finally:
        model.train()
    record: dict[str, Any] = {"val_loss": total_loss / n, "val_accuracy": correct / n if classify else None}
    if keep:
        out_all, y_all = np.concatenate(outputs), np.concatenate(targets)
        record.update(task_metrics(out_all, y_all, val, names, report, classify))
    for name, fn in (metrics or {}).items():
        try:
            record[name] = float(fn(out_all, y_all))
        except Exception as e:
            raise TrainingError(f"metric {name!r} raised {type(e).__name__}: {e}") from None
    return record


def task_metrics(out: np.ndarray, y: np.ndarray, data: BatchSource, names: Sequence[str], report: bool,
                 classify: bool) -> dict[str, Any]:
    """distbp.metrics of outputs ``out`` against targets ``y``: those ``names`` asks for, or
    with ``report`` everything the task has (classification; CoNLL adds entities, cut back
    into sentences by the data's sentence lengths; regression)."""
    if classify:
        k = out.shape[1]
        classes = getattr(data, "classes", None) or [str(c) for c in range(k)]
        full = M.classify(y, out.argmax(axis=1), list(classes))
        lengths = getattr(data, "extra", {}).get("sentence_lengths")
        if lengths and (report or any(n.startswith("entity_") for n in names)):
            names_arr = np.asarray(classes)
            cuts = np.cumsum(lengths)[:-1]
            gold = [list(s) for s in np.split(names_arr[y], cuts)]
            pred = [list(s) for s in np.split(names_arr[out.argmax(axis=1)], cuts)]
            full.update(M.entity_metrics(gold, pred))
    else:
        full = M.regression_metrics(y, out)
    return full if report else {n: full[n] for n in names if n in full}


def _same_preprocessing(saved: dict[str, np.ndarray], pre: Preprocessor) -> bool:
    return all(np.array_equal(np.asarray(v), saved.get(k)) for k, v in pre.state().items())


def _qualname(obj: Any) -> str:
    """``module.Name`` of a function or class, else of the object's class."""
    named = obj if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isclass(obj) else type(obj)
    return f"{named.__module__}.{named.__qualname__}"


class Trainer:
    """Train a model on data, with checkpoints, resume, signals and any number of workers.

    ``config`` is a dict (a partial config is completed with the defaults), the path of a
    YAML file, or None for the defaults. An object passed in replaces what the config
    would build:

    * ``model``: an ``nn.Module`` (its parameters are trained in place);
    * ``loss_fn(output, target)``: one loss per sample, like torch's ``reduction='none'``;
      the Trainer takes the mean over the global batch (a scalar is refused);
    * ``train_data``, ``val_data``: a ``distbp.data.Dataset``, an ``(x, y)`` pair of arrays,
      or any object with ``__len__`` and ``batch(indices) -> (x, y)`` (data larger than
      memory, such as a ``np.memmap``). Data you pass is used as it is: no preprocessing,
      no split; without ``val_data`` nothing is evaluated;
    * ``metrics``: name -> ``fn(outputs, targets) -> float``, evaluated on validation and
      logged under those names.

    ``resume`` is "auto" (continue from the newest checkpoint in the run directory that
    verifies, else start fresh where there is none; damaged ones are moved to
    ``checkpoints/damaged/``, and if none verifies that is a CheckpointError, not a fresh
    start), "never" (start fresh; refuses a run directory that already holds checkpoints, so
    nothing is overwritten), or a checkpoint path. One job at a time per run directory
    (``RUN/.lock``; a second is refused with RunDirLocked). ``fit()`` trains
    and returns the final metrics; under mpirun every rank gets the same dict.

    The coordinator's log lines are records of the ``logging`` logger "distbp", and all of
    them go to ``train.log``. ``stream`` (a file object) prints them there too; without it
    they are printed on stdout, unless the program configured logging itself (a handler on
    the root logger or on "distbp"), which then receives them instead.
    """

    def __init__(self, config: Mapping[str, Any] | str | Path | None = None, *, model: nn.Module | None = None,
                 loss_fn: Callable[[Tensor, np.ndarray], Tensor] | None = None, train_data: Any = None,
                 val_data: Any = None, metrics: Mapping[str, Metric] | None = None,
                 run_dir: str | Path | None = None, resume: str = "auto", comm: Communicator | Protocol | None = None,
                 stream: IO[str] | None = None) -> None:
        cfg = defaults() if config is None else load_config(config) if isinstance(config, (str, Path)) \
            else resolve(dict(config))
        self._check_objects(model, loss_fn, train_data, val_data, metrics)
        self.model, self.loss_fn, self.metrics = model, loss_fn, dict(metrics or {})
        self.train_data, self.val_data = train_data, val_data
        self.run_dir = run_dir_path(run_dir, "Trainer(run_dir=...)") if run_dir is not None else Path(cfg["run_dir"])
        self.cfg = dict(cfg, run_dir=str(self.run_dir))  # config.yaml records where it really ran
        self.resume = resume
        self.comm = as_protocol(comm) if comm is not None else get_protocol(cfg["comm"])
        if self.comm.collective and self.comm.size > 1:
            install_abort_hook(self.comm)  # an uncaught error on one rank must not leave the others waiting
        if self.comm.is_coordinator:  # it writes the run directory: one it cannot is refused now, not after set-up
            try:
                check_run_dir(self.run_dir)
            except ConfigError:
                if comm is None:
                    self.comm.close()
                raise
        self.stream = stream
        self.hash = config_hash(cfg)
        self._signal: int | None = None
        self._warnings: list[str] = []
        self._notes: list[str] = []  # facts of the set-up the log reports
        self._lock = None  # the run directory's lock (RUN/.lock), held by the coordinator during run()

    @staticmethod
    def _check_objects(model: Any, loss_fn: Any, train_data: Any, val_data: Any, metrics: Any) -> None:
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"Trainer(model=...): expected an nn.Module, got {type(model).__name__}")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"Trainer(loss_fn=...): expected a function loss_fn(output, target), "
                            f"got {type(loss_fn).__name__}")
        if val_data is not None and train_data is None:
            raise TypeError("Trainer(val_data=...): pass train_data too; the config's data set has its own split")
        if metrics is not None:
            if not isinstance(metrics, Mapping):
                raise TypeError(f"Trainer(metrics=...): expected a dict of name -> fn(outputs, targets), "
                                f"got {type(metrics).__name__}")
            for name, fn in metrics.items():
                if not isinstance(name, str) or name in _RESERVED or not callable(fn):
                    raise TypeError(f"Trainer(metrics=...): {name!r} must be a name other than "
                                    f"{', '.join(sorted(_RESERVED))}, mapped to a function fn(outputs, targets)")

    def fit(self) -> dict[str, Any]:
        """Train to the end (epochs or max_steps); the final metrics: step, loss, val_loss,
        val_accuracy (classification) and your own metrics."""
        return self.run().metrics

    def run(self) -> RunResult:
        """``fit()``, returning how the run ended as a RunResult."""
        t_start = time.perf_counter()
        try:
            result = self._loop(self._setup())
            result.metrics = self._share(result.metrics)
        except BaseException as e:
            code = getattr(e, "exit_code", 1)
            self.comm.leave(str(e) or type(e).__name__, code)
            self._unlock()
            raise
        finally:
            self.comm.close()
        result.seconds = time.perf_counter() - t_start
        if self.comm.is_coordinator:
            summary = {"step": result.step, "val_loss": result.val_loss, "val_accuracy": result.val_accuracy,
                       "seconds": round(result.seconds, 3)}
            try:
                with open(self.run_dir / "train.log", "a", encoding="utf-8") as f:
                    f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + "done " + json.dumps(summary) + "\n")
            finally:
                self._unlock()
        return result

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _share(self, metrics: dict[str, Any]) -> dict[str, Any]:
        # Only the coordinator evaluates; the replicas of a collective job get its figures.
        return self.comm.share(metrics)

    # -- set-up ---------------------------------------------------------------------------
    def _setup(self) -> _Run:
        """Data, model, optimizer and schedule, restored from a checkpoint when resuming, with
        the ranks' agreement checked; the coordinator opens the run directory."""
        cfg, comm, tc = self.cfg, self.comm, self.cfg["train"]
        threads = pin_blas_threads(cfg["comm"]["threads"], local_world()[0])
        data = self._data()
        model, loss_fn = self._model(data.info, data.vocab), self._loss(data.info)
        opt = build_optimizer(cfg, model)
        self._check_model(model, loss_fn, data)
        self._check_metric_names(data)
        self._signature = self._objects_signature(model, data)
        self.hash = config_hash(cfg, self._signature)
        # Agree on config and model before anything is written; a parameter server assigns
        # this worker's rank here, which fixes its slice of every batch.
        comm.join(self.hash, opt.flat.numel)
        processes = comm.processes()
        ckpt = self._choose_checkpoint(model, opt.flat)  # the coordinator's choice; None elsewhere
        sampler = DistributedSampler(len(data.train), tc["global_batch"], cfg["seed"])  # global batches: comm cuts them
        total = tc["epochs"] * sampler.steps_per_epoch
        if tc["max_steps"] is not None:
            total = min(total, tc["max_steps"])
        self._total = total
        sched = build_scheduler(cfg, opt, total)
        if ckpt is not None:
            self._restore(ckpt, model, opt, sched, data.preprocessor)
        if cfg["comm"]["overlap"] and comm.size > 1:
            opt.flat.on_grad_ready = comm.overlap(opt.flat.grad, opt.flat.offsets, int(cfg["comm"]["bucket_mb"] * 2**20))
        names = {id(p): n for n, p in model.named_parameters()}  # to name a rank's non-finite gradient's parameter
        comm.parameters = ([names.get(id(p), f"#{i}") for i, p in enumerate(opt.flat.params)], opt.flat.offsets)

        def load(step: int) -> None:  # a replica that runs the optimizer reads the coordinator's checkpoint
            nonlocal ckpt
            ckpt = read_checkpoint(self.resume if self.resume != "auto" else
                                   self.run_dir / "checkpoints" / checkpoint_name(step))
            self._check_config(ckpt)
            self._restore(ckpt, model, opt, sched, data.preprocessor)

        # Every process starts from the coordinator's step, parameters and optimizer state (as
        # DDP does at construction), whatever each read from disk or drew at random.
        start = comm.start(None if ckpt is None else ckpt.step, load, opt.flat.data,
                           lambda: [v for _, v in sorted(opt.state.items()) if isinstance(v, np.ndarray)])
        if start and ckpt is None:  # a parameter-server worker: the schedule follows the server's step
            sched.load_state_dict(dict(sched.state_dict(), t=start))
        dropouts = [m for _, m in model.named_modules() if isinstance(m, nn.Dropout)]
        run = _Run(data, model, loss_fn, opt, sched, sampler, total, start, ckpt.path if ckpt else None,
                   None, None, dropouts)
        if ckpt is not None:
            run.tracking = dict(ckpt.meta.get("tracking") or {})
        if comm.is_coordinator:
            self._open_run_dir(run, ckpt is not None, threads, processes)
        return run

    def _data(self) -> _Data:
        """The training and validation data: passed in, from a data factory, or the config's."""
        cfg = self.cfg
        if self.train_data is not None:
            train = as_source(self.train_data, "Trainer(train_data=...)")
            val = None if self.val_data is None else as_source(self.val_data, "Trainer(val_data=...)")
            return self._wrap_sources(train, val)
        if cfg["data"]["name"] == "custom":
            return self._factory_data()
        splits = load_data(cfg["data"], cfg["seed"], cfg["model"]["window"])
        val = splits.val if len(splits.val) else None
        return _Data(splits.train, val, data_info(splits.train), splits.preprocessor, splits.train.vocab,
                     splits.train.classes, splits.test)

    def _factory_data(self) -> _Data:
        d = self.cfg["data"]
        spec = d["factory"]
        made = call_factory(import_object(spec, "data.factory"), spec, "data.factory", **d["options"])
        pair = isinstance(made, tuple) and len(made) == 2
        if pair and not all(hasattr(a, "shape") for a in made):  # (train, val), not (x, y)
            return self._wrap_sources(as_source(made[0], f"data.factory: {spec}'s train data"),
                                      as_source(made[1], f"data.factory: {spec}'s validation data"))
        try:
            train = as_source(made, f"data.factory: {spec}")
        except DistbpError as e:
            raise ConfigError(f"{e}; return the training data, or a (train, validation) pair") from None
        train_idx, val_idx = split_indices(len(train), d["val_fraction"], self.cfg["seed"])
        return self._wrap_sources(Subset(train, train_idx), Subset(train, val_idx) if len(val_idx) else None)

    @staticmethod
    def _wrap_sources(train: BatchSource, val: BatchSource | None) -> _Data:
        vocab = getattr(train, "vocab", None)
        classes = getattr(train, "classes", None)
        return _Data(train, val, data_info(train), Preprocessor("none"), vocab,
                     list(classes) if isinstance(classes, (list, tuple)) else None)

    def _model(self, info: DataInfo, vocab: list[str] | None = None) -> nn.Module:
        if self.model is not None:
            return self.model
        model = build_model(self.cfg, info)
        path = self.cfg["model"].get("embeddings")
        if path and vocab is not None:
            from ..data.embeddings import read_vectors

            vectors, found = read_vectors(path, vocab, self.cfg["model"]["embed_dim"])
            weight = model.embed.weight.data
            weight[found] = vectors[found]  # words the file lacks keep their initial vectors
            self._notes.append(f"embeddings: {int(found.sum()):,} of {len(vocab):,} vocabulary words "
                               f"({found.mean():.1%}) found in {path}"
                               + ("; frozen" if self.cfg["model"]["freeze_embeddings"] else ""))
        return model

    def _loss(self, info: DataInfo) -> LossFn:
        if self.loss_fn is not None:
            return per_sample_loss(self.loss_fn, "Trainer(loss_fn=...)")
        return build_loss(self.cfg, info.targets)

    def _check_model(self, model: nn.Module, loss_fn: LossFn, data: _Data) -> None:
        """Run two samples through model and loss before anything is written, so that a model
        of the wrong shape for the data, or a loss that is not per sample, fails at once with
        the key (or argument) that chose it."""
        m = self.cfg["model"]
        where = ("Trainer(model=...)" if self.model is not None else
                 f"model.factory: {m['factory']}" if m["type"] == "custom" else f"model.type: {m['type']}")
        x, y = data.train.batch(np.arange(min(2, len(data.train))))
        dtype = next(model.parameters()).dtype
        with no_grad():
            model.eval()
            try:
                out = model(as_input(x, dtype))
            except DistbpError as e:
                raise ConfigError(f"{where}: the model does not take this data's input (shape {np.shape(x)[1:]} "
                                  f"per sample): {e}") from None
            finally:
                model.train()
            if not isinstance(out, Tensor) or out.ndim == 0 or out.shape[0] != len(x):
                shape = getattr(out, "shape", type(out).__name__)
                raise ConfigError(f"{where}: the model's output for a batch of {len(x)} is {shape}; "
                                  "expected a Tensor with one row per sample")
            builtin = self.loss_fn is None and m["loss"] in ("cross_entropy", "multi_margin", "mse")
            classes = data.info.classes
            if builtin and m["loss"] != "multi_margin" and (out.ndim != 2 or out.shape[1] != data.info.targets) \
                    and classes != 1:
                what = f"{classes} classes" if classes is not None else f"{data.info.targets} target columns"
                raise ConfigError(f"{where}: the model's output has shape {out.shape} for a batch of {len(x)}, "
                                  f"but the data has {what}; model.loss {m['loss']} needs "
                                  f"({len(x)}, {data.info.targets})")
            loss_fn(out, np.asarray(y), 1.0)

    def _check_metric_names(self, data: _Data) -> None:
        """checkpoint.keep_best and train.early_stopping.metric must name what evaluation computes."""
        known = {"val_loss"} | ({"val_accuracy"} if data.info.classes is not None else set()) \
            | set(self.cfg["train"]["metrics"]) | set(self.metrics)
        for key, name in (("checkpoint.keep_best", self.cfg["checkpoint"]["keep_best"]),
                          ("train.early_stopping.metric", self.cfg["train"]["early_stopping"].get("metric"))):
            if name is not None and name not in known:
                raise ConfigError(f"{key}: {name!r} is not computed by this run; choose one of "
                                  f"{', '.join(sorted(known))} (or add it to train.metrics)")
            if name is not None and data.val is None:
                raise ConfigError(f"{key}: the run has no validation data to compute {name} on")

    def _replaced_keys(self) -> list[str]:
        """The config keys that objects passed in stand in for (config.yaml leaves them out)."""
        keys = []
        if self.model is not None:
            keep = {"loss", "margin"} if self.loss_fn is None else set()
            keys += [f"model.{k}" for k in self.cfg["model"] if k not in keep]
        if self.loss_fn is not None:
            keys += ["model.loss", "model.margin"]
        if self.train_data is not None:
            keys.append("data")
        return keys

    def _objects_signature(self, model: nn.Module, data: _Data) -> Any:
        """What the config hash must also cover when objects replace what the config builds,
        so that another model or data set in the same run directory is not resumed."""
        if self.model is None and self.loss_fn is None and self.train_data is None:
            return None
        return {"model": None if self.model is None else
                [_qualname(model)] + [[n, list(p.shape)] for n, p in model.named_parameters()],
                "loss": None if self.loss_fn is None else _qualname(self.loss_fn),
                "data": None if self.train_data is None else [len(data.train), len(data.val or [])]}

    def _choose_checkpoint(self, model: nn.Module, flat: Any) -> Checkpoint | None:
        """The coordinator's checkpoint to continue from (None to start fresh; always None
        on the other processes, which ``comm.start`` gives the step)."""
        comm, ckpt_dir = self.comm, self.run_dir / "checkpoints"
        named = [(n, p.shape) for n, p in model.named_parameters()]
        ckpt = None
        if comm.is_coordinator:
            # One job per run directory: the lock is taken before anything in it changes and
            # held until run() ends; then no temporary file that a crashed write left behind.
            self._lock, taken_over = lock_run_dir(self.run_dir)
            self._warnings += taken_over
            self._notes += remove_stale_temporaries(ckpt_dir)
            if self.resume == "never":
                existing = list_checkpoints(ckpt_dir)
                if existing:
                    raise CheckpointError(f"{ckpt_dir} already holds {len(existing)} checkpoint(s) of an earlier "
                                          f"run ({', '.join(p.name for p in existing)}); continue it with "
                                          "--resume auto (which moves any that are damaged to "
                                          f"{ckpt_dir / DAMAGED}, where they no longer count), or choose "
                                          "another --run-dir")
            elif self.resume == "auto":
                def fits(c: Checkpoint) -> None:
                    # Another config's checkpoint is not skipped but refused (below): skipping
                    # it would quietly start afresh in a directory of another run.
                    if c.meta.get("config_hash") == self.hash:
                        check_fits(c, named, flat.data)

                ckpt, skipped = newest_to_resume(ckpt_dir, fits)  # none verifies: an error, not a fresh start
                self._warnings += skipped
            else:
                ckpt = read_checkpoint(self.resume)
            self._check_config(ckpt)
        return ckpt

    def _check_config(self, ckpt: Checkpoint | None) -> None:
        if ckpt is not None and ckpt.meta.get("config_hash") != self.hash:
            diff = semantic_diff(ckpt.meta.get("config", {}), self.cfg)
            raise CheckpointError(f"{ckpt.path} was written by another config (hash {ckpt.meta.get('config_hash')}, "
                                  f"this run {self.hash}): " + ("; ".join(diff) or "another model or data set")
                                  + "; resume with the config that wrote it, or train into another --run-dir")

    def _restore(self, ckpt: Checkpoint, model: nn.Module, opt: Any, sched: Any, pre: Preprocessor) -> None:
        check_fits(ckpt, [(n, p.shape) for n, p in model.named_parameters()], opt.flat.data)
        state = training_state(ckpt)
        opt.flat.data[...] = state.params
        try:
            opt.load_state_dict(state.optimizer)
            sched.load_state_dict(state.scheduler)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt.path}: optimizer or schedule state does not fit: {e}") from None
        if not _same_preprocessing(state.preprocess, pre):
            self._warnings.append(f"the training data's preprocessing statistics differ from those in {ckpt.path}; "
                                  "has the data file changed since?")
        if ckpt.meta.get("total_steps", self._total) != self._total and self.cfg["schedule"]["t_max"] is None \
                and "cosine" in (self.cfg["schedule"]["name"], self.cfg["schedule"]["after"]):
            self._warnings.append(f"the cosine schedule's horizon follows the run's length, now {self._total} "
                                  f"steps instead of {ckpt.meta['total_steps']}; set schedule.t_max to keep it fixed")

    def _open_run_dir(self, run: _Run, resumed: bool, threads: int, processes: list[str]) -> None:
        cfg, tc = self.cfg, self.cfg["train"]
        header = f"# distbp {__version__}; config hash {self.hash}\n"
        passed = [f"{k}: {_qualname(v)}" for k, v in (("model", self.model), ("loss_fn", self.loss_fn),
                                                        ("train_data", self.train_data)) if v is not None]
        if passed:
            header += "# passed in as objects, in place of the config keys they replace: " + ", ".join(passed) + "\n"
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(header + dump(cfg, self._replaced_keys()))
        except OSError as e:
            raise run_dir_error(self.run_dir, e) from None
        run.metrics = MetricsFile(self.run_dir / "metrics.jsonl", run.step if resumed else None)
        run.log = log = RunLog(self.run_dir, run.total, run.step, tc["progress"], self.stream)
        self.comm.log_to(log.info)
        for w in self._warnings:
            log.info(f"warning: {w}")
        for note in self._notes:
            log.info(note)
        data = run.data
        log.info(f"distbp {__version__}: {run.model.num_parameters():,} parameters, {len(data.train):,} training "
                 f"and {len(data.val or []):,} validation samples, {self.comm.size} worker(s), global batch "
                 f"{tc['global_batch']}, {run.total} steps ({run.sampler.steps_per_epoch} per epoch), "
                 f"{threads} BLAS thread(s) per worker")
        if processes:
            # mpiexec names a lost process only by PID and host: this line maps it to a rank.
            log.info("ranks: " + ", ".join(f"{r}=pid {p}" for r, p in enumerate(processes)))
        if resumed:
            log.info(f"resumed from {run.checkpoint} at step {run.step}")

    # -- the loop -------------------------------------------------------------------------
    def _loop(self, run: _Run) -> RunResult:
        previous_handlers = self._install_signal_handlers()
        try:
            while run.step < run.total and not run.stop_early:
                t0 = time.perf_counter()
                stats, batch = self._train_step(run.step, run)
                run.throughput.add(batch, time.perf_counter() - t0)
                if self._finish_step(run, stats, batch):
                    raise Interrupted(self._signal, run.step, run.checkpoint if self.comm.is_coordinator else None)
            if self.comm.is_coordinator and run.data.test is not None:
                with self.comm.solo():  # the others wait for it, not counted as silence (comm.timeout_s)
                    self._test(run)
        except ServerStopped as e:
            if e.code != 0:  # 0: the server ended the job normally (early stopping)
                raise
        except PeerLost:
            # A lost worker (or server) ends the job; the coordinator keeps the last finished step.
            if self.comm.is_coordinator and (run.checkpoint is None or
                                             not run.checkpoint.name.endswith(f"{run.step:08d}.npz")):
                run.checkpoint = self._save(run)
                run.log.info(f"checkpoint of step {run.step} written: {run.checkpoint}")
            raise
        finally:
            run.opt.flat.on_grad_ready = None
            self._restore_signal_handlers(previous_handlers)
            if self.comm.is_coordinator:
                # The communicator outlives the run's log (its close may still report): stderr again.
                self.comm.log_to(None)
                run.log.close()
                run.metrics.close()
        ev = run.evaluation
        metrics = {"step": run.step, "loss": run.loss, **ev}
        return RunResult(run.step, ev.get("val_loss"), ev.get("val_accuracy"), run.checkpoint, 0.0, metrics)

    def _finish_step(self, run: _Run, stats: np.ndarray, batch: int) -> bool:
        """After a step's exchange: schedule, replica check, log, evaluation, checkpoint.
        Whether the job stops now (a signal, agreed by all)."""
        run.sched.step()
        run.step += 1
        step, is_last = run.step, run.step == run.total
        # The step's exchange also summed the loss and whether any process was signalled
        # before it. Only that agreed flag stops the loop: a signal that lands on one rank
        # after its exchange is acted on at the next step by all, not now by that rank alone
        # (the others would wait for it in the next all-reduce, where no Python signal handler
        # runs, and the job would hang).
        run.loss, run.world = float(stats[0]), int(stats[2])
        stop = bool(stats[1] > 0)
        if stop and self._signal is None:
            self._signal = signal.SIGTERM
        if step % self.cfg["comm"]["check_every"] == 0 or is_last:
            self.comm.check(run.opt.flat.data, step)
        if step % self.cfg["train"]["log_every"] == 0 or is_last:
            self._log_step(run)
        evaluating = (step % self.cfg["train"]["eval_every"] == 0 or is_last) and run.data.val is not None
        if self.comm.is_coordinator:
            run.log.advance(1)
            if evaluating:
                with self.comm.solo():  # the others wait for it, not counted as silence (comm.timeout_s)
                    self._evaluate(run)
        if evaluating and self.cfg["train"]["early_stopping"] and not is_last:
            # Only the coordinator evaluates: every process learns its decision here.
            run.stop_early = self.comm.agree_stop(run.stop_early)
        if self.comm.is_coordinator and (step % self.cfg["checkpoint"]["every"] == 0 or is_last or stop
                                         or run.stop_early):
            with self.comm.solo():
                run.checkpoint = self._save(run)
        return stop and not is_last

    def _log_step(self, run: _Run) -> None:
        if self.comm.is_coordinator:
            rate = run.throughput.rate()
            epoch = (run.step - 1) // run.sampler.steps_per_epoch
            lr = run.opt.param_groups[0]["lr"]
            run.metrics.write({"step": run.step, "epoch": epoch, "loss": run.loss, "lr": lr,
                               "samples_per_s": round(rate, 1), "world_size": run.world})
            # Under the bar (which shows the step and loss), train.log alone gets the line.
            run.log.info(f"step {run.step}/{run.total} epoch {epoch} loss {run.loss:.4f} lr {lr:.3g} "
                         f"{rate:,.0f} samples/s", console=False)
            run.log.advance(0, {"loss": f"{run.loss:.4f}"})

    def _evaluate(self, run: _Run) -> None:
        run.evaluation = evaluate(run.model, run.loss_fn, run.data.val, self.metrics, run.opt.flat.data.dtype,
                                  self.cfg["train"]["metrics"])
        run.metrics.write({"step": run.step, **run.evaluation})
        shown = " ".join(f"{k} {v:.4f}" for k, v in run.evaluation.items() if v is not None)
        run.log.info(f"eval step {run.step}: {shown}")
        self._track(run)

    def _track(self, run: _Run) -> None:
        """checkpoint.keep_best (best.npz when the metric improves) and early stopping."""
        t, ev = run.tracking, run.evaluation
        name = self.cfg["checkpoint"]["keep_best"]
        if name is not None and ev.get(name) is not None:
            if "best" not in t or better(name)(ev[name], t["best"]):
                t["best"], t["best_step"] = ev[name], run.step
                self._save(run, name=BEST)
                run.log.info(f"best {name} {ev[name]:.4f} at step {run.step}: {self.run_dir / 'checkpoints' / BEST}")
        es = self.cfg["train"]["early_stopping"]
        if es and ev.get(es["metric"]) is not None:
            value = ev[es["metric"]]
            if "es_best" not in t or better(es["metric"], es.get("mode", "auto"))(value, t["es_best"]):
                t["es_best"], t["es_step"], t["es_since"] = value, run.step, 0
            else:
                t["es_since"] += 1
            if t["es_since"] >= es.get("patience", 5):
                run.stop_early = True
                run.log.info(f"early stopping at step {run.step}: {es['metric']} has not improved for "
                             f"{t['es_since']} evaluations (best {t['es_best']:.4f} at step {t['es_step']})")

    def _test(self, run: _Run) -> None:
        """The test split (data.test_path or data.test_fraction), evaluated once at the end into
        RUN/test_metrics.json."""
        report = evaluate(run.model, run.loss_fn, run.data.test, None, run.opt.flat.data.dtype, report=True)
        report.pop("val_accuracy")  # "accuracy" holds it, as in distbp-eval's report
        report = {"step": run.step, "samples": len(run.data.test), "loss": report.pop("val_loss"), **report}
        (self.run_dir / "test_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        shown = " ".join(f"{k} {report[k]:.4f}" for k in ("loss", "accuracy", "macro_f1", "entity_f1", "mse", "r2")
                         if isinstance(report.get(k), float))
        run.log.info(f"test ({len(run.data.test)} samples): {shown}; "
                     f"{self.run_dir / 'test_metrics.json'}")

    def _train_step(self, step: int, run: _Run) -> tuple[np.ndarray, int]:
        """Forward and backward on this worker's slice, the step's exchange, optimizer step.
        Returns the stats summed over workers (global mean loss, stop requests, workers) and
        the global batch size. An elastic parameter server may re-cut the step among the
        workers left when one is lost (Recut): the slice is then computed again."""
        while True:
            try:
                return self._try_step(step, run)
            except Recut:
                continue

    def _try_step(self, step: int, run: _Run) -> tuple[np.ndarray, int]:
        sampler, model, opt = run.sampler, run.model, run.opt
        self.comm.current_step = step + 1  # for messages that name what a rank was doing
        clip = self.cfg["train"]["clip_grad_norm"]
        everyone = sampler.global_batch_indices(step)
        batch = len(everyone)
        start, end = self.comm.slice_of(batch)  # asked every step: an elastic parameter server re-cuts it
        idx = everyone[start:end]
        for i, m in enumerate(run.dropouts):
            # Masks drawn from (seed, step, layer) for the whole global batch, then sliced:
            # the same masks for any number of workers, and no RNG state to checkpoint.
            m.rng, m.rows = np.random.default_rng([self.cfg["seed"], step, i]), (start, batch)
        opt.zero_grad()
        local_loss = 0.0
        # Overflow is caught by the finiteness check below, with the step and parameter named;
        # numpy's RuntimeWarnings would only bury that message under lines from deep inside.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if len(idx):
                x, y = run.data.train.batch(idx)
                loss = run.loss_fn(model(as_input(x, opt.flat.data.dtype)), np.asarray(y), 1.0 / batch)
                loss.backward()
                local_loss = loss.item()
            grad = opt.flat.flat_grad()

            def update() -> None:
                # One BLAS pass (a dot is 2x faster than a sum here: bench/trainer.py): NaN or inf
                # anywhere makes it non-finite; squares of large finite values can overflow,
                # so a non-finite result is confirmed elementwise.
                squares = np.dot(grad, grad)
                if not (math.isfinite(local_loss) and (np.isfinite(squares) or bool(np.isfinite(grad).all()))):
                    self._raise_non_finite(step + 1, local_loss, model)
                if clip is not None:
                    _clip_grad_norm(grad, squares, clip)
                opt.step()

            # loss, stop request, and 1 per worker: summed, how many computed the step
            stats = np.array([local_loss, 0.0 if self._signal is None else 1.0, 1.0])
            stats = self.comm.step(grad, opt.flat.data, update, stats)
        return stats, batch

    @staticmethod
    def _raise_non_finite(step: int, loss: float, model: nn.Module) -> None:
        if not math.isfinite(loss):
            raise TrainingError(f"non-finite loss ({loss}) at step {step}; lower optimizer.lr or check the data")
        for name, p in model.named_parameters():
            if p.grad is not None and not np.all(np.isfinite(p.grad)):
                raise TrainingError(f"non-finite gradient at step {step} in parameter {name}; "
                                    "lower optimizer.lr or check the data")
        raise TrainingError(f"non-finite gradient at step {step}")

    def _save(self, run: _Run, name: str | None = None) -> Path:
        epoch, position = run.sampler.position(run.step)
        meta = {
            "epoch": epoch, "position": position, "world_size": self.comm.size,
            "config_hash": self.hash, "config": self.cfg, "distbp_version": __version__,
            # All randomness is derived from the seed: the epoch's permutation from
            # (seed, epoch), dropout masks from (seed, step, layer). No generator state to save.
            "rng": {"scheme": "derived", "seed": self.cfg["seed"]},
            "total_steps": self._total,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            # What distbp.load needs to rebuild the model: the data's shape, and which parts
            # were objects passed in rather than built from the config.
            "data_info": dataclasses.asdict(run.data.info),
            "objects": self._signature,
            "tracking": dict(run.tracking),
        }
        return save_training(self.run_dir / "checkpoints", run.step, params=run.opt.flat.data,
                             optimizer=run.opt.state_dict(), scheduler=run.sched.state_dict(),
                             named_shapes=[(n, p.shape) for n, p in run.model.named_parameters()],
                             preprocess=run.data.preprocessor.state(), vocab=run.data.vocab,
                             classes=run.data.classes, meta=meta, keep=self.cfg["checkpoint"]["keep"], name=name,
                             log=run.log.info if run.log is not None else None)

    # -- signals --------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            # Only note it: the loop finishes the step in flight, checkpoints, then stops.
            self._signal = signum

        return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for s, h in previous.items():
            signal.signal(s, h)
