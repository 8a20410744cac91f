"""What a run tells its user: log lines (stdout and ``train.log``), ``metrics.jsonl`` (its
records are listed in README.md, "Run directory"), and a progress bar when stdout is a terminal."""

from __future__ import annotations

import collections
import json
import logging
import math
import sys
from pathlib import Path
from typing import IO, Any


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN/inf; write null so every line stays parseable by strict readers.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


class MetricsFile:
    """Appends one JSON object per line and flushes, so a crash loses at most one line."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            # Keep what the resumed run already logged; drop lines past the checkpoint,
            # which the resumed run is about to write again.
            kept = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
            path.write_text("".join(k + "\n" for k in kept))
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(_clean(record)) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class Throughput:
    """Samples per second of the training steps (evaluation and checkpoints left out) over the
    most recent steps that add up to at least ``window_s`` seconds, or all of them before that:
    a rate over a handful of sub-millisecond steps says more about the clock than the job."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._steps: collections.deque[tuple[int, float]] = collections.deque()
        self._samples, self._seconds = 0, 0.0

    def add(self, samples: int, seconds: float) -> None:
        self._steps.append((samples, seconds))
        self._samples += samples
        self._seconds += seconds
        while len(self._steps) > 1 and self._seconds - self._steps[0][1] >= self.window_s:
            n, t = self._steps.popleft()
            self._samples -= n
            self._seconds -= t

    def rate(self) -> float:
        return self._samples / self._seconds if self._seconds > 0 else 0.0


LOGGER = logging.getLogger("distbp")
_STAMP = "%Y-%m-%d %H:%M:%S"


def _user_configured_logging() -> bool:
    """Whether the program set up logging that reaches distbp's records (a handler on the root
    logger or on "distbp"): then they go there, and distbp prints nothing of its own."""
    handlers = logging.getLogger().handlers + LOGGER.handlers
    return any(not getattr(h, "distbp_own", False) for h in handlers)


class _OwnRun(logging.Filter):
    """Only the records of one RunLog (two Trainers in one process keep their logs apart)."""

    def __init__(self, run: int, console: bool) -> None:
        super().__init__()
        self.run, self.console = run, console

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "distbp_run", None) != self.run:
            return False
        return not self.console or getattr(record, "distbp_console", True)


class _Console(logging.Handler):
    """The message alone on the stream; above the progress bar when there is one."""

    def __init__(self, stream: IO[str], bar: Any) -> None:
        super().__init__()
        self.stream, self.bar = stream, bar

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.bar is not None:
                self.bar.write(record.getMessage(), file=self.stream)
            else:
                print(record.getMessage(), file=self.stream, flush=True)
        except Exception:
            self.handleError(record)


class RunLog:
    """The coordinator's log lines, as records of the "distbp" logger: every line goes to
    ``train.log`` (time-stamped); to ``stream`` as well, above a tqdm bar when ``progress`` is
    "bar", or "auto" and the stream is a terminal. The per-step lines, which the bar shows,
    are not printed under it, but train.log has them all the same.

    A program that configured logging itself (a handler on the root logger or on "distbp")
    and passed no ``stream`` gets the lines through its own handlers instead of stdout."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, progress: str = "auto",
                 stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        use_bar = progress == "bar" or (progress == "auto" and getattr(self.stream, "isatty", lambda: False)())
        self.bar = None
        if use_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, file=self.stream, unit="step",
                            dynamic_ncols=True, leave=True)
        if LOGGER.level == logging.NOTSET:
            LOGGER.setLevel(logging.INFO)  # a root logger at WARNING must not drop the run's own lines
        self._id = id(self)
        file = logging.FileHandler(run_dir / "train.log", mode="a", encoding="utf-8")
        file.setFormatter(logging.Formatter("%(asctime)s %(message)s", _STAMP))
        file.addFilter(_OwnRun(self._id, console=False))
        self._handlers: list[logging.Handler] = [file]
        if stream is not None or not _user_configured_logging():
            console = _Console(self.stream, self.bar)
            console.addFilter(_OwnRun(self._id, console=True))
            self._handlers.append(console)
        for h in self._handlers:
            h.distbp_own = True  # type: ignore[attr-defined]
            LOGGER.addHandler(h)

    def info(self, message: str, console: bool = True) -> None:
        """One line; ``console=False``: train.log and the program's handlers only, not the
        stream (a per-step line while the bar shows the step)."""
        LOGGER.info(message, extra={"distbp_run": self._id, "distbp_console": console or self.bar is None})

    def advance(self, steps: int, postfix: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for h in self._handlers:
            LOGGER.removeHandler(h)
            h.close()
        self._handlers = []
