"""The training loop. One code path for one process and for N workers: each worker runs the
forward and backward pass on its slice of every global batch, the Communicator sums the
gradients, and every replica applies the same optimizer step. The coordinator (rank 0)
logs, evaluates and writes checkpoints."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .. import __version__, nn
from ..autodiff.tensor import Tensor, no_grad
from ..comm import Communicator, PeerLost, get_communicator, local_world, pin_blas_threads
from ..data import DistributedSampler, Preprocessor, Splits, load_data
from .build import LossFn, build_loss, build_model, build_optimizer, build_scheduler
from .checkpoint import (Checkpoint, CheckpointError, checkpoint_name, latest_valid, list_checkpoints,
                         read_checkpoint, write_checkpoint)
from .config import config_hash, dump, semantic_diff
from .metrics import MetricsFile, RunLog

EVAL_BATCH = 1024


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss or gradient, ...); the message says where."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint of the last finished step was written."""

    def __init__(self, signum: int, step: int, path: Path | None) -> None:
        self.signum, self.step, self.path = signum, step, path
        name = signal.Signals(signum).name
        where = f"; checkpoint {path}" if path else ""
        super().__init__(f"stopped by {name} after step {step}{where}; continue with --resume auto")


@dataclass
class RunResult:
    """How a finished run ended."""

    step: int
    val_loss: float | None
    val_accuracy: float | None
    checkpoint: Path | None
    seconds: float


@dataclass
class _Run:
    """What ``Trainer._setup`` builds for the loop."""

    splits: Splits
    model: nn.Module
    loss_fn: LossFn
    opt: Any
    sched: Any
    sampler: DistributedSampler
    total: int
    start: int
    checkpoint: Path | None
    log: RunLog | None
    metrics: MetricsFile | None


def _same_preprocessing(ckpt: Checkpoint, pre: Preprocessor) -> bool:
    saved = {k[len("preprocess."):]: v for k, v in ckpt.arrays.items() if k.startswith("preprocess.")}
    return all(np.array_equal(np.asarray(v), saved.get(k)) for k, v in pre.state().items())


class Trainer:
    """Train the model a resolved config describes.

    ``resume`` is "auto" (continue from the newest checkpoint in the run directory that
    verifies, else start fresh), "never" (start fresh; refuses a run directory that already
    holds checkpoints, so nothing is overwritten), or a checkpoint path.
    """

    def __init__(self, cfg: dict[str, Any], run_dir: str | Path | None = None, resume: str = "auto",
                 comm: Communicator | None = None, stream: IO[str] | None = None) -> None:
        self.run_dir = Path(run_dir if run_dir is not None else cfg["run_dir"])
        self.cfg = dict(cfg, run_dir=str(self.run_dir))  # config.yaml records where it really ran
        self.resume = resume
        self.comm = comm if comm is not None else get_communicator(cfg["comm"])
        self.stream = stream
        self.hash = config_hash(cfg)
        self._signal: int | None = None

    # -- set-up ---------------------------------------------------------------------------
    def _resume_checkpoint(self, model: nn.Module, flat: Any) -> tuple[Checkpoint | None, int]:
        """The checkpoint to continue from (None to start fresh) and its step, agreed by all.

        The coordinator chooses. Replicas that run the optimizer themselves (MPI ranks) then
        read that same file (the run directory is shared, as under mpirun on one host or on a
        cluster file system); parameter-server workers only need the step, since the server
        sends them the parameters."""
        comm, ckpt_dir = self.comm, self.run_dir / "checkpoints"
        ckpt = None
        if comm.is_coordinator:
            if self.resume == "never":
                existing = list_checkpoints(ckpt_dir)
                if existing:
                    raise CheckpointError(f"{ckpt_dir} already holds {len(existing)} checkpoint(s) of an earlier "
                                          "run; continue it with --resume auto, or choose another --run-dir")
            elif self.resume == "auto":
                def fits(c: Checkpoint) -> None:
                    # Another config's checkpoint is not skipped but refused (below): skipping
                    # it would quietly start afresh in a directory of another run.
                    if c.meta.get("config_hash") == self.hash:
                        self._check_fits(c, model, flat)

                ckpt, self._warnings = latest_valid(ckpt_dir, fits)
            else:
                ckpt = read_checkpoint(self.resume)
            self._check_config(ckpt)
        step = comm.agree_u64(0 if ckpt is None else ckpt.step + 1) - 1
        if step >= 0 and ckpt is None and comm.replicates_optimizer:
            ckpt = read_checkpoint(self.resume if self.resume != "auto" else ckpt_dir / checkpoint_name(step))
            self._check_config(ckpt)
        return ckpt, max(step, 0)

    def _check_config(self, ckpt: Checkpoint | None) -> None:
        if ckpt is not None and ckpt.meta.get("config_hash") != self.hash:
            diff = semantic_diff(ckpt.meta.get("config", {}), self.cfg)
            raise CheckpointError(f"{ckpt.path} was written by another config (hash {ckpt.meta.get('config_hash')}, "
                                  f"this run {self.hash}): " + ("; ".join(diff) or "unknown differences")
                                  + "; resume with the config that wrote it, or train into another --run-dir")

    @staticmethod
    def _check_fits(ckpt: Checkpoint, model: nn.Module, flat: Any) -> None:
        """CheckpointError unless the checkpoint's parameters are the model's, name, shape and
        count (a file that verifies but does not fit was damaged or crafted)."""
        meta = ckpt.meta
        names = [n for n, _ in model.named_parameters()]
        shapes = [list(p.shape) for _, p in model.named_parameters()]
        if meta.get("param_names") != names or meta.get("param_shapes") != shapes:
            raise CheckpointError(f"{ckpt.path}: its parameters {list(zip(meta.get('param_names', []), meta.get('param_shapes', [])))} "
                                  f"do not match the model's {list(zip(names, shapes))}")
        params = ckpt.arrays["params"]
        if params.shape != flat.data.shape or params.dtype != flat.data.dtype:
            raise CheckpointError(f"{ckpt.path}: params hold {params.size} {params.dtype} values; "
                                  f"the model has {flat.numel} {flat.data.dtype}")

    def _restore(self, ckpt: Checkpoint, model: nn.Module, opt: Any, sched: Any) -> None:
        meta = ckpt.meta
        self._check_fits(ckpt, model, opt.flat)
        opt.flat.data[...] = ckpt.arrays["params"]
        state = {k[len("optim."):]: v for k, v in ckpt.arrays.items() if k.startswith("optim.")}
        state.update(meta["optimizer"]["scalars"])
        try:
            opt.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
            sched.load_state_dict(meta["scheduler"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt.path}: optimizer or schedule state does not fit: {e}") from None

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Train to the end (epochs or max_steps) and write the final checkpoint."""
        t_start = time.perf_counter()
        try:
            result = self._loop(self._setup())
        except Interrupted as e:
            self.comm.fail(str(e), 128 + e.signum)
            raise
        except BaseException as e:
            self.comm.fail(f"{type(e).__name__}: {e}" if not str(e) else str(e), 1)
            raise
        finally:
            self.comm.close()
        result.seconds = time.perf_counter() - t_start
        if self.comm.is_coordinator:
            summary = {"step": result.step, "val_loss": result.val_loss, "val_accuracy": result.val_accuracy,
                       "seconds": round(result.seconds, 3)}
            with open(self.run_dir / "train.log", "a", encoding="utf-8") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + "done " + json.dumps(summary) + "\n")
        return result

    def _setup(self) -> "_Run":
        """Data, model, optimizer and schedule, restored from a checkpoint when resuming, with
        the ranks' agreement checked; the coordinator opens the run directory."""
        cfg, comm = self.cfg, self.comm
        seed = cfg["seed"]
        self._warnings: list[str] = []
        threads = pin_blas_threads(cfg["comm"]["threads"], local_world()[0])
        splits = load_data(cfg["data"], seed, cfg["model"]["window"])
        model = build_model(cfg, splits)
        outputs = splits.train.num_classes or splits.train.y.shape[1]
        loss_fn = build_loss(cfg, outputs)
        opt = build_optimizer(cfg, model)
        flat = opt.flat
        tc = cfg["train"]
        # Agree on config and model before anything is written; a parameter server assigns
        # this worker's rank here, which fixes its slice of every batch.
        comm.handshake(self.hash, flat.numel)
        processes = comm.processes()
        coordinator = comm.is_coordinator
        ckpt, start = self._resume_checkpoint(model, flat)
        if ckpt is not None and not _same_preprocessing(ckpt, splits.preprocessor):
            self._warnings.append(f"the training data's preprocessing statistics differ from those in {ckpt.path}; "
                                  "has the data file changed since?")
        sampler = DistributedSampler(len(splits.train), tc["global_batch"], seed, comm.rank, comm.size)
        total = tc["epochs"] * sampler.steps_per_epoch
        if tc["max_steps"] is not None:
            total = min(total, tc["max_steps"])
        sched = build_scheduler(cfg, opt, total)
        self._total = total
        if ckpt is not None and ckpt.meta.get("total_steps", total) != total and \
                cfg["schedule"]["t_max"] is None and "cosine" in (cfg["schedule"]["name"], cfg["schedule"]["after"]):
            self._warnings.append(f"the cosine schedule's horizon follows the run's length, now {total} steps "
                                  f"instead of {ckpt.meta['total_steps']}; set schedule.t_max to keep it fixed")
        if ckpt is not None:
            self._restore(ckpt, model, opt, sched)
        elif start:  # a parameter-server worker: the schedule follows the server's step
            sched.load_state_dict(dict(sched.state_dict(), t=start))
        if cfg["comm"]["overlap"] and comm.size > 1:
            flat.on_grad_ready = comm.overlap(flat.grad, flat.offsets, int(cfg["comm"]["bucket_mb"] * 2**20))
        # Every replica starts from the coordinator's parameters and optimizer state (as DDP
        # does at construction), whatever each read from disk.
        comm.broadcast_(flat.data, root=0)
        comm.broadcast_state_([v for _, v in sorted(opt.state.items()) if isinstance(v, np.ndarray)])

        log = metrics = None
        if coordinator:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(f"# distbp {__version__}; config hash {self.hash}\n" + dump(cfg))
            metrics = MetricsFile(self.run_dir / "metrics.jsonl", start if ckpt is not None else None)
            log = RunLog(self.run_dir, total, start, tc["progress"], self.stream)
            comm.log = log.info
            for w in self._warnings:
                log.info(f"warning: {w}")
            log.info(f"distbp {__version__}: {model.num_parameters():,} parameters, {len(splits.train):,} training "
                     f"and {len(splits.val):,} validation samples, {comm.size} worker(s), global batch "
                     f"{tc['global_batch']}, {total} steps ({sampler.steps_per_epoch} per epoch), "
                     f"{threads} BLAS thread(s) per worker")
            if processes:
                # mpiexec names a lost process only by PID and host: this line maps it to a rank.
                log.info("ranks: " + ", ".join(f"{r}=pid {p}" for r, p in enumerate(processes)))
            if ckpt is not None:
                log.info(f"resumed from {ckpt.path} at step {start}")
        return _Run(splits, model, loss_fn, opt, sched, sampler, total, start,
                    ckpt.path if ckpt is not None else None, log, metrics)

    def _loop(self, s: "_Run") -> RunResult:
        cfg, comm, tc = self.cfg, self.comm, self.cfg["train"]
        coordinator = comm.is_coordinator
        splits, model, loss_fn, opt, sched, sampler = s.splits, s.model, s.loss_fn, s.opt, s.sched, s.sampler
        flat, total, log, metrics = opt.flat, s.total, s.log, s.metrics
        dropouts = [m for _, m in model.named_modules() if isinstance(m, nn.Dropout)]
        previous_handlers = self._install_signal_handlers()
        val_loss = val_acc = None
        last_ckpt = s.checkpoint
        last_log_time, samples_since_log = time.perf_counter(), 0
        step = s.start
        try:
            while step < total:
                stats, batch = self._train_step(step, splits, sampler, model, loss_fn, opt, dropouts)
                sched.step()
                step += 1
                samples_since_log += batch
                is_last = step == total
                # The step's exchange also summed the loss and whether any process was
                # signalled before it. Only that agreed flag stops the loop: a signal that
                # lands on one rank after its exchange is acted on at the next step by all,
                # not now by that rank alone (the others would wait for it in the next
                # all-reduce, where no Python signal handler runs, and the job would hang).
                loss = float(stats[0])
                stop = stats[1] > 0
                if stop and self._signal is None:
                    self._signal = signal.SIGTERM
                if step % cfg["comm"]["check_every"] == 0 or is_last:
                    comm.check_replicas(flat.data, step)
                if step % tc["log_every"] == 0 or is_last:
                    if coordinator:
                        now = time.perf_counter()
                        rate = samples_since_log / max(now - last_log_time, 1e-9)
                        epoch = (step - 1) // sampler.steps_per_epoch
                        lr = opt.param_groups[0]["lr"]
                        metrics.write({"step": step, "epoch": epoch, "loss": loss, "lr": lr,
                                       "samples_per_s": round(rate, 1)})
                        if log.bar is None:
                            log.info(f"step {step}/{total} epoch {epoch} loss {loss:.4f} lr {lr:.3g} "
                                     f"{rate:,.0f} samples/s")
                        log.advance(0, {"loss": f"{loss:.4f}"})
                    last_log_time, samples_since_log = time.perf_counter(), 0
                if coordinator:
                    log.advance(1)
                    if (step % tc["eval_every"] == 0 or is_last) and len(splits.val):
                        val_loss, val_acc = self._evaluate(model, loss_fn, splits)
                        metrics.write({"step": step, "val_loss": val_loss, "val_accuracy": val_acc})
                        acc = "" if val_acc is None else f" val_accuracy {val_acc:.4f}"
                        log.info(f"eval step {step}: val_loss {val_loss:.4f}{acc}")
                    if step % cfg["checkpoint"]["every"] == 0 or is_last or stop:
                        last_ckpt = self._save(step, sampler, model, opt, sched, splits)
                if stop and not is_last:
                    raise Interrupted(self._signal, step, last_ckpt if coordinator else None)
        except PeerLost:
            # A lost worker (or server) ends the job; the coordinator keeps the last finished step.
            if coordinator and (last_ckpt is None or not last_ckpt.name.endswith(f"{step:08d}.npz")):
                last_ckpt = self._save(step, sampler, model, opt, sched, splits)
                log.info(f"checkpoint of step {step} written: {last_ckpt}")
            raise
        finally:
            flat.on_grad_ready = None
            self._restore_signal_handlers(previous_handlers)
            if coordinator:
                # The communicator outlives the run's log (its close may still report): stderr again.
                vars(comm).pop("log", None)
                log.close()
                metrics.close()
        return RunResult(step, val_loss, val_acc, last_ckpt, 0.0)

    def _train_step(self, step: int, splits: Splits, sampler: DistributedSampler, model: nn.Module,
                    loss_fn: LossFn, opt: Any, dropouts: list[nn.Dropout]) -> tuple[np.ndarray, int]:
        """Forward and backward on this worker's slice, the step's exchange, optimizer step.
        Returns the stats summed over workers (global mean loss, stop requests) and the
        global batch size."""
        idx, batch = sampler.local_indices(step)
        if not self.comm.computes_gradients:
            idx = idx[:0]
        start = (sampler.rank * batch) // sampler.world_size
        for i, m in enumerate(dropouts):
            # Masks drawn from (seed, step, layer) for the whole global batch, then sliced:
            # the same masks for any number of workers, and no RNG state to checkpoint.
            m.rng, m.rows = np.random.default_rng([self.cfg["seed"], step, i]), (start, batch)
        opt.zero_grad()
        local_loss = 0.0
        # Overflow is caught by the finiteness check below, with the step and parameter named;
        # numpy's RuntimeWarnings would only bury that message under lines from deep inside.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if len(idx):
                x = splits.train.x[idx]
                inputs = x if x.dtype.kind in "iu" else Tensor._wrap(x)
                loss = loss_fn(model(inputs), splits.train.y[idx], 1.0 / batch)
                loss.backward()
                local_loss = loss.item()
            grad = opt.flat.flat_grad()

            def update() -> None:
                # One cheap pass; the sum of large finite values can overflow, so confirm elementwise.
                if not (math.isfinite(local_loss) and (np.isfinite(grad.sum()) or bool(np.isfinite(grad).all()))):
                    self._raise_non_finite(step + 1, local_loss, model)
                opt.step()

            stats = np.array([local_loss, 0.0 if self._signal is None else 1.0])
            stats = self.comm.sync_step(grad, opt.flat.data, update, stats)
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

    @no_grad()
    def _evaluate(self, model: nn.Module, loss_fn: LossFn, splits: Splits) -> tuple[float, float | None]:
        """Mean validation loss and, for classification, accuracy (dropout off)."""
        model.eval()
        val = splits.val
        total_loss, correct = 0.0, 0
        for lo in range(0, len(val), EVAL_BATCH):
            x, y = val.x[lo:lo + EVAL_BATCH], val.y[lo:lo + EVAL_BATCH]
            out = model(x if x.dtype.kind in "iu" else Tensor._wrap(x))
            total_loss += loss_fn(out, y, 1.0).item()
            if val.num_classes is not None:
                correct += int((out.data.argmax(axis=1) == y).sum())
        model.train()
        accuracy = correct / len(val) if val.num_classes is not None else None
        return total_loss / len(val), accuracy

    def _save(self, step: int, sampler: DistributedSampler, model: nn.Module, opt: Any, sched: Any,
              splits: Splits) -> Path:
        epoch, position = sampler.position(step)
        opt_state = opt.state_dict()
        arrays = {"params": opt.flat.data.copy()}
        scalars = {}
        for k, v in opt_state["state"].items():
            if isinstance(v, np.ndarray):
                arrays[f"optim.{k}"] = v
            else:
                scalars[k] = v
        for k, v in splits.preprocessor.state().items():
            arrays[f"preprocess.{k}"] = np.asarray(v)
        if splits.train.vocab is not None:
            arrays["vocab"] = np.array(splits.train.vocab, dtype=str)
        if splits.train.classes is not None:
            arrays["classes"] = np.array(splits.train.classes, dtype=str)
        meta = {
            "epoch": epoch, "position": position, "world_size": self.comm.size,
            "config_hash": self.hash, "config": self.cfg, "distbp_version": __version__,
            # All randomness is derived from the seed: the epoch's permutation from
            # (seed, epoch), dropout masks from (seed, step, layer). No generator state to save.
            "rng": {"scheme": "derived", "seed": self.cfg["seed"]},
            "param_names": [n for n, _ in model.named_parameters()],
            "param_shapes": [list(p.shape) for _, p in model.named_parameters()],
            "optimizer": {"scalars": scalars, "param_groups": opt_state["param_groups"]},
            "scheduler": sched.state_dict(),
            "total_steps": self._total,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return write_checkpoint(self.run_dir / "checkpoints", step, arrays, meta, self.cfg["checkpoint"]["keep"])

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
