"""The YAML config schema: defaults for every key, and validation that names the
key's dotted path and suggests the nearest known key or value."""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml
from ..errors import EXIT_USAGE, DistbpError


class ConfigError(DistbpError, ValueError):
    """A bad config file, key, value or command-line override (exit code 2); every rank
    reads the same config, so all raise it together."""

    exit_code, collective = EXIT_USAGE, True


@dataclass(frozen=True)
class Field:
    """One config key: its type, default and allowed values."""

    kind: str  # "int", "float", "bool", "str", "int_list", "size_list", "float_list", "str_or_int", "mapping",
    #            "list", "import_path", "str_list"
    default: Any
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # min is exclusive
    max_open: bool = False  # max is exclusive
    nullable: bool = False
    length: int | None = None  # exact length of a list
    factory: bool = False  # a "pkg.module:function" import path is allowed besides the choices


AUTO = "auto"
# "pkg.module:function", the form of model.factory, data.factory and a model.loss of your own.
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

# What train.metrics may name (computed by distbp.metrics on the validation split); lower is
# better for the losses and errors, higher for the rest.
METRIC_NAMES = ("accuracy", "macro_f1", "weighted_f1", "entity_f1", "entity_precision", "entity_recall",
                "mse", "mae", "r2")
LOWER_IS_BETTER = {"val_loss", "mse", "mae"}

ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu", "hardtanh", "softsign")

SCHEMA: dict[str, Any] = {
    "seed": Field("int", 0, min=0),
    "model": {
        "type": Field("str", "mlp", choices=("mlp", "window", "sequential", "custom")),
        "sizes": Field("size_list", [64, 256, 10], min=1),
        "layers": Field("list", None, nullable=True),
        "factory": Field("import_path", None, nullable=True),
        "options": Field("mapping", {}),
        "activation": Field("str", "relu", choices=ACTIVATIONS),
        "output_activation": Field("str", "none", choices=("none", "sigmoid")),
        "dropout": Field("float", 0.0, min=0.0, max=1.0, max_open=True),
        "init": Field("str", "xavier_uniform", choices=("xavier_uniform", "xavier_normal", "kaiming_normal")),
        "loss": Field("str", "cross_entropy", choices=("cross_entropy", "multi_margin", "mse"), factory=True),
        "margin": Field("float", 1.0, min=0.0, min_open=True),
        "embed_dim": Field("int", 50, min=1),
        "window": Field("int", 2, min=0),
        "hidden": Field("int", 100, min=1),
        "embeddings": Field("str", None, nullable=True),
        "freeze_embeddings": Field("bool", False),
    },
    "data": {
        "name": Field("str", "digits", choices=("digits", "synthetic", "npz", "csv", "idx", "conll", "custom")),
        "factory": Field("import_path", None, nullable=True),
        "options": Field("mapping", {}),
        "path": Field("str", None, nullable=True),
        "labels": Field("str", None, nullable=True),
        "label": Field("str_or_int", None, nullable=True),
        "delimiter": Field("str", "auto", choices=("auto", ",", ";", "\t", "|")),
        "x_key": Field("str", "x"),
        "y_key": Field("str", "y"),
        "task": Field("str", "classification", choices=("classification", "regression")),
        "kind": Field("str", "blobs", choices=("blobs", "spirals", "regression")),
        "samples": Field("int", 2000, min=2),
        "features": Field("int", 16, min=1),
        "classes": Field("int", 3, min=2),
        "noise": Field("float", 0.5, min=0.0),
        "val_fraction": Field("float", 0.1, min=0.0, max=1.0, max_open=True),
        "test_fraction": Field("float", 0.0, min=0.0, max=1.0, max_open=True),
        "test_path": Field("str", None, nullable=True),
        "test_labels": Field("str", None, nullable=True),
        "stratify": Field("bool", False),
        "preprocess": Field("str", "standardize", choices=("none", "center", "standardize", "whiten")),
        "whiten_eps": Field("float", 1e-5, min=0.0, min_open=True),
        "min_count": Field("int", 1, min=1),
    },
    "train": {
        "epochs": Field("int", 30, min=1),
        "global_batch": Field("int", 128, min=1),
        "max_steps": Field("int", None, min=1, nullable=True),
        "eval_every": Field("int", 50, min=1),
        "log_every": Field("int", 10, min=1),
        "progress": Field("str", "auto", choices=("auto", "bar", "plain")),
        "metrics": Field("str_list", [], choices=METRIC_NAMES),
        # {metric, patience, mode}: stop when the metric has not improved for `patience` evaluations.
        "early_stopping": Field("mapping", {}),
        # torch.nn.utils.clip_grad_norm_ on the global gradient (after the all-reduce, so the
        # clipped step is the same for any number of workers); null: no clipping.
        "clip_grad_norm": Field("float", None, min=0.0, min_open=True, nullable=True),
    },
    "optimizer": {
        "name": Field("str", "adam", choices=("sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw")),
        "lr": Field("float", 0.001, min=0.0, min_open=True),
        "weight_decay": Field("float", 0.0, min=0.0),
        "decay_biases": Field("bool", False),
        # None: torch.optim.SGD's 0 for sgd, 0.9 for the "momentum" variant (see resolve).
        "momentum": Field("float", None, min=0.0, max=1.0, max_open=True, nullable=True),
        "dampening": Field("float", 0.0, min=0.0, max=1.0),
        "nesterov": Field("bool", False),
        "betas": Field("float_list", [0.9, 0.999], min=0.0, max=1.0, max_open=True, length=2),
        "eps": Field("float", None, min=0.0, nullable=True),
        "alpha": Field("float", 0.99, min=0.0, max=1.0),
    },
    "schedule": {
        "name": Field("str", "constant", choices=("constant", "step", "annealing", "cosine", "warmup")),
        "step_size": Field("int", 1000, min=1),
        "gamma": Field("float", 0.1, min=0.0, min_open=True),
        "tau": Field("float", 100.0, min=0.0, min_open=True),
        "t_max": Field("int", None, min=1, nullable=True),
        "eta_min": Field("float", 0.0, min=0.0),
        "warmup_steps": Field("int", 100, min=1),
        "after": Field("str", "constant", choices=("constant", "step", "annealing", "cosine")),
    },
    "comm": {
        "backend": Field("str", "auto", choices=("auto", "local", "mpi", "zmq")),
        "role": Field("str", "worker", choices=("server", "worker")),
        "endpoint": Field("str", "tcp://127.0.0.1:5555"),
        "workers": Field("int", 1, min=1),
        "heartbeat_s": Field("float", 1.0, min=0.0, min_open=True),
        "timeout_s": Field("float", 10.0, min=0.0, min_open=True),
        "join_timeout_s": Field("float", 60.0, min=0.0, min_open=True),
        "curve": Field("str", None, nullable=True),
        "check_every": Field("int", 100, min=1),
        "overlap": Field("bool", False),
        "bucket_mb": Field("float", 1.0, min=0.0, min_open=True),
        "threads": Field("int", None, min=1, nullable=True),
    },
    "checkpoint": {
        "every": Field("int", 100, min=1),
        "keep": Field("int", 3, min=1),
        "keep_best": Field("str", None, nullable=True),
    },
    "run_dir": Field("str", "runs/digits-mlp"),
}

# Keys that change where and how often things are written, not the numbers a run computes;
# they stay out of the config hash so a run can be resumed with a longer max_steps or another
# run directory.
_HASH_EXCLUDED = {"run_dir", "checkpoint", "comm", "train.epochs", "train.max_steps", "train.metrics",
                  "train.early_stopping", "data.test_path", "data.test_labels",
                  "train.eval_every", "train.log_every", "train.progress"}

# Keys added after run directories existed whose default (None) changes nothing: left out of
# the hash at that default, so a run started before them still resumes.
_ADDED_LATER = ("train.clip_grad_norm",)


def defaults(schema: dict[str, Any] = SCHEMA) -> dict[str, Any]:
    """The default config: every key at its default."""
    return {k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in schema.items()}


def _paths(schema: dict[str, Any], prefix: str = "") -> Iterable[str]:
    for k, v in schema.items():
        path = f"{prefix}{k}"
        yield path
        if isinstance(v, dict):
            yield from _paths(v, path + ".")


def _suggest(word: str, options: Iterable[str]) -> str:
    by_lower = {str(o).lower(): str(o) for o in options}
    match = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean {by_lower[match[0]]}?" if match else ""


def _range_text(f: Field) -> str:
    lo = "" if f.min is None else ("> " if f.min_open else ">= ") + str(f.min)
    hi = "" if f.max is None else ("< " if f.max_open else "<= ") + str(f.max)
    return " and ".join(x for x in (lo, hi) if x)


def _check_number(path: str, f: Field, value: Any, kind: str) -> Any:
    # bool is an int in Python; `epochs: true` is a mistake, not 1.
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
    if kind == "float" and isinstance(value, str):
        try:
            value = float(value)  # PyYAML reads 1e-3 (no dot) as a string
        except ValueError:
            pass
    if kind == "int" and not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if kind == "float":
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
    too_low = f.min is not None and (value <= f.min if f.min_open else value < f.min)
    too_high = f.max is not None and (value >= f.max if f.max_open else value > f.max)
    if too_low or too_high:
        raise ConfigError(f"{path}: {value!r} is out of range; it must be {_range_text(f)}")
    return value


def _check_value(path: str, f: Field, value: Any) -> Any:
    if value is None:
        if f.nullable:
            return None
        raise ConfigError(f"{path}: a value is required (default {f.default!r})")
    if f.kind in ("int", "float"):
        value = _check_number(path, f, value, f.kind)
    elif f.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
    elif f.kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
    elif f.kind == "str_or_int":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ConfigError(f"{path}: expected a column name or index, got {value!r}")
    elif f.kind in ("int_list", "size_list", "float_list"):
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{path}: expected a non-empty list, got {value!r}")
        if f.length is not None and len(value) != f.length:
            raise ConfigError(f"{path}: expected a list of {f.length} values, got {len(value)}")
        item_kind = "int" if f.kind == "size_list" else f.kind.split("_")[0]
        # A size written `auto` is taken from the data (features in, classes out).
        value = [v if f.kind == "size_list" and v == AUTO else _check_number(f"{path}[{i}]", f, v, item_kind)
                 for i, v in enumerate(value)]
    elif f.kind == "str_list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: expected a list of names, got {value!r}")
        for v in value:
            if f.choices is not None and v not in f.choices:
                raise ConfigError(f"{path}: {v!r} is not one of {', '.join(f.choices)}" + _suggest(v, f.choices))
        return list(value)
    elif f.kind == "import_path":
        if not isinstance(value, str) or not IMPORT_PATH.match(value):
            raise ConfigError(f"{path}: expected pkg.module:function, got {value!r}")
    elif f.kind == "mapping":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{path}: expected a mapping of keyword arguments, got {value!r}")
        value = copy.deepcopy(value)
    elif f.kind == "list":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{path}: expected a non-empty list, got {value!r}")
        value = copy.deepcopy(value)
    if f.factory and isinstance(value, str) and IMPORT_PATH.match(value):
        return value
    if f.choices is not None and value not in f.choices:
        also = " or a function of your own as pkg.module:function" if f.factory else ""
        raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(str, f.choices))}{also}"
                          + _suggest(value, f.choices))
    return value


def _merge(schema: dict[str, Any], raw: Any, out: dict[str, Any], prefix: str, errors: list[str],
           given: set[str] | None = None) -> None:
    if not isinstance(raw, dict):
        errors.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {raw!r}")
        return
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in schema:
            errors.append(f"{path}: unknown key" + _suggest(path, _paths(SCHEMA)))
            continue
        spec = schema[key]
        try:
            if isinstance(spec, dict):
                _merge(spec, value, out[key], path + ".", errors, given)
            else:
                value = _check_value(path, spec, value)
                # Keyword arguments merge, so --set model.options.width=32 adds one.
                out[key] = {**out[key], **value} if spec.kind == "mapping" and out[key] else value
                if given is not None:
                    given.add(path)
        except ConfigError as e:
            errors.append(str(e))


@dataclass(frozen=True)
class Applies:
    """``keys`` take effect only when ``when(cfg)`` holds: for the variant ``variant(cfg)``
    names, they do nothing. Setting one there to a value other than its default is refused
    (naming the key and the variant), and config.yaml and the config hash leave it out."""

    keys: tuple[str, ...]
    when: Callable[[dict[str, Any]], bool]
    variant: Callable[[dict[str, Any]], str]
    needs: str


def _is(path: str, *values: Any) -> Callable[[dict[str, Any]], bool]:
    section, key = path.split(".")
    return lambda cfg: cfg[section][key] in values


def _named(path: str) -> Callable[[dict[str, Any]], str]:
    section, key = path.split(".")
    return lambda cfg: f"{path}: {cfg[section][key]}"


def _schedules(cfg: dict[str, Any]) -> set[str]:
    s = cfg["schedule"]
    return {s["name"], s["after"]} if s["name"] == "warmup" else {s["name"]}


_SCHEDULE = lambda cfg: "schedule.name: " + " then ".join(  # noqa: E731
    [cfg["schedule"]["name"]] + ([cfg["schedule"]["after"]] if cfg["schedule"]["name"] == "warmup" else []))
_FILES = ("npz", "csv", "idx", "conll")

APPLIES: tuple[Applies, ...] = (
    Applies(("model.sizes", "model.output_activation", "model.dropout"), _is("model.type", "mlp"),
            _named("model.type"), "model.type: mlp"),
    Applies(("model.activation", "model.init"), _is("model.type", "mlp", "window", "sequential"),
            _named("model.type"), "a built-in model.type"),
    Applies(("model.embed_dim", "model.hidden", "model.embeddings", "model.freeze_embeddings"),
            _is("model.type", "window"), _named("model.type"), "model.type: window"),
    Applies(("model.window",), lambda c: c["model"]["type"] == "window" or c["data"]["name"] == "conll",
            lambda c: f"model.type: {c['model']['type']} on data.name: {c['data']['name']}",
            "the window model or CoNLL data"),
    Applies(("model.layers",), _is("model.type", "sequential"), _named("model.type"), "model.type: sequential"),
    Applies(("model.factory", "model.options"), _is("model.type", "custom"), _named("model.type"),
            "model.type: custom"),
    Applies(("model.margin",), _is("model.loss", "multi_margin"), _named("model.loss"), "model.loss: multi_margin"),
    Applies(("data.path",), _is("data.name", *_FILES), _named("data.name"), "a data set read from a file"),
    Applies(("data.labels",), _is("data.name", "idx"), _named("data.name"), "data.name: idx"),
    Applies(("data.label", "data.delimiter"), _is("data.name", "csv"), _named("data.name"), "data.name: csv"),
    Applies(("data.x_key", "data.y_key"), _is("data.name", "npz"), _named("data.name"), "data.name: npz"),
    Applies(("data.task",), _is("data.name", "npz", "csv"), _named("data.name"), "data.name: npz or csv"),
    Applies(("data.kind", "data.samples", "data.classes", "data.noise"), _is("data.name", "synthetic"),
            _named("data.name"), "data.name: synthetic"),
    Applies(("data.features",), lambda c: c["data"]["name"] == "synthetic" and c["data"]["kind"] != "spirals",
            lambda c: f"data.name: {c['data']['name']}, data.kind: {c['data']['kind']}",
            "synthetic blobs or regression"),
    Applies(("data.preprocess",), lambda c: c["data"]["name"] not in ("conll", "custom"), _named("data.name"),
            "numeric features loaded by distbp"),
    Applies(("data.whiten_eps",), _is("data.preprocess", "whiten"), _named("data.preprocess"),
            "data.preprocess: whiten"),
    Applies(("data.min_count",), _is("data.name", "conll"), _named("data.name"), "data.name: conll"),
    Applies(("data.test_labels",), _is("data.name", "idx"), _named("data.name"), "data.name: idx"),
    Applies(("data.stratify",), lambda c: c["data"]["name"] not in ("conll", "custom"), _named("data.name"),
            "classification data read by distbp (CoNLL is split by sentence)"),
    Applies(("data.factory", "data.options"), _is("data.name", "custom"), _named("data.name"), "data.name: custom"),
    Applies(("optimizer.momentum", "optimizer.dampening", "optimizer.nesterov"),
            _is("optimizer.name", "sgd", "momentum"), _named("optimizer.name"), "optimizer.name: sgd or momentum"),
    Applies(("optimizer.betas",), _is("optimizer.name", "adam", "adamw"), _named("optimizer.name"),
            "optimizer.name: adam or adamw"),
    Applies(("optimizer.eps",), _is("optimizer.name", "adagrad", "rmsprop", "adam", "adamw"),
            _named("optimizer.name"), "an adaptive optimizer"),
    Applies(("optimizer.alpha",), _is("optimizer.name", "rmsprop"), _named("optimizer.name"),
            "optimizer.name: rmsprop"),
    Applies(("schedule.step_size", "schedule.gamma"), lambda c: "step" in _schedules(c), _SCHEDULE,
            "the step schedule"),
    Applies(("schedule.tau",), lambda c: "annealing" in _schedules(c), _SCHEDULE, "the annealing schedule"),
    Applies(("schedule.t_max", "schedule.eta_min"), lambda c: "cosine" in _schedules(c), _SCHEDULE,
            "the cosine schedule"),
    Applies(("schedule.warmup_steps", "schedule.after"), _is("schedule.name", "warmup"), _named("schedule.name"),
            "schedule.name: warmup"),
    Applies(("comm.role", "comm.endpoint", "comm.workers", "comm.heartbeat_s", "comm.timeout_s",
             "comm.join_timeout_s", "comm.curve"), _is("comm.backend", "zmq"), _named("comm.backend"),
            "comm.backend: zmq"),
    Applies(("comm.overlap", "comm.bucket_mb"), _is("comm.backend", "auto", "mpi"), _named("comm.backend"),
            "comm.backend: mpi (or auto under mpirun)"),
)


def inapplicable(cfg: dict[str, Any]) -> set[str]:
    """The dotted keys that take no effect in ``cfg`` (see ``APPLIES``)."""
    return {k for rule in APPLIES if not rule.when(cfg) for k in rule.keys}


def _field(path: str) -> Field:
    node: Any = SCHEMA
    for part in path.split("."):
        node = node[part]
    return node


def _get(cfg: dict[str, Any], path: str) -> Any:
    section, _, key = path.partition(".")
    return cfg[section][key] if key else cfg[section]


def _applicability(cfg: dict[str, Any], given: set[str]) -> list[str]:
    errors = []
    for rule in APPLIES:
        if rule.when(cfg):
            continue
        for key in rule.keys:
            if key in given and _get(cfg, key) != _field(key).default:
                errors.append(f"{key}: has no effect with {rule.variant(cfg)}; it applies to {rule.needs} "
                              "(remove the key, or choose that variant)")
    return errors


def _fill_variant_defaults(cfg: dict[str, Any]) -> list[str]:
    """Defaults that depend on the variant, and torch's rules across keys."""
    o = cfg["optimizer"]
    if o["name"] in ("sgd", "momentum") and o["momentum"] is None:
        o["momentum"] = 0.9 if o["name"] == "momentum" else 0.0  # torch.optim.SGD's default is 0
    if o["name"] in ("sgd", "momentum") and o["nesterov"] and (o["momentum"] <= 0 or o["dampening"] != 0):
        return [f"optimizer.nesterov: Nesterov momentum needs optimizer.momentum > 0 and optimizer.dampening 0 "
                f"(as torch.optim.SGD), got momentum {o['momentum']} and dampening {o['dampening']}"]
    return []


def _where(path: str) -> str:
    """A missing path as the message shows it: a relative one with the directory it was
    resolved against."""
    return path if Path(path).is_absolute() else f"{path} (relative to the working directory {Path.cwd()})"


def _cross_checks(cfg: dict[str, Any]) -> list[str]:
    errors = []
    data, model = cfg["data"], cfg["model"]
    if data["name"] in ("npz", "csv", "idx", "conll"):
        if not data["path"]:
            errors.append(f"data.path: the {data['name']} data set needs a file path")
        elif not Path(data["path"]).is_file():
            errors.append(f"data.path: no such file: {_where(data['path'])}")
    if data["name"] == "idx" and data["labels"] and not Path(data["labels"]).is_file():
        errors.append(f"data.labels: no such file: {_where(data['labels'])}")
    if data["name"] == "idx" and not data["labels"]:
        errors.append("data.labels: the idx data set needs the path of its label file")
    if (model["type"] == "window" and data["name"] != "conll") or (model["type"] == "mlp" and data["name"] == "conll"):
        errors.append(f"model.type: {model['type']!r} does not fit data.name {data['name']!r}; "
                      "the window model reads CoNLL text, and an MLP reads numeric features")
    if len(model["sizes"]) < 2 and model["type"] == "mlp":
        errors.append(f"model.sizes: an MLP needs at least an input and an output size, got {model['sizes']}")
    for section, kind, key in (("model", "custom", "factory"), ("data", "custom", "factory"),
                               ("model", "sequential", "layers")):
        node = cfg[section]
        if node["name" if section == "data" else "type"] == kind and not node[key]:
            what = "pkg.module:function" if key == "factory" else "a list of layers"
            errors.append(f"{section}.{key}: {section}.{'name' if section == 'data' else 'type'} {kind} needs {what}")
    regression = (data["name"] in ("npz", "csv") and data["task"] == "regression") or \
        (data["name"] == "synthetic" and data["kind"] == "regression")
    errors += _metric_checks(cfg, regression)
    if model["embeddings"] and not Path(model["embeddings"]).is_file():
        errors.append(f"model.embeddings: no such file: {_where(model['embeddings'])}")
    if model["freeze_embeddings"] and not model["embeddings"]:
        errors.append("model.freeze_embeddings: freezes pretrained vectors; set model.embeddings to their file")
    if data["test_path"] and data["test_fraction"]:
        errors.append("data.test_path: give a test file or data.test_fraction, not both")
    if data["test_path"] and not Path(data["test_path"]).is_file():
        errors.append(f"data.test_path: no such file: {_where(data['test_path'])}")
    if data["val_fraction"] + data["test_fraction"] >= 1:
        errors.append(f"data.test_fraction: {data['test_fraction']} with data.val_fraction {data['val_fraction']} "
                      "leaves nothing for training")
    if regression and model["loss"] in ("cross_entropy", "multi_margin"):
        errors.append(f"model.loss: {model['loss']!r} needs class labels; a regression task uses mse")
    return errors


def _metric_checks(cfg: dict[str, Any], regression: bool) -> list[str]:
    """train.metrics must fit the task; early_stopping must be well formed."""
    errors = []
    conll = cfg["data"]["name"] == "conll"
    fits = {"mse": regression, "mae": regression, "r2": regression, "entity_f1": conll,
            "entity_precision": conll, "entity_recall": conll}
    for name in cfg["train"]["metrics"]:
        if not fits.get(name, not regression):
            task = "CoNLL data" if name.startswith("entity") else "regression" if name in ("mse", "mae", "r2") \
                else "classification"
            errors.append(f"train.metrics: {name} needs {task}")
    es = cfg["train"]["early_stopping"]
    if es:
        unknown = sorted(set(es) - {"metric", "patience", "mode"})
        if unknown:
            errors.append(f"train.early_stopping: unknown key {unknown[0]!r}; it takes metric, patience and mode")
        if not isinstance(es.get("metric"), str):
            errors.append(f"train.early_stopping.metric: expected the name of a metric, got {es.get('metric')!r}")
        patience = es.get("patience", 5)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            errors.append(f"train.early_stopping.patience: expected a positive integer, got {patience!r}")
        if es.get("mode", "auto") not in ("auto", "min", "max"):
            errors.append(f"train.early_stopping.mode: {es.get('mode')!r} is not one of auto, min, max")
    # Whether early_stopping.metric and keep_best name a metric the run computes is checked by
    # the Trainer, which also knows the metrics passed to it as functions.
    return errors


def better(metric: str, mode: str = "auto") -> Callable[[float, float], bool]:
    """``better(new, best)`` for ``metric``: lower for losses and errors, else higher."""
    lower = mode == "min" or (mode == "auto" and metric in LOWER_IS_BETTER)
    return (lambda new, best: new < best) if lower else (lambda new, best: new > best)


def resolve(raw: dict[str, Any] | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Defaults, then ``raw`` (a parsed YAML mapping), then ``key.path=value`` overrides
    (values parsed as YAML). Every problem is collected and raised as one ConfigError,
    including a key set to a value that has no effect for the chosen variant (``APPLIES``)."""
    cfg = defaults()
    errors: list[str] = []
    given: set[str] = set()
    if raw is not None:
        _merge(SCHEMA, raw, cfg, "", errors, given)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            errors.append(f"--set {item!r}: expected key.path=value")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            errors.append(f"--set {key}: cannot parse {text!r} as a YAML value ({e.problem})")
            continue
        nested: Any = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        _merge(SCHEMA, nested, cfg, "", errors, given)
    if not errors:
        errors = _fill_variant_defaults(cfg) + _applicability(cfg, given) + _cross_checks(cfg)
    if errors:
        raise ConfigError("\n".join(errors))
    return cfg


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a YAML config (safe_load only) and resolve it; ``None`` gives the default config."""
    raw = None
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config: no such file: {p}")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{p}:{mark.line + 1}" if mark else str(p)
            raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if raw is None:
            raw = {}
    return resolve(raw, overrides)


def effective(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` without the keys that take no effect in it (what config.yaml records)."""
    out = copy.deepcopy(cfg)
    for path in inapplicable(cfg):
        section, key = path.split(".")
        out[section].pop(key, None)
    return out


def config_hash(cfg: dict[str, Any], extra: Any = None) -> str:
    """A short hash of everything that changes the numbers a run computes (not run_dir,
    checkpoint or logging cadence, nor epochs/max_steps: a resumed run may extend them; nor
    keys that take no effect). ``extra`` (JSON) stands for what the config does not describe,
    such as a model passed to the Trainer as an object."""
    semantic = effective(cfg)
    for path in _ADDED_LATER:  # at their default, as before they existed: older runs still resume
        node, key = path.split(".")
        if semantic.get(node, {}).get(key, 0) is None:
            semantic[node].pop(key)
    for path in _HASH_EXCLUDED:
        node, *rest = path.split(".")
        if rest:
            semantic.get(node, {}).pop(rest[0], None)
        else:
            semantic.pop(node, None)
    if extra is not None:
        semantic["__objects__"] = extra
    blob = json.dumps(semantic, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dump(cfg: dict[str, Any], replaced: Iterable[str] = ()) -> str:
    """The resolved config as YAML, keys in schema order, only the keys that take effect;
    without the dotted keys ``replaced`` (what objects passed to the Trainer stand in for)."""
    out = effective(cfg)
    for path in replaced:
        section, _, key = path.partition(".")
        if key:
            out.get(section, {}).pop(key, None)
            if out.get(section) == {}:
                out.pop(section)
        else:
            out.pop(section, None)
    return yaml.safe_dump(out, sort_keys=False, default_flow_style=False)


def semantic_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs, as "key: a -> b",
    leaving out the keys the config hash ignores."""
    out = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        if path in _HASH_EXCLUDED:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(semantic_diff(va, vb, path + "."))
        elif va != vb:
            out.append(f"{path}: {va!r} -> {vb!r}")
    return out
