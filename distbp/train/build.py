"""Turn a resolved config and the data into the model, loss, optimizer and schedule: the
built-in ones, or your own named as "pkg.module:function" (``factory``)."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import numpy as np

from .. import nn, optim
from ..autodiff.tensor import Tensor
from ..data import DataInfo
from .config import AUTO, ConfigError, _suggest, check_model_memory, mlp_tensors
from .factory import call_factory, import_object
from .registry import INITS, LOSSES, OPTIMIZERS, SCHEDULES, LossFn

# The layers a `model.type: sequential` config may list, by torch's class names.
LAYERS: dict[str, type[nn.Module]] = {
    "Linear": nn.Linear, "ReLU": nn.ReLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid, "LeakyReLU": nn.LeakyReLU,
    "Hardtanh": nn.Hardtanh, "Softsign": nn.Softsign, "Dropout": nn.Dropout, "Embedding": nn.Embedding,
    "Flatten": nn.Flatten,
}


def _auto_sizes(sizes: list[Any], info: DataInfo) -> list[int]:
    out = list(sizes)
    if out[0] == AUTO:
        out[0] = info.features
    if out[-1] == AUTO:
        out[-1] = info.targets
    inner = [i for i, v in enumerate(out) if v == AUTO]
    if inner:
        raise ConfigError(f"model.sizes[{inner[0]}]: auto is taken from the data, so only the input "
                          "(first) and output (last) sizes may be auto")
    return out


def _mlp(m: Mapping[str, Any], info: DataInfo, rng: np.random.Generator) -> nn.Module:
    sizes = _auto_sizes(m["sizes"], info)
    if sizes[0] != info.features:
        raise ConfigError(f"model.sizes: the input size is {sizes[0]} but the {info.name} data has "
                          f"{info.features} features")
    if sizes[-1] != info.targets:
        what = "classes" if info.classes is not None else "target columns"
        raise ConfigError(f"model.sizes: the output size is {sizes[-1]} but the {info.name} data has "
                          f"{info.targets} {what}")
    model: nn.Module = nn.MLP(sizes, m["activation"], m["dropout"], rng=rng)
    if m["output_activation"] == "sigmoid":
        model = nn.Sequential(*model, nn.Sigmoid())
    return model


def _layer_spec(i: int, item: Any) -> tuple[str, list[Any], dict[str, Any]]:
    where = f"model.layers[{i}]"
    if isinstance(item, str):
        return item, [], {}
    if isinstance(item, dict) and len(item) == 1:
        (name, value), = item.items()
        if value is None:
            return name, [], {}
        if isinstance(value, list):
            return name, value, {}
        if isinstance(value, dict):
            return name, [], value
        return name, [value], {}
    raise ConfigError(f"{where}: expected a layer name (ReLU) or one mapping of a name to its arguments "
                      f"(Linear: [auto, 128]), got {item!r}")


def _tensor_sizes(cls: type, bound: dict[str, Any]) -> list[int]:
    """The parameter tensors' sizes a Linear or Embedding of ``bound`` arguments would allocate."""
    def n(*keys: str) -> int | None:
        v = next((bound[k] for k in keys if bound.get(k) is not None), None)
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None
    if cls is nn.Linear and n("in_features") and n("out_features"):
        return [n("in_features") * n("out_features")] + ([n("out_features")] if bound.get("bias", True) else [])
    if cls is nn.Embedding and n("num_embeddings") and n("embedding_dim", "dim"):
        return [n("num_embeddings") * n("embedding_dim", "dim")]
    return []


def _sequential(layers: list[Any], info: DataInfo, rng: np.random.Generator,
                cfg: dict[str, Any] | None = None) -> nn.Module:
    """`model.layers`, each built from its torch-named class; `auto` sizes follow the data:
    an input size is what the layer before gives, an output size the number of classes (or
    regression targets), an Embedding's table the vocabulary."""
    shape = info.shape
    modules = []
    tensors: list[int] = []  # the parameters so far, checked against memory before each layer is built
    for i, item in enumerate(layers):
        name, args, kwargs = _layer_spec(i, item)
        where = f"model.layers[{i}]"
        cls = LAYERS.get(name)
        if cls is None:
            raise ConfigError(f"{where}: unknown layer {name!r}; choose one of {', '.join(LAYERS)}"
                              + _suggest(name, LAYERS))
        sig = inspect.signature(cls.__init__)
        try:
            bound = sig.bind_partial(None, *args, **kwargs).arguments
        except TypeError as e:
            raise ConfigError(f"{where}: {name}: {e}") from None
        bound.pop(next(iter(sig.parameters)))
        autos = {"in_features": shape[-1] if shape else None, "out_features": info.targets,
                 "num_embeddings": info.vocab_size}
        for key, value in bound.items():
            if value == AUTO:
                if key not in autos or autos[key] is None:
                    raise ConfigError(f"{where}: {name}: {key} cannot be auto here (the data gives no value for it)")
                bound[key] = autos[key]
        if "rng" in sig.parameters:
            bound["rng"] = rng
        tensors += _tensor_sizes(cls, bound)
        if cfg is not None:
            check_model_memory(cfg, where, tensors)
        try:
            module = cls(**bound)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {name}: {e}") from None
        if isinstance(module, nn.Linear):
            if not shape or shape[-1] != module.in_features:
                raise ConfigError(f"{where}: Linear takes {module.in_features} features, but the layer before "
                                  f"gives samples of shape {shape}" + ("; add Flatten before it" if len(shape) > 1 else ""))
            shape = shape[:-1] + (module.out_features,)
        elif isinstance(module, nn.Embedding):
            shape = shape + (module.dim,)
        elif isinstance(module, nn.Flatten):
            shape = (int(np.prod(shape)),)
        modules.append(module)
    return nn.Sequential(*modules)


def build_model(cfg: dict[str, Any], info: DataInfo) -> nn.Module:
    """The configured model, its sizes checked against the data; initialized from the seed."""
    m = cfg["model"]
    rng = np.random.default_rng([cfg["seed"], 0x1417])
    if m["type"] == "custom":
        fn = import_object(m["factory"], "model.factory")
        model = call_factory(fn, m["factory"], "model.factory", info, **m["options"])
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model.factory: {m['factory']} returned a {type(model).__name__}, not an nn.Module")
        if not any(True for _ in model.parameters()):
            raise ConfigError(f"model.factory: {m['factory']} returned a {type(model).__name__} with no parameters")
        return model
    if m["type"] == "window":
        width, vocab, classes = 2 * m["window"] + 1, info.vocab_size or 0, info.classes or 1
        check_model_memory(cfg, "model.embed_dim and model.hidden", [
            vocab * m["embed_dim"], width * m["embed_dim"] * m["hidden"], m["hidden"], m["hidden"] * classes, classes])
        model = nn.WindowClassifier(info.vocab_size or 0, m["embed_dim"], m["window"], m["hidden"],
                                    info.classes or 1, m["activation"], rng=rng)
    elif m["type"] == "sequential":
        model = _sequential(m["layers"], info, rng, cfg)
    else:
        check_model_memory(cfg, "model.sizes", mlp_tensors(_auto_sizes(m["sizes"], info)))
        model = _mlp(m, info, rng)
    if m["init"] != "xavier_uniform":
        for _, module in model.named_modules():
            if isinstance(module, nn.Linear):
                INITS[m["init"]](module.weight, rng=rng)
    return model


def per_sample_loss(fn: Callable[[Tensor, np.ndarray], Tensor], name: str) -> LossFn:
    """A LossFn from ``fn(output, target)``, which returns one loss per sample (torch's
    reduction='none'); the Trainer takes the mean over the global batch. A per-sample loss
    of several elements (an elementwise loss, shape (n, k)) counts as their mean, so the
    global mean is torch's reduction='mean'. A scalar is refused."""

    def loss(out: Tensor, y: np.ndarray, scale: float) -> Tensor:
        value = fn(out, y)
        if not isinstance(value, Tensor):
            raise ConfigError(f"{name}: returned a {type(value).__name__}; it must return a Tensor of one loss "
                              "per sample, computed from the output so that it can be differentiated")
        n = out.shape[0]
        if value.ndim == 0 or value.shape[0] != n:
            raise ConfigError(
                f"{name}: returned shape {value.shape} for a batch of {n}; it must return one loss per sample, "
                f"shape ({n},), like torch's reduction='none'. The Trainer takes the mean over the global batch "
                "itself: with N workers each holds a slice of it, and a mean per slice would weigh samples "
                "differently for each N")
        if value.ndim > 1:
            value = value.reshape(n, -1).mean(axis=1)
        return value.sum() * scale

    return loss


def build_loss(cfg: dict[str, Any], num_outputs: int) -> LossFn:
    """The configured training objective as a LossFn (registry.LOSSES); a "pkg.module:function"
    is your own ``fn(output, target)`` giving one loss per sample."""
    name = cfg["model"]["loss"]
    if name in LOSSES:
        return LOSSES[name].build(cfg["model"], num_outputs)
    return per_sample_loss(import_object(name, "model.loss"), f"model.loss: {name}")


def build_optimizer(cfg: dict[str, Any], model: nn.Module) -> optim.Optimizer:
    """The configured optimizer (registry.OPTIMIZERS) over the model's flat parameter buffer (named order)."""
    o = cfg["optimizer"]
    wd = o["weight_decay"]
    nn.flatten_parameters(model.parameters())
    params: Any = model.parameters()
    if wd > 0 and not o["decay_biases"]:
        # The course notes regularize weights, not biases: two groups, each with its own decay.
        params = optim.split_decay(model.named_parameters(), wd)
    frozen = [p for name, p in model.named_parameters() if name in frozen_parameters(cfg)]
    if frozen:
        # A group of its own with lr 0 and no decay: no optimizer moves it, whatever its state.
        groups = params if isinstance(params, list) and params and isinstance(params[0], dict) else [{"params": list(params)}]
        ids = {id(p) for p in frozen}
        params = [dict(g, params=[p for p in g["params"] if id(p) not in ids]) for g in groups]
        params.append({"params": frozen, "lr": 0.0, "weight_decay": 0.0})
    return OPTIMIZERS[o["name"]].build(params, o)


def frozen_parameters(cfg: dict[str, Any]) -> set[str]:
    """Names of the parameters the config freezes (the window model's pretrained vectors)."""
    m = cfg["model"]
    return {"embed.weight"} if m["type"] == "window" and m["freeze_embeddings"] else set()


def build_scheduler(cfg: dict[str, Any], opt: optim.Optimizer, total_steps: int):
    """The configured learning-rate schedule (registry.SCHEDULES)."""
    return SCHEDULES[cfg["schedule"]["name"]].build(opt, cfg["schedule"], total_steps)
