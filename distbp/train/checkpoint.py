"""Checkpoints (docs/ARCHITECTURE.md, invariant 5): one ``step-00000200.npz`` per save, written atomically
(temporary file, fsync, rename), with a SHA-256 of its arrays in its JSON ``meta``; the last
K kept. Loading never unpickles; a truncated or altered file is detected and named."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ..errors import DistbpError

FORMAT = 1
_NAME = re.compile(r"^step-(\d{8,})\.npz$")


class CheckpointError(DistbpError, RuntimeError):
    """A checkpoint is missing, damaged, or from another run; the message says which file and why."""


@dataclass
class Checkpoint:
    path: Path
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def named_parameters(self) -> dict[str, np.ndarray]:
        """The parameters by name (views into ``params``, in named_parameters order, shaped
        as the model's), from the names and shapes the meta records."""
        out, offset = {}, 0
        params = self.arrays["params"]
        for name, shape in zip(self.meta.get("param_names", []), self.meta.get("param_shapes", [])):
            size = int(np.prod(shape))
            out[name] = params[offset:offset + size].reshape(shape)
            offset += size
        return out


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.npz"


def _checksum(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """SHA-256 of every array (name, dtype, shape, bytes) and of the meta record itself."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_checkpoint(directory: str | Path, step: int, arrays: dict[str, np.ndarray],
                     meta: dict[str, Any], keep: int, name: str | None = None) -> Path:
    """Write ``arrays`` and ``meta`` as step ``step``; on any failure the previous
    checkpoints are untouched and the temporary file is removed. Returns the new path.
    ``name`` (``best.npz``) writes outside the step-numbered series, which is not pruned."""
    directory = Path(directory)
    meta = dict(meta, step=step, format=FORMAT)
    meta["checksum"] = _checksum(arrays, meta)
    payload = dict(arrays, meta=np.array(json.dumps(meta)))
    final = directory / (name or checkpoint_name(step))
    tmp = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(e, OSError):
            # A full disk or a lost mount: say which file and that nothing older was touched.
            raise CheckpointError(f"{final}: could not write the checkpoint: {e.strerror or e}; the checkpoints "
                                  f"already in {directory} are unchanged") from None
        raise
    _fsync_dir(directory)
    if name is None:
        _prune(directory, keep, final)
    return final


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _prune(directory: Path, keep: int, newest: Path) -> None:
    # Count back from the checkpoint just written: files of later steps (damaged ones that a
    # resume skipped) are left alone, and never push out the one just written.
    found = list_checkpoints(directory)
    for old in found[:found.index(newest) + 1][:-keep]:
        old.unlink(missing_ok=True)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Load and verify one checkpoint; raises CheckpointError naming the file and the fault."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with open(path, "rb") as f:
            blob = f.read()
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise CheckpointError(f"{path}: holds a pickled object; distbp never unpickles") from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise CheckpointError(f"{path}: truncated or not an .npz file ({type(e).__name__}: {e})") from None
    except Exception as e:  # a damaged zip header can surface as anything (NotImplementedError, ...)
        raise CheckpointError(f"{path}: damaged; not a readable checkpoint ({type(e).__name__}: {e})") from None
    if "meta" not in arrays:
        raise CheckpointError(f"{path}: no 'meta' record; not a distbp checkpoint")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable meta record ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "checksum" not in meta:
        raise CheckpointError(f"{path}: meta is not a distbp checkpoint of format {FORMAT}")
    if _checksum(arrays, meta) != meta["checksum"]:
        raise CheckpointError(f"{path}: checksum mismatch; the file was altered or damaged")
    if "params" not in arrays:
        raise CheckpointError(f"{path}: no 'params' array")
    return Checkpoint(path, arrays, meta)


def latest_valid(directory: str | Path, fits: Callable[[Checkpoint], None] | None = None
                 ) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint in ``directory`` that verifies (and that ``fits`` does not reject
    with a CheckpointError), and a warning for each newer one that did not (skipped, never
    deleted, so nothing is lost)."""
    warnings = []
    for path in reversed(list_checkpoints(directory)):
        try:
            ckpt = read_checkpoint(path)
            if fits is not None:
                fits(ckpt)
            return ckpt, warnings
        except CheckpointError as e:
            warnings.append(f"skipping damaged checkpoint: {e}")
    return None, warnings


# -- the training checkpoint's layout: known here only --------------------------------------
# Arrays: "params" (the flat parameter buffer), "optim.<name>" (the optimizer's flat state
# arrays), "preprocess.<name>" (the preprocessing statistics), "vocab" and "classes" (names,
# when the data has them). Meta: the step and where in its epoch, the config and its hash,
# parameter names and shapes (so a file that does not fit the model is caught), the
# optimizer's scalar state and param groups, the schedule's state.

@dataclass
class TrainingState:
    """What a training checkpoint restores."""

    params: np.ndarray
    optimizer: dict[str, Any]  # a state_dict for Optimizer.load_state_dict
    scheduler: dict[str, Any]
    preprocess: dict[str, np.ndarray]


def save_training(directory: str | Path, step: int, *, params: np.ndarray, optimizer: dict[str, Any],
                  scheduler: dict[str, Any], named_shapes: list[tuple[str, tuple[int, ...]]],
                  preprocess: dict[str, Any], vocab: list[str] | None, classes: list[str] | None,
                  meta: dict[str, Any], keep: int, name: str | None = None) -> Path:
    """Write one training checkpoint (``optimizer`` is ``Optimizer.state_dict()``); ``name``
    as for write_checkpoint."""
    arrays = {"params": params.copy()}
    scalars = {}
    for k, v in optimizer["state"].items():
        if isinstance(v, np.ndarray):
            arrays[f"optim.{k}"] = v
        else:
            scalars[k] = v
    for k, v in preprocess.items():
        arrays[f"preprocess.{k}"] = np.asarray(v)
    if vocab is not None:
        arrays["vocab"] = np.array(vocab, dtype=str)
    if classes is not None:
        arrays["classes"] = np.array(classes, dtype=str)
    meta = dict(meta, param_names=[n for n, _ in named_shapes], param_shapes=[list(s) for _, s in named_shapes],
                optimizer={"scalars": scalars, "param_groups": optimizer["param_groups"]}, scheduler=scheduler)
    return write_checkpoint(directory, step, arrays, meta, keep, name)


BEST = "best.npz"  # checkpoint.keep_best: the best evaluation's checkpoint, beside the last K


def check_fits(ckpt: Checkpoint, named_shapes: list[tuple[str, tuple[int, ...]]], params: np.ndarray) -> None:
    """CheckpointError unless the checkpoint's parameters are the model's: names, shapes,
    count and dtype (a file that verifies but does not fit was damaged or crafted)."""
    meta = ckpt.meta
    names = [n for n, _ in named_shapes]
    shapes = [list(s) for _, s in named_shapes]
    if meta.get("param_names") != names or meta.get("param_shapes") != shapes:
        raise CheckpointError(f"{ckpt.path}: its parameters {list(zip(meta.get('param_names', []), meta.get('param_shapes', [])))} "
                              f"do not match the model's {list(zip(names, shapes))}")
    saved = ckpt.arrays["params"]
    if saved.shape != params.shape or saved.dtype != params.dtype:
        raise CheckpointError(f"{ckpt.path}: params hold {saved.size} {saved.dtype} values; "
                              f"the model has {params.size} {params.dtype}")


def training_state(ckpt: Checkpoint) -> TrainingState:
    """The parts of a training checkpoint, as the optimizer and schedule load them."""
    meta = ckpt.meta
    state = {k[len("optim."):]: v for k, v in ckpt.arrays.items() if k.startswith("optim.")}
    try:
        state.update(meta["optimizer"]["scalars"])
        optimizer = {"state": state, "param_groups": meta["optimizer"]["param_groups"]}
        scheduler = meta["scheduler"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt.path}: no optimizer or schedule state ({e})") from None
    preprocess = {k[len("preprocess."):]: v for k, v in ckpt.arrays.items() if k.startswith("preprocess.")}
    return TrainingState(ckpt.arrays["params"], optimizer, scheduler, preprocess)
