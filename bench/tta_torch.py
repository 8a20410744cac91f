"""The PyTorch eager counterpart of ``distbp-train`` on the default config, run by tta.py: the same
data, initial weights, loss, Adam, batch order and cadence; records in distbp's metrics.jsonl format."""

from __future__ import annotations

import time

T_START = time.perf_counter()  # before torch and distbp load: their import is part of the set-up

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402  (bench/ is on sys.path)
import mlp  # noqa: E402


def supported(cfg: dict) -> bool:
    """Whether this script reproduces ``cfg``: an MLP as the default config's, Adam, no schedule."""
    m, o = cfg["model"], cfg["optimizer"]
    return (m["type"], m["loss"], m["dropout"], m["output_activation"], m["init"], o["name"], cfg["schedule"]["name"]) \
        == ("mlp", "cross_entropy", 0, "none", "xavier_uniform", "adam", "constant") and (
            m["activation"] in ("relu", "tanh", "sigmoid") and (o["weight_decay"] == 0 or o["decay_biases"]))


def build(cfg: dict, threads: int):
    """torch, the data tensors, the model (distbp's initial weights), the optimizer, the sampler."""
    import torch

    from distbp.data import DistributedSampler, data_info, load_data
    from distbp.train.build import build_model

    torch.set_num_threads(threads)
    splits = load_data(cfg["data"], cfg["seed"], cfg["model"]["window"])
    reference = build_model(cfg, data_info(splits.train))  # only for its initial weights
    act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}[cfg["model"]["activation"]]
    model = mlp.torch_mlp(torch, cfg["model"]["sizes"], act, [p.data for _, p in reference.named_parameters()])
    o = cfg["optimizer"]
    opt = torch.optim.Adam(model.parameters(), lr=o["lr"], betas=tuple(o["betas"]),
                           eps=1e-8 if o["eps"] is None else o["eps"], weight_decay=o["weight_decay"])
    data = {k: torch.from_numpy(np.ascontiguousarray(getattr(getattr(splits, part), a)))
            for k, part, a in (("x", "train", "x"), ("y", "train", "y"), ("vx", "val", "x"), ("vy", "val", "y"))}
    return torch, data, model, opt, DistributedSampler(len(splits.train), cfg["train"]["global_batch"], cfg["seed"])


def train(cfg: dict, run_dir: Path, threads: int, target: float) -> dict:
    """Train as distbp-train would on one worker; the summary tta.py reads."""
    torch, data, model, opt, sampler = build(cfg, threads)
    F, tc = torch.nn.functional, cfg["train"]
    total = tc["epochs"] * sampler.steps_per_epoch if tc["max_steps"] is None else \
        min(tc["epochs"] * sampler.steps_per_epoch, tc["max_steps"])
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    metrics = open(run_dir / "metrics.jsonl", "w", encoding="utf-8")  # the end of set-up, as in distbp
    t_loop = time.perf_counter()

    def write(record: dict) -> None:
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()

    x, y, vx, vy = data["x"], data["y"], data["vx"], data["vy"]
    reached, val_acc, kept = None, None, []
    last_log, samples = time.perf_counter(), 0
    for step in range(1, total + 1):
        idx = torch.from_numpy(sampler.global_batch_indices(step - 1))
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        samples += len(idx)
        is_last = step == total
        if step % tc["log_every"] == 0 or is_last:
            write({"step": step, "epoch": (step - 1) // sampler.steps_per_epoch, "loss": loss.item(),
                   "lr": opt.param_groups[0]["lr"], "samples_per_s": round(samples / max(time.perf_counter() - last_log,
                                                                                        1e-9), 1)})
            last_log, samples = time.perf_counter(), 0
        if step % tc["eval_every"] == 0 or is_last:
            model.eval()
            with torch.no_grad():
                out = model(vx)
                val_loss = F.cross_entropy(out, vy, reduction="sum").item() / len(vy)
                val_acc = (out.argmax(dim=1) == vy).sum().item() / len(vy)
            model.train()
            write({"step": step, "val_loss": val_loss, "val_accuracy": val_acc})
            if reached is None and val_acc >= target:
                now = time.perf_counter()
                reached = {"step": step, "from_start_s": now - T_START, "loop_s": now - t_loop}
        if step % cfg["checkpoint"]["every"] == 0 or is_last:
            kept.append(run_dir / "checkpoints" / f"step-{step:08d}.pt")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, kept[-1])
            while len(kept) > cfg["checkpoint"]["keep"]:
                kept.pop(0).unlink()
    metrics.close()
    end = time.perf_counter()
    return {"steps": total, "val_accuracy": val_acc, "target": target, "reached": reached,
            "from_start_s": end - T_START, "loop_s": end - t_loop, "threads": threads, "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(common.ROOT / "configs" / "default.yaml"), help="a distbp config")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, as distbp-train --set")
    ap.add_argument("--run-dir", required=True, help="where metrics.jsonl and the checkpoints go")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--target", type=float, default=0.97, help="validation accuracy to time (default 0.97)")
    ap.add_argument("--summary", metavar="PATH", help="also write the summary as JSON to PATH")
    args = ap.parse_args(argv)
    from distbp.train import load_config

    cfg = load_config(args.config, args.overrides)
    if not supported(cfg):
        print("tta_torch.py reproduces an MLP with cross-entropy, Adam and a constant schedule only", file=sys.stderr)
        return 2
    Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    summary = train(cfg, Path(args.run_dir), args.threads, args.target)
    print(f"done: {summary['steps']} steps in {summary['from_start_s']:.3f} s from start, val_accuracy "
          f"{summary['val_accuracy']:.4f}; {args.target:g} reached: {summary['reached']}")
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
