"""``distbp-export``: a trained model as named tensors in safetensors, the format the torch
and Hugging Face ecosystems read; and ``distbp.load`` of such a file.

Two layouts. ``distbp``: tensors named and shaped as ``named_parameters()`` gives them
(Linear weights (in, out)). ``torch``: each Linear weight transposed to torch's (out, in),
under the names torch gives them, so that a ``torch.nn.Sequential`` of the same shape loads
the file with ``load_state_dict(strict=True)`` and gives the same logits (distbp's MLP is a
Sequential whose children are numbered as torch numbers them: Linear, activation, Dropout).

The metadata holds what using the model needs: the run's config (JSON), the class names,
the vocabulary, the data's shape, the layout; the preprocessing statistics are tensors
named ``preprocess.*``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import nn
from ..data import DataInfo, Preprocessor
from .checkpoint import Checkpoint, CheckpointError, training_state

LAYOUTS = ("distbp", "torch")


def _linear_weights(model: nn.Module) -> set[str]:
    return {f"{name}.weight" if name else "weight" for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def export(ckpt: Checkpoint, out: Path, layout: str = "distbp", model: nn.Module | None = None) -> Path:
    """Write the checkpoint's model to ``out`` (.safetensors) in ``layout``."""
    from safetensors.numpy import save_file

    from .predictor import build_for

    if layout not in LAYOUTS:
        raise CheckpointError(f"--layout: {layout!r} is not one of {', '.join(LAYOUTS)}")
    model, info = build_for(ckpt.meta, ckpt.arrays, str(ckpt.path), model)
    transposed = _linear_weights(model) if layout == "torch" else set()
    tensors = {}
    for name, p in model.named_parameters():
        tensors[name] = np.ascontiguousarray(p.data.T if name in transposed else p.data)
    preprocess = training_state(ckpt).preprocess
    for k, v in preprocess.items():
        v = np.asarray(v)
        if v.dtype.kind in "fiu" and v.ndim and v.size:
            tensors[f"preprocess.{k}"] = np.ascontiguousarray(v)
    # Its kind and eps are scalars: metadata; mean and scale arrays are tensors (above).
    pre = {k: (str(v) if v.dtype.kind in "US" else float(v)) for k, v in
           ((k, np.asarray(v)) for k, v in preprocess.items()) if v.ndim == 0}
    meta = {"format": "distbp", "layout": layout, "step": str(ckpt.step),
            "config": json.dumps(ckpt.meta["config"]), "data_info": json.dumps(ckpt.meta["data_info"]),
            "objects": json.dumps(ckpt.meta.get("objects")), "preprocess": json.dumps(pre),
            "param_names": json.dumps([n for n, _ in model.named_parameters()])}
    for key in ("classes", "vocab"):
        if key in ckpt.arrays:
            meta[key] = json.dumps(ckpt.arrays[key].tolist())
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=meta)
    return out


def load_safetensors(path: Path, model: nn.Module | None = None) -> Any:
    """A Predictor from a file ``export`` wrote (either layout)."""
    from safetensors import safe_open

    from .predictor import Predictor, build_for

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    if meta.get("format") != "distbp":
        raise CheckpointError(f"{path}: a safetensors file, but not one distbp-export wrote (no distbp metadata)")
    config, info = json.loads(meta["config"]), json.loads(meta["data_info"])
    names = json.loads(meta["param_names"])
    fake = {"config": config, "data_info": info, "objects": json.loads(meta.get("objects", "null"))}
    built, _ = build_for(fake, {}, str(path), model, load=False)
    if [n for n, _ in built.named_parameters()] != names:
        raise CheckpointError(f"{path}: its tensors {names} are not the model's parameters "
                              f"{[n for n, _ in built.named_parameters()]}")
    transposed = _linear_weights(built) if meta.get("layout") == "torch" else set()
    for name, p in built.named_parameters():
        if name not in tensors:
            raise CheckpointError(f"{path}: no tensor {name!r} for the model's parameter of that name")
        value = tensors[name].T if name in transposed else tensors[name]
        if value.shape != p.shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {value.shape}; the model's is {p.shape}")
        p.data[...] = value
    state: dict[str, Any] = {k[len("preprocess."):]: v for k, v in tensors.items() if k.startswith("preprocess.")}
    state.update(json.loads(meta.get("preprocess", "{}")))
    if "mean" in state:
        state.setdefault("matrix", np.zeros(0))  # "center" keeps no scale (an empty array is not stored)
    pre = Preprocessor.from_state(state) if "kind" in state else Preprocessor("none")
    classes = json.loads(meta["classes"]) if "classes" in meta else None
    vocab = json.loads(meta["vocab"]) if "vocab" in meta else None
    data_info = DataInfo(**{**info, "shape": tuple(info["shape"])})
    return Predictor(built.eval(), config, classes, vocab, pre, data_info, path, int(meta.get("step", 0)))
