"""A PNG of a run's training loss and validation accuracy, from its metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from ..data import DataError


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training records, evaluation records) of a run directory's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; is {run_dir} a distbp run directory?")
    train, evals = [], []
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                break  # the last line of a run that crashed mid-write
            raise DataError(f"{path}:{n}: not a JSON object") from None
        (evals if "val_loss" in rec else train).append(rec)
    return train, evals


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the plot (default RUN_DIR/metrics.png) and return its path."""
    run_dir = Path(run_dir)
    train, evals = read_metrics(run_dir)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("distbp-plot needs matplotlib: pip install 'distbp[plot]'") from None
    fig, ax_loss = plt.subplots(figsize=(8, 4.5))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="training loss")
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], color="tab:blue",
                     linestyle="--", label="validation loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    lines = ax_loss.get_legend_handles_labels()
    acc = [r for r in evals if r.get("val_accuracy") is not None]
    if acc:
        ax_acc = ax_loss.twinx()
        ax_acc.plot([r["step"] for r in acc], [r["val_accuracy"] for r in acc], color="tab:orange",
                    marker="o", markersize=3, label="validation accuracy")
        ax_acc.set_ylabel("validation accuracy")
        more = ax_acc.get_legend_handles_labels()
        lines = (lines[0] + more[0], lines[1] + more[1])
    ax_loss.legend(*lines, loc="center right")
    ax_loss.set_title(f"distbp run {run_dir}")
    fig.tight_layout()
    out = Path(out) if out is not None else run_dir / "metrics.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
