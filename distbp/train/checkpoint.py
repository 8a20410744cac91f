"""Checkpoints (docs/ARCHITECTURE.md, invariant 5): one ``step-00000200.npz`` per save, written atomically
(temporary file, fsync, rename), with a SHA-256 of its arrays in its JSON ``meta``; the last
K kept. Loading never unpickles; a truncated or altered file is detected and named.

Nothing is destroyed: a checkpoint that fails verification is moved to ``checkpoints/damaged/``
(never overwritten, never pruned; pruning deletes only files that verify), and the run
directory's lock (``RUN/.lock``, ``lock_run_dir``) keeps a second job out of it."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
import socket
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ..errors import DistbpError

FORMAT = 1
_NAME = re.compile(r"^step-(\d{8,})\.npz$")
DAMAGED = "damaged"  # checkpoints/damaged/: where a checkpoint that fails verification is moved
# write_checkpoint's temporary file: mkstemp(prefix=".NAME.", suffix=".tmp"), NAME ending in .npz.
_TEMP = re.compile(r"^\..+\.npz\.[A-Za-z0-9_]+\.tmp$")
_ZIP = b"PK\x03\x04"  # every .npz (a zip archive) starts with a local file header


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


def _stderr(message: str) -> None:
    print(f"distbp: {message}", file=sys.stderr, flush=True)


def write_checkpoint(directory: str | Path, step: int, arrays: dict[str, np.ndarray],
                     meta: dict[str, Any], keep: int, name: str | None = None,
                     log: Callable[[str], None] | None = None) -> Path:
    """Write ``arrays`` and ``meta`` as step ``step``; on any failure the previous
    checkpoints are untouched and the temporary file is removed. Returns the new path.
    ``name`` (``best.npz``) writes outside the step-numbered series, which is not pruned.
    A file of that name that does not verify is moved to ``damaged/`` first, never replaced;
    pruning deletes only checkpoints that verify. ``log`` (default: stderr) is told of each
    file moved."""
    directory = Path(directory)
    log = log or _stderr
    meta = dict(meta, step=step, format=FORMAT)
    meta["checksum"] = _checksum(arrays, meta)
    payload = dict(arrays, meta=np.array(json.dumps(meta)))
    final = directory / (name or checkpoint_name(step))
    tmp = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(final):
            # Only a verified file is replaced: a damaged one (a resume that could not move it,
            # or damage since) goes to damaged/, and if it cannot, nothing is written.
            try:
                read_checkpoint(final)
            except CheckpointError as e:
                log(f"warning: moved damaged checkpoint {final} to {move_damaged(final)} before writing "
                    f"a new one in its place: {_reason(e, final)}")
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
        _prune(directory, keep, final, log)
    return final


def _reason(e: CheckpointError, path: Path) -> str:
    """A CheckpointError's message without the leading ``PATH: ``."""
    msg, head = str(e), f"{path}: "
    return msg[len(head):] if msg.startswith(head) else msg


def move_damaged(path: str | Path) -> Path:
    """Move a checkpoint that failed verification to ``damaged/`` beside it, keeping its name
    (``step-00000040.1.npz``, ``.2``, ... when that is taken: nothing there is overwritten).
    A symbolic link is moved as the link, its target untouched. Returns the new path; raises
    CheckpointError if it cannot be moved (the file is then left where it was)."""
    path = Path(path)
    folder = path.parent / DAMAGED
    stem, suffix = (path.name[:-4], ".npz") if path.name.endswith(".npz") else (path.name, "")
    try:
        folder.mkdir(exist_ok=True)
        for n in range(1_000_000):
            dest = folder / (path.name if n == 0 else f"{stem}.{n}{suffix}")
            if not os.path.lexists(dest):
                break
        # Only the holder of the run directory's lock writes here, so the name stays free.
        os.rename(path, dest)
    except OSError as e:
        raise CheckpointError(f"{path}: damaged, and could not be moved to {folder}: {e.strerror or e}; "
                              "it was left in place and nothing was written over it") from None
    _fsync_dir(folder)
    _fsync_dir(path.parent)
    return dest


def remove_stale_temporaries(directory: str | Path) -> list[str]:
    """Remove the temporary files that a write cut short by a crash left in ``directory``
    (``.step-00000040.npz.XXXXXXXX.tmp``); one line for the log per file. Call it only while
    holding the run directory's lock: another job's write in progress looks the same."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    notes = []
    for p in sorted(directory.iterdir()):
        if _TEMP.match(p.name) and not p.is_dir():
            try:
                size = p.lstat().st_size
                p.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                notes.append(f"could not remove the stale temporary file {p}: {e.strerror or e}")
                continue
            notes.append(f"removed the stale temporary file {p} ({size:,} bytes), left by a checkpoint "
                         "write that did not finish")
    return notes


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


def _prune(directory: Path, keep: int, newest: Path, log: Callable[[str], None]) -> None:
    # Count back from the checkpoint just written: files of later steps are left alone, and
    # never push out the one just written. Only a file that verifies is deleted; one that
    # does not is moved to damaged/ (and no longer counts).
    found = list_checkpoints(directory)
    for old in found[:found.index(newest) + 1][:-keep]:
        try:
            read_checkpoint(old)
        except CheckpointError as e:
            if os.path.lexists(old):
                try:
                    log(f"warning: moved damaged checkpoint {old} to {move_damaged(old)} instead of pruning it: "
                        f"{_reason(e, old)}")
                except CheckpointError as moved:
                    log(f"warning: {moved}")
            continue
        old.unlink(missing_ok=True)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Load and verify one checkpoint; raises CheckpointError naming the file and the fault."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file"
                              + (f" (a symbolic link to {os.readlink(path)}, which does not exist)"
                                 if path.is_symlink() else ""))
    if not path.is_file():
        raise CheckpointError(f"{path}: not an .npz file (not a regular file)")
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read: {e.strerror or e}") from None
    if not blob.startswith(_ZIP):
        # Not a zip archive: np.load would try it as a pickle and the reason would be lost.
        link = f", a symbolic link to {os.readlink(path)}" if path.is_symlink() else ""
        raise CheckpointError(f"{path}: not an .npz file ({len(blob):,} bytes{link}; an .npz file starts "
                              f"with the zip signature PK\\x03\\x04)")
    try:
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
    named = _NAME.match(path.name)
    if named and (not isinstance(meta.get("step"), int) or meta["step"] != int(named.group(1))):
        # It verifies, so it is whole; but it is not what its name says (renamed, or copied over).
        raise CheckpointError(f"{path}: its name says step {int(named.group(1))} but it holds step "
                              f"{meta.get('step')!r}; renamed or copied from another checkpoint")
    return Checkpoint(path, arrays, meta)


def latest_valid(directory: str | Path, fits: Callable[[Checkpoint], None] | None = None,
                 move: bool = False) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint in ``directory`` that verifies (and that ``fits`` does not reject
    with a CheckpointError), and a warning for each newer one that did not (skipped, never
    deleted, so nothing is lost). ``move``: each of those is moved to ``damaged/`` (the
    warning says where), so no later write can replace it; only under the run's lock."""
    warnings = []
    for path in reversed(list_checkpoints(directory)):
        try:
            ckpt = read_checkpoint(path)
            if fits is not None:
                fits(ckpt)
            return ckpt, warnings
        except CheckpointError as e:
            where = ""
            if move:
                try:
                    where = f"; moved to {move_damaged(path)}"
                except CheckpointError as failed:
                    where = f"; {_reason(failed, path)}"
            warnings.append(f"skipping damaged checkpoint: {e}{where}")
    return None, warnings


def newest_to_resume(directory: str | Path, fits: Callable[[Checkpoint], None] | None = None
                     ) -> tuple[Checkpoint | None, list[str]]:
    """``--resume auto``: latest_valid with each damaged checkpoint moved to ``damaged/``;
    None when ``directory`` holds no checkpoint. When it holds some and none verifies, a
    CheckpointError naming each (where it now is) instead of a silent fresh start."""
    ckpt, warnings = latest_valid(directory, fits, move=True)
    if ckpt is None and warnings:
        directory = Path(directory)
        listed = "\n".join(w[len("skipping damaged checkpoint: "):] for w in warnings)
        kept = (f"each was moved to {directory / DAMAGED} and kept" if all("; moved to " in w for w in warnings)
                else "none was deleted")
        raise CheckpointError(f"{directory}: none of its {len(warnings)} checkpoint(s) verifies, so there is nothing "
                              f"to resume from; {kept}:\n{listed}\nto start over in this run directory, run again "
                              f"with --resume never (the files in {directory / DAMAGED} are left as they are); or "
                              "resume from a checkpoint you trust with --resume PATH")
    return ckpt, warnings


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
                  meta: dict[str, Any], keep: int, name: str | None = None,
                  log: Callable[[str], None] | None = None) -> Path:
    """Write one training checkpoint (``optimizer`` is ``Optimizer.state_dict()``); ``name``
    and ``log`` as for write_checkpoint."""
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
    return write_checkpoint(directory, step, arrays, meta, keep, name, log)


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


# -- the run directory's lock: one job per run directory -------------------------------------
# RUN/.lock is created with O_CREAT | O_EXCL and names its holder (host, pid, since when); the
# holder also keeps an flock on it, which the kernel drops when the holder dies. A second job
# is refused while the holder lives. A lock whose holder is on this host and no longer runs is
# stale and taken over (in place, under the flock, so two newcomers cannot both take it); the
# liveness of a holder on another host cannot be told from here, so that lock is only named,
# with how to remove it. Only the coordinator (rank 0, or the parameter server) takes it.

LOCK = ".lock"


class RunDirLocked(DistbpError):
    """Another job holds the run directory (exit 1: the command is sound, the directory is
    busy; it runs once that job has ended, or in another --run-dir)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    except (OverflowError, ValueError):
        return False
    # a zombie (dead, not yet reaped: init can take a second) holds nothing
    fields = _stat(pid)
    return fields is None or fields[0] != b"Z"


def _stat(pid: int) -> list[bytes] | None:
    """/proc/PID/stat's fields after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _flock(fd: int, block: bool) -> bool | None:
    """Whether this open file took the flock; None where the file system has none."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        return None  # ENOLCK, EOPNOTSUPP, ...: the content alone decides


def _started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat): with its pid, it
    tells a process from a later one that reuses the pid (a restarted container does)."""
    fields = _stat(pid)
    try:
        return int(fields[19]) if fields is not None else None
    except (IndexError, ValueError):
        return None


def _holds(h: dict[str, Any]) -> bool:
    """Whether the lock's holder still runs: its pid is alive and, where the lock says when it
    started, it is that same process (and not us: we hold the flock, so the holder is gone)."""
    if h["pid"] == os.getpid() or not _alive(h["pid"]):
        return False
    return not isinstance(h.get("started"), int) or _started(h["pid"]) in (None, h["started"])


def _holder(fd: int) -> dict[str, Any] | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        h = json.loads(raw.decode())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(h, dict) or not isinstance(h.get("host"), str) or not isinstance(h.get("pid"), int) \
            or isinstance(h.get("pid"), bool) or h["pid"] <= 0:
        return None
    return h


def _who(h: dict[str, Any]) -> str:
    since = f", since {h['since']}" if isinstance(h.get("since"), str) else ""
    return f"pid {h['pid']} on host {h['host']}{since}"


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class RunDirLock:
    """The held lock of one run directory; ``release()`` removes it (also done by the kernel's
    flock when the process dies, though the file then stays, naming a dead pid)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None


def lock_run_dir(run_dir: str | Path) -> tuple[RunDirLock, list[str]]:
    """Take ``RUN/.lock`` for this process (creating RUN); the lock and a warning for each
    stale lock taken over. RunDirLocked (exit 1), naming the holder's host and pid, when
    another job holds it or its holder cannot be told dead."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "started": _started(os.getpid())}
    remove = f"if no job is using {run_dir}, remove {path} and run again"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirLocked(f"{run_dir}: cannot create the run directory: {e.strerror or e}") from None
    for _ in range(10):  # a holder that releases between our open and our flock: try again
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            created = True
        except FileExistsError:
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise RunDirLocked(f"{path}: the run directory's lock cannot be opened ({e.strerror or e}); "
                                   f"{remove}") from None
            created = False
        except OSError as e:
            raise RunDirLocked(f"{path}: cannot create the run directory's lock: {e.strerror or e}") from None
        try:
            # A newcomer that found our fresh file only reads it and lets go: wait for that.
            got = _flock(fd, block=created)
            if got is False:
                h = _holder(fd)
                raise RunDirLocked(f"{run_dir} is in use by another job ({_who(h)}), which holds {path}; two jobs in "
                                   "one run directory would overwrite each other's checkpoints and metrics: wait "
                                   "for it to end, or use another --run-dir" if h else
                                   f"{run_dir} is in use by another job, which holds {path}; wait for it to end, "
                                   "or use another --run-dir")
            if not _same_file(fd, path):
                os.close(fd)
                continue
            warnings = []
            if not created:
                h = _holder(fd)
                if h is None:
                    raise RunDirLocked(f"{path} exists but does not say which job holds {run_dir} (empty or "
                                       f"not distbp's); {remove}")
                if h["host"] != me["host"]:
                    raise RunDirLocked(f"{run_dir} is locked by {_who(h)}, another host, where distbp cannot "
                                       f"tell whether that job still runs; {remove}")
                if _holds(h):
                    raise RunDirLocked(f"{run_dir} is in use by another job ({_who(h)}), which holds {path}; two "
                                       "jobs in one run directory would overwrite each other's checkpoints and "
                                       "metrics: wait for it to end, or use another --run-dir (if pid "
                                       f"{h['pid']} is not a distbp job, remove {path})")
                warnings.append(f"took over the stale lock {path} of {_who(h)}, which no longer runs "
                                "(a job that crashed or was killed)")
                os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(me) + "\n").encode())
            os.fsync(fd)
            return RunDirLock(path, fd), warnings
        except BaseException:
            if created and _same_file(fd, path):
                os.unlink(path)
            os.close(fd)
            raise
    raise RunDirLocked(f"{path}: the run directory's lock keeps changing hands; {remove}")
