"""What a run tells its user: log lines (stdout and ``train.log``), ``metrics.jsonl`` (its
records are listed in README.md, "Run directory"), and a progress bar when stdout is a terminal."""

from __future__ import annotations

import json
import math
import sys
import time
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


class RunLog:
    """Log lines to ``stream`` and ``train.log``; a tqdm bar when ``progress`` is "bar", or
    "auto" and the stream is a terminal. Only the coordinator makes one."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, progress: str = "auto",
                 stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self._file = open(run_dir / "train.log", "a", encoding="utf-8")
        use_bar = progress == "bar" or (progress == "auto" and getattr(self.stream, "isatty", lambda: False)())
        self.bar = None
        if use_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, file=self.stream, unit="step",
                            dynamic_ncols=True, leave=True)

    def info(self, message: str) -> None:
        stamped = time.strftime("%Y-%m-%d %H:%M:%S ") + message
        self._file.write(stamped + "\n")
        self._file.flush()
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def advance(self, steps: int, postfix: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self._file.close()
