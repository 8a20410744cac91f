"""The PyTorch eager counterpart of ``distbp-train`` on the default config, for bench/tta.py:
the same data, model, initial weights, loss, optimizer, schedule, batch order and eval cadence,
one process, written the way a PyTorch user writes a training loop.

    .venv/bin/python bench/tta_torch.py                                  # the default config
    .venv/bin/python bench/tta_torch.py --set train.eval_every=5 --run-dir /tmp/t --threads 2

What is shared with distbp, and how:

- **Data**: distbp's own ``load_data`` (the digits split and the standardization fitted on the
  training split), so the arrays are identical, float32.
- **Model**: ``nn.Sequential`` of ``nn.Linear`` and the configured activation with the
  config's sizes; the initial weights are *copied* from distbp's ``build_model`` for the same
  seed (Xavier-uniform weights, zero biases), transposed to torch's (out, in) layout.
- **Loss**: softmax cross-entropy, mean over the global batch (distbp sums and scales by
  1 / batch: the same value).
- **Optimizer and schedule**: ``torch.optim.Adam`` with the config's lr, betas, eps and weight
  decay; the constant schedule is no schedule.
- **Batch order**: distbp's ``DistributedSampler`` for one worker (a permutation per epoch from
  ``(seed, epoch)``, short last batch), so every step sees the same samples in the same order.
- **Cadence**: the config's ``eval_every`` (and the last step) for the validation pass,
  ``log_every`` for the training records, ``checkpoint.every`` for a ``torch.save`` of model
  and optimizer state (distbp also fsyncs its checkpoints; none falls before 97% here).
- **Threads**: ``torch.set_num_threads(--threads)``; bench/tta.py passes the BLAS thread count
  distbp's single-worker run reported.

Records go to ``RUN_DIR/metrics.jsonl`` in distbp's format (``{"step", "val_loss",
"val_accuracy"}`` per eval, ``{"step", "epoch", "loss", "lr", "samples_per_s"}`` per log step),
the file created where distbp's Trainer creates its own, at the end of set-up: bench/tta.py
times both programs by the moment each line appears. The script itself prints the time to
``--target`` measured from its own start (after the interpreter started, before torch loads).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # before torch and distbp load: their import is part of the set-up

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
ACTIVATIONS = ("relu", "tanh", "sigmoid")


def supported(cfg: dict[str, Any]) -> list[str]:
    """What in ``cfg`` this script does not reproduce (empty when it can train it)."""
    m, o, s = cfg["model"], cfg["optimizer"], cfg["schedule"]
    problems = []
    if m["type"] != "mlp" or m["activation"] not in ACTIVATIONS or m["dropout"] > 0 \
            or m["output_activation"] != "none" or m["init"] != "xavier_uniform":
        problems.append("model: only an MLP with relu/tanh/sigmoid, no dropout, no output activation, "
                        "xavier_uniform init")
    if m["loss"] != "cross_entropy":
        problems.append(f"model.loss: only cross_entropy (got {m['loss']})")
    if o["name"] != "adam":
        problems.append(f"optimizer.name: only adam (got {o['name']})")
    if o["weight_decay"] > 0 and not o["decay_biases"]:
        problems.append("optimizer.weight_decay without decay_biases: not reproduced")
    if s["name"] != "constant":
        problems.append(f"schedule.name: only constant (got {s['name']})")
    return problems


def build(cfg: dict[str, Any], threads: int):
    """torch, the training and validation tensors, the model (with distbp's initial weights),
    the optimizer and distbp's sampler."""
    import torch

    from distbp.data import DistributedSampler, data_info, load_data
    from distbp.train.build import build_model

    torch.set_num_threads(threads)
    splits = load_data(cfg["data"], cfg["seed"], cfg["model"]["window"])
    reference = build_model(cfg, data_info(splits.train))  # only for its initial weights: distbp's init, same seed
    sizes, act = cfg["model"]["sizes"], cfg["model"]["activation"]
    layers: list[torch.nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append({"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}[act]())
    model = torch.nn.Sequential(*layers)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    params = [p.data for _, p in reference.named_parameters()]
    with torch.no_grad():
        for lin, W, b in zip(linears, params[0::2], params[1::2]):
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            lin.bias.copy_(torch.from_numpy(b))
    o = cfg["optimizer"]
    opt = torch.optim.Adam(model.parameters(), lr=o["lr"], betas=tuple(o["betas"]),
                           eps=1e-8 if o["eps"] is None else o["eps"], weight_decay=o["weight_decay"])
    data = {k: torch.from_numpy(np.ascontiguousarray(getattr(getattr(splits, part), a)))
            for k, part, a in (("x", "train", "x"), ("y", "train", "y"), ("vx", "val", "x"), ("vy", "val", "y"))}
    sampler = DistributedSampler(len(splits.train), cfg["train"]["global_batch"], cfg["seed"])
    return torch, data, model, opt, sampler


def train(cfg: dict[str, Any], run_dir: Path, threads: int, target: float) -> dict[str, Any]:
    """Train as distbp-train would on one worker; returns the summary bench/tta.py prints."""
    torch, data, model, opt, sampler = build(cfg, threads)
    F = torch.nn.functional
    tc = cfg["train"]
    total = tc["epochs"] * sampler.steps_per_epoch
    if tc["max_steps"] is not None:
        total = min(total, tc["max_steps"])
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    metrics = open(run_dir / "metrics.jsonl", "w", encoding="utf-8")  # the end of set-up, as in distbp
    t_loop = time.perf_counter()
    print(f"torch {torch.__version__}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{len(data['y']):,} training and {len(data['vy']):,} validation samples, global batch "
          f"{tc['global_batch']}, {total} steps ({sampler.steps_per_epoch} per epoch), {threads} thread(s)",
          flush=True)

    def write(record: dict[str, Any]) -> None:
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()

    x, y, vx, vy = data["x"], data["y"], data["vx"], data["vy"]
    reached: dict[str, Any] | None = None
    val_loss = val_acc = None
    kept: list[Path] = []
    last_log, samples = time.perf_counter(), 0
    eval_s = 0.0
    for step in range(1, total + 1):
        idx = torch.from_numpy(sampler.global_batch_indices(step - 1))
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        samples += len(idx)
        is_last = step == total
        if step % tc["log_every"] == 0 or is_last:
            now = time.perf_counter()
            rate = samples / max(now - last_log, 1e-9)
            write({"step": step, "epoch": (step - 1) // sampler.steps_per_epoch, "loss": loss.item(),
                   "lr": opt.param_groups[0]["lr"], "samples_per_s": round(rate, 1)})
            last_log, samples = time.perf_counter(), 0
        if step % tc["eval_every"] == 0 or is_last:
            t_eval = time.perf_counter()
            model.eval()
            with torch.no_grad():
                out = model(vx)
                val_loss = F.cross_entropy(out, vy, reduction="sum").item() / len(vy)
                val_acc = (out.argmax(dim=1) == vy).sum().item() / len(vy)
            model.train()
            eval_s += time.perf_counter() - t_eval
            write({"step": step, "val_loss": val_loss, "val_accuracy": val_acc})
            print(f"eval step {step}: val_loss {val_loss:.4f} val_accuracy {val_acc:.4f}", flush=True)
            if reached is None and val_acc >= target:
                now = time.perf_counter()
                reached = {"step": step, "from_start_s": now - T_START, "loop_s": now - t_loop, "eval_s": eval_s}
        if step % cfg["checkpoint"]["every"] == 0 or is_last:
            path = ckpt_dir / f"step-{step:08d}.pt"
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, path)
            kept.append(path)
            while len(kept) > cfg["checkpoint"]["keep"]:
                kept.pop(0).unlink()
    metrics.close()
    end = time.perf_counter()
    return {"steps": total, "val_loss": val_loss, "val_accuracy": val_acc, "target": target, "reached": reached,
            "from_start_s": end - T_START, "loop_s": end - t_loop, "eval_s": eval_s, "threads": threads,
            "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="a distbp config (default configs/default.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, as distbp-train --set")
    ap.add_argument("--run-dir", required=True, help="where metrics.jsonl and the checkpoints go")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--target", type=float, default=0.97, help="validation accuracy to time (default 0.97)")
    ap.add_argument("--summary", metavar="PATH", help="also write the summary as JSON to PATH")
    args = ap.parse_args(argv)
    from distbp.train import load_config

    cfg = load_config(args.config, args.overrides)
    problems = supported(cfg)
    if problems:
        print("bench/tta_torch.py cannot reproduce this config:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = train(cfg, run_dir, args.threads, args.target)
    r = summary["reached"]
    where = (f"{100 * args.target:g}% at step {r['step']}: {r['from_start_s']:.3f} s from start, "
             f"{r['loop_s']:.3f} s in the loop" if r else f"{100 * args.target:g}% not reached")
    print(f"done: {summary['steps']} steps in {summary['from_start_s']:.3f} s from start "
          f"({summary['loop_s']:.3f} s in the loop), val_accuracy {summary['val_accuracy']:.4f}; {where}")
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
