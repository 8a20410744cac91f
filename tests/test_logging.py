"""The run's log through the ``logging`` module: train.log holds the same lines with or
without the progress bar, a program's own logging receives them, and samples_per_s is a rate
over a window of steps long enough to mean something."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest

from distbp.train import Trainer, resolve
from distbp.train.metrics import LOGGER, Throughput

BASE = ["data.name=synthetic", "data.samples=300", "data.features=8", "data.classes=3", "model.sizes=[8, 16, 3]",
        "train.global_batch=23", "train.max_steps=20", "train.log_every=4", "train.eval_every=10",
        "checkpoint.every=10"]


def _lines(run_dir: Path) -> list[str]:
    """train.log without its time stamps and rates, which differ from run to run."""
    text = (run_dir / "train.log").read_text()
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(,\d+)? ", "", line)
        line = re.sub(r"[\d,]+ samples/s", "N samples/s", line)
        out.append(line.replace(str(run_dir), "RUN"))
    return [x for x in out if not x.startswith("done ")]  # its seconds differ


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("progress", ["bar", "auto"])
def test_train_log_has_the_step_lines_under_the_bar(tmp_path, progress):
    plain, bar = tmp_path / "plain", tmp_path / "bar"
    out_plain = io.StringIO()
    Trainer(resolve(None, BASE + ["train.progress=plain"]), run_dir=plain, stream=out_plain).run()
    out_bar = _Terminal()
    Trainer(resolve(None, BASE + [f"train.progress={progress}"]), run_dir=bar, stream=out_bar).run()
    assert _lines(bar) == [x.replace("train.progress: plain", f"train.progress: {progress}") for x in _lines(plain)]
    steps = [x for x in _lines(bar) if x.startswith("step ")]
    assert [x.split()[1] for x in steps] == ["4/20", "8/20", "12/20", "16/20", "20/20"]
    # On the terminal the bar shows the steps: the step lines are not printed under it.
    assert "step 4/20" in out_plain.getvalue() and "step 4/20" not in out_bar.getvalue()
    assert "eval step 10:" in out_bar.getvalue() and "it/s" not in out_plain.getvalue()


def test_a_programs_own_logging_receives_the_lines_instead_of_stdout(tmp_path, capsys):
    got: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    handler = Collect()
    LOGGER.addHandler(handler)
    try:
        Trainer(resolve(None, BASE), run_dir=tmp_path / "run").run()
    finally:
        LOGGER.removeHandler(handler)
    messages = [r.getMessage() for r in got]
    assert any(m.startswith("distbp ") and "parameters" in m for m in messages)
    assert sum(m.startswith("step ") for m in messages) == 5 and all(r.name == "distbp" for r in got)
    assert capsys.readouterr().out == ""  # nothing printed of its own
    assert len((tmp_path / "run" / "train.log").read_text().splitlines()) == len(messages) + 1  # + "done"
    assert not [h for h in LOGGER.handlers if getattr(h, "distbp_own", False)]  # the run removed its handlers


def test_a_warning_level_root_logger_does_not_drop_train_log_lines(tmp_path):
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        Trainer(resolve(None, BASE), run_dir=tmp_path / "run", stream=io.StringIO()).run()
    finally:
        root.setLevel(level)
    assert sum(x.startswith("step ") for x in _lines(tmp_path / "run")) == 5


def test_throughput_is_over_the_last_window_of_step_time():
    t = Throughput(window_s=1.0)
    assert t.rate() == 0.0
    t.add(100, 0.01)  # before a window's worth: all the steps so far
    assert t.rate() == pytest.approx(100 / 0.01)
    t = Throughput(window_s=1.0)
    for samples, seconds in [(10, 0.5), (10, 0.5), (30, 0.5), (30, 0.5)]:
        t.add(samples, seconds)
    # the steps that add up to at least 1 s, newest first: the last two (60 samples in 1 s)
    assert t.rate() == pytest.approx(60 / 1.0)
    t.add(30, 0.001)  # one fast step (30,000 samples/s on its own) moves the rate by half, not 500x
    assert t.rate() == pytest.approx(90 / 1.001)
