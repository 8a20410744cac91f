"""The YAML config schema: defaults for every key, and validation that names the
key's dotted path and suggests the nearest known key or value."""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml

from ..comm import BACKENDS
from ..data import DATASETS, PREPROCESS_KINDS, SYNTHETIC_KINDS
from ..errors import EXIT_USAGE, DistbpError
from ..nn import ACTIVATIONS
from .registry import AFTER_WARMUP, INITS, LOSSES, OPTIMIZERS, SCHEDULES, users


class ConfigError(DistbpError, ValueError):
    """A bad config file, key, value or command-line override (exit code 2); every rank
    reads the same config, so all raise it together."""

    exit_code, collective = EXIT_USAGE, True

    def __init__(self, message: Any = "") -> None:
        super().__init__(_bounded(str(message)))


class LocalConfigError(ConfigError):
    """Bad input that only this process sees: a run directory it cannot write, a config that
    does not fit in this machine's memory. Not collective (another host may see otherwise),
    so under mpirun it ends the whole job at once instead of leaving the peers waiting."""

    collective = False


class RunDirError(LocalConfigError):
    """A run directory this process cannot create or write (read-only, under a file, not
    permitted): exit code 2, as for any bad --run-dir or run_dir, and never a raw errno."""


# -- messages that stay small ------------------------------------------------------------------
# Every value a config error echoes goes through _show: at most SHOW_CHARS characters, and
# reprlib never walks more than a few levels and items of a structure, so even a value that
# expands to millions of nodes costs nothing to show. _bounded is the net under that: no
# ConfigError message has more than MAX_ERROR_LINES lines of MAX_LINE_CHARS characters.
SHOW_CHARS = 200
MAX_ERROR_LINES, MAX_LINE_CHARS = 20, 1000
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 4, SHOW_CHARS, SHOW_CHARS, SHOW_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 20


def _clip(text: str, limit: int = SHOW_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _show(value: Any) -> str:
    """``repr(value)`` as a message echoes it: short values exactly, long ones cut."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a broken __repr__ of an object passed in must not hide the error
        text = f"<{type(value).__name__}>"
    return _clip(text)


def _bounded(message: str) -> str:
    lines = message.split("\n")
    more = len(lines) - MAX_ERROR_LINES
    lines = [_clip(line, MAX_LINE_CHARS) for line in lines[:MAX_ERROR_LINES]]
    if more > 0:
        lines.append(f"... and {more} more")
    return "\n".join(lines)


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
    nonempty: bool = False  # a string that must not be empty (nor only spaces)


AUTO = "auto"
# "pkg.module:function", the form of model.factory, data.factory and a model.loss of your own.
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

# What train.metrics may name (computed by distbp.metrics on the validation split); lower is
# better for the losses and errors, higher for the rest.
METRIC_NAMES = ("accuracy", "macro_f1", "weighted_f1", "entity_f1", "entity_precision", "entity_recall",
                "mse", "mae", "r2")
LOWER_IS_BETTER = {"val_loss", "mse", "mae"}

SCHEMA: dict[str, Any] = {
    "seed": Field("int", 0, min=0),
    "model": {
        "type": Field("str", "mlp", choices=("mlp", "window", "sequential", "custom")),
        "sizes": Field("size_list", [64, 256, 10], min=1),
        "layers": Field("list", None, nullable=True),
        "factory": Field("import_path", None, nullable=True),
        "options": Field("mapping", {}),
        "activation": Field("str", "relu", choices=tuple(ACTIVATIONS)),
        "output_activation": Field("str", "none", choices=("none", "sigmoid")),
        "dropout": Field("float", 0.0, min=0.0, max=1.0, max_open=True),
        "init": Field("str", "xavier_uniform", choices=tuple(INITS)),
        "loss": Field("str", "cross_entropy", choices=tuple(LOSSES), factory=True),
        "margin": Field("float", 1.0, min=0.0, min_open=True),
        "embed_dim": Field("int", 50, min=1),
        "window": Field("int", 2, min=0),
        "hidden": Field("int", 100, min=1),
        "embeddings": Field("str", None, nullable=True),
        "freeze_embeddings": Field("bool", False),
    },
    "data": {
        "name": Field("str", "digits", choices=(*DATASETS, "custom")),
        "factory": Field("import_path", None, nullable=True),
        "options": Field("mapping", {}),
        "path": Field("str", None, nullable=True),
        "labels": Field("str", None, nullable=True),
        "label": Field("str_or_int", None, nullable=True),
        "delimiter": Field("str", "auto", choices=("auto", ",", ";", "\t", "|")),
        "x_key": Field("str", "x"),
        "y_key": Field("str", "y"),
        "task": Field("str", "classification", choices=("classification", "regression")),
        "kind": Field("str", "blobs", choices=SYNTHETIC_KINDS),
        "samples": Field("int", 2000, min=2),
        "features": Field("int", 16, min=1),
        "classes": Field("int", 3, min=2),
        "noise": Field("float", 0.5, min=0.0),
        "val_fraction": Field("float", 0.1, min=0.0, max=1.0, max_open=True),
        "test_fraction": Field("float", 0.0, min=0.0, max=1.0, max_open=True),
        "test_path": Field("str", None, nullable=True),
        "test_labels": Field("str", None, nullable=True),
        "stratify": Field("bool", False),
        "preprocess": Field("str", "standardize", choices=PREPROCESS_KINDS),
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
        "name": Field("str", "adam", choices=tuple(OPTIMIZERS)),
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
        "name": Field("str", "constant", choices=tuple(SCHEDULES)),
        "step_size": Field("int", 1000, min=1),
        "gamma": Field("float", 0.1, min=0.0, min_open=True),
        "tau": Field("float", 100.0, min=0.0, min_open=True),
        "t_max": Field("int", None, min=1, nullable=True),
        "eta_min": Field("float", 0.0, min=0.0),
        "warmup_steps": Field("int", 100, min=1),
        "after": Field("str", "constant", choices=AFTER_WARMUP),
    },
    "comm": {
        "backend": Field("str", "auto", choices=BACKENDS),
        "role": Field("str", "worker", choices=("server", "worker")),
        "endpoint": Field("str", "tcp://127.0.0.1:5555"),
        "workers": Field("int", 1, min=1),
        # Elastic parameter server: the job goes on while this many remain (null: all of
        # comm.workers, fail-stop), and admits workers that join mid-run up to max_workers.
        "min_workers": Field("int", None, min=1, nullable=True),
        "max_workers": Field("int", None, min=1, nullable=True),
        # The server's open connections, over which what libzmq queues is capped (null:
        # 2 per comm.max_workers + 16).
        "max_connections": Field("int", None, min=2, nullable=True),
        "heartbeat_s": Field("float", 1.0, min=0.0, min_open=True),
        "timeout_s": Field("float", 10.0, min=0.0, min_open=True),
        "join_timeout_s": Field("float", 60.0, min=0.0, min_open=True),
        "curve": Field("str", None, nullable=True),
        # The server may listen beyond loopback without CURVE only when this says so.
        "insecure": Field("bool", False),
        # A worker whose server goes away tries to rejoin (a restarted server) this long; 0: it exits.
        "reconnect_s": Field("float", 60.0, min=0.0),
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
    # Never "": Path("") is the working directory, where a run would scatter its files.
    "run_dir": Field("str", "runs/digits-mlp", nonempty=True),
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
    match = difflib.get_close_matches(_clip(str(word)).lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean {by_lower[match[0]]}?" if match else ""


def _range_text(f: Field) -> str:
    lo = "" if f.min is None else ("> " if f.min_open else ">= ") + str(f.min)
    hi = "" if f.max is None else ("< " if f.max_open else "<= ") + str(f.max)
    return " and ".join(x for x in (lo, hi) if x)


def _check_number(path: str, f: Field, value: Any, kind: str) -> Any:
    # bool is an int in Python; `epochs: true` is a mistake, not 1.
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected {'an integer' if kind == 'int' else 'a number'}, got {_show(value)}")
    if kind == "float" and isinstance(value, str):
        try:
            value = float(value)  # PyYAML reads 1e-3 (no dot) as a string
        except ValueError:
            pass
    if kind == "int" and not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{path}: expected an integer, got {_show(value)}")
    if kind == "float":
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {_show(value)}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{path}: expected a finite number, got {_show(value)}")
    too_low = f.min is not None and (value <= f.min if f.min_open else value < f.min)
    too_high = f.max is not None and (value >= f.max if f.max_open else value > f.max)
    if too_low or too_high:
        raise ConfigError(f"{path}: {_show(value)} is out of range; it must be {_range_text(f)}")
    return value


def _check_value(path: str, f: Field, value: Any) -> Any:
    if value is None:
        if f.nullable:
            return None
        raise ConfigError(f"{path}: a value is required (default {_show(f.default)})")
    if f.kind in ("int", "float"):
        value = _check_number(path, f, value, f.kind)
    elif f.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_show(value)}")
    elif f.kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_show(value)}")
        if f.nonempty and not value.strip():
            raise ConfigError(f"{path}: must not be empty (the default is {f.default})")
    elif f.kind == "str_or_int":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ConfigError(f"{path}: expected a column name or index, got {_show(value)}")
    elif f.kind in ("int_list", "size_list", "float_list"):
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{path}: expected a non-empty list, got {_show(value)}")
        if f.length is not None and len(value) != f.length:
            raise ConfigError(f"{path}: expected a list of {f.length} values, got {len(value)}")
        item_kind = "int" if f.kind == "size_list" else f.kind.split("_")[0]
        # A size written `auto` is taken from the data (features in, classes out).
        value = [v if f.kind == "size_list" and v == AUTO else _check_number(f"{path}[{i}]", f, v, item_kind)
                 for i, v in enumerate(value)]
    elif f.kind == "str_list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: expected a list of names, got {_show(value)}")
        for v in value:
            if f.choices is not None and v not in f.choices:
                raise ConfigError(f"{path}: {_show(v)} is not one of {', '.join(f.choices)}" + _suggest(v, f.choices))
        return list(value)
    elif f.kind == "import_path":
        if not isinstance(value, str) or not IMPORT_PATH.match(value):
            raise ConfigError(f"{path}: expected pkg.module:function, got {_show(value)}")
    elif f.kind == "mapping":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{path}: expected a mapping of keyword arguments, got {_show(value)}")
        value = copy.deepcopy(value)
    elif f.kind == "list":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{path}: expected a non-empty list, got {_show(value)}")
        value = copy.deepcopy(value)
    if f.factory and isinstance(value, str) and IMPORT_PATH.match(value):
        return value
    if f.choices is not None and value not in f.choices:
        also = " or a function of your own as pkg.module:function" if f.factory else ""
        raise ConfigError(f"{path}: {_show(value)} is not one of {', '.join(map(str, f.choices))}{also}"
                          + _suggest(value, f.choices))
    return value


def _merge(schema: dict[str, Any], raw: Any, out: dict[str, Any], prefix: str, errors: list[str],
           given: set[str] | None = None) -> None:
    if not isinstance(raw, dict):
        errors.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {_show(raw)}")
        return
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in schema:
            # (a suggestion only where the message will show it: thousands of keys stay cheap)
            hint = _suggest(path, _paths(SCHEMA)) if len(errors) < MAX_ERROR_LINES else ""
            errors.append(f"{_clip(path)}: unknown key" + hint)
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

_HAND_APPLIES: tuple[Applies, ...] = (
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
    Applies(("comm.role", "comm.endpoint", "comm.workers", "comm.min_workers", "comm.max_workers",
             "comm.max_connections", "comm.heartbeat_s", "comm.join_timeout_s", "comm.curve", "comm.insecure",
             "comm.reconnect_s"), _is("comm.backend", "zmq"),
            _named("comm.backend"),
            "comm.backend: zmq"),
    Applies(("comm.overlap", "comm.bucket_mb"), _is("comm.backend", "auto", "mpi"), _named("comm.backend"),
            "comm.backend: mpi (or auto under mpirun)"),
    Applies(("comm.timeout_s",), _is("comm.backend", "auto", "mpi", "zmq"), _named("comm.backend"),
            "comm.backend: zmq or mpi (or auto under mpirun)"),
)




def _or(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _registry_applies() -> tuple[Applies, ...]:
    """The optimizer, loss and schedule keys' rules, from the entries that read them (registry.py)."""
    rules = [Applies((f"optimizer.{u.key}",), _is("optimizer.name", *u.choices), _named("optimizer.name"),
                     f"optimizer.name: {_or(u.choices)}") for u in users(OPTIMIZERS)]
    rules += [Applies((f"model.{u.key}",), _is("model.loss", *u.choices), _named("model.loss"),
                      f"model.loss: {_or(u.choices)}") for u in users(LOSSES)]
    for u in users(SCHEDULES):
        if any(SCHEDULES[c].nests for c in u.choices):  # a wrapper's keys: it is only ever schedule.name
            rules.append(Applies((f"schedule.{u.key}",), _is("schedule.name", *u.choices), _named("schedule.name"),
                                 f"schedule.name: {_or(u.choices)}"))
        else:
            rules.append(Applies((f"schedule.{u.key}",), lambda c, u=u: bool(_schedules(c) & set(u.choices)),
                                 _SCHEDULE, f"the {_or(u.choices)} schedule"))
    return tuple(rules)


APPLIES: tuple[Applies, ...] = _HAND_APPLIES + _registry_applies()


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
    return OPTIMIZERS[cfg["optimizer"]["name"]].fill(cfg["optimizer"])


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
        errors.append(f"model.type: {_show(model['type'])} does not fit data.name {_show(data['name'])}; "
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
    c = cfg["comm"]  # the server's keys (a worker's comm.workers says nothing: the server assigns its rank)
    if c["role"] == "server" and c["min_workers"] is not None and c["min_workers"] > c["workers"]:
        errors.append(f"comm.min_workers: {c['min_workers']} is more than comm.workers ({c['workers']}), the "
                      "workers the job starts with")
    if c["role"] == "server" and c["max_workers"] is not None and c["max_workers"] < c["workers"]:
        errors.append(f"comm.max_workers: {c['max_workers']} is fewer than comm.workers ({c['workers']})")
    most = c["max_workers"] or c["workers"]
    if c["role"] == "server" and c["max_connections"] is not None and c["max_connections"] < 2 * most:
        errors.append(f"comm.max_connections: {c['max_connections']} is fewer than the {2 * most} that "
                      f"{most} worker(s) open (two each: its socket and its heartbeats')")
    if regression and model["loss"] in ("cross_entropy", "multi_margin"):
        errors.append(f"model.loss: {_show(model['loss'])} needs class labels; a regression task uses mse")
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
            errors.append(f"train.early_stopping: unknown key {_show(unknown[0])}; it takes metric, patience and mode")
        if not isinstance(es.get("metric"), str):
            errors.append(f"train.early_stopping.metric: expected the name of a metric, got {_show(es.get('metric'))}")
        patience = es.get("patience", 5)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            errors.append(f"train.early_stopping.patience: expected a positive integer, got {_show(patience)}")
        if es.get("mode", "auto") not in ("auto", "min", "max"):
            errors.append(f"train.early_stopping.mode: {_show(es.get('mode'))} is not one of auto, min, max")
    # Whether early_stopping.metric and keep_best name a metric the run computes is checked by
    # the Trainer, which also knows the metrics passed to it as functions.
    return errors


# -- sizes that fit in memory --------------------------------------------------------------------
# model.sizes=[64, 2000000000, 10] would ask numpy for a terabyte and end in a MemoryError (or
# the OOM killer) after the data has loaded. The sizes are known before anything is allocated,
# so a model or a synthetic data set that cannot fit is refused first, naming the key. The
# estimates are lower bounds of what the run holds at once (so nothing that fits is refused);
# the limit is this machine's available memory, so the error is LocalConfigError.
_PARAM_BYTES = 4  # float32 parameters, gradients and optimizer state
_INIT_BYTES = 16  # a layer is initialized through two float64 temporaries of its size
_DATA_BYTES = 28  # per synthetic feature value: float64 draws, their sum, the float32 copy


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable plus free swap, and no more than
    the cgroup's limit leaves (a container); None where neither can be read."""
    found = []
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        found.append((int(info["MemAvailable"].split()[0]) + int(info.get("SwapFree", "0 kB").split()[0])) * 1024)
    except (OSError, KeyError, ValueError):
        try:
            found.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (OSError, ValueError, AttributeError):
            pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, min(found)) if found else None


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def _refuse_if_too_big(key: str, need: int, what: str) -> None:
    avail = available_memory()
    if avail is not None and need > avail:
        raise LocalConfigError(f"{key}: {what} needs at least {_gib(need)} ({need:,} bytes) of memory, more than "
                               f"the {_gib(avail)} available here")


def _state_slots(cfg: dict[str, Any]) -> int:
    return OPTIMIZERS[cfg["optimizer"]["name"]].state_slots(cfg["optimizer"])


def check_model_memory(cfg: dict[str, Any], key: str, tensors: Iterable[int]) -> None:
    """Refuse, naming ``key``, a model of parameter tensors of ``tensors`` elements whose
    parameters, gradients and optimizer state (with the largest tensor's float64
    initialization) do not fit in this machine's memory. Call before building it."""
    sizes = [int(n) for n in tensors]
    if not sizes:
        return
    count = sum(sizes)
    need = count * _PARAM_BYTES * (2 + _state_slots(cfg)) + max(sizes) * _INIT_BYTES
    _refuse_if_too_big(key, need, f"a model of {count:,} parameters (with gradients and "
                                  f"{cfg['optimizer']['name']}'s state)")


def mlp_tensors(sizes: Sequence[int]) -> list[int]:
    """The parameter tensors' sizes of an MLP of ``sizes``: a weight and a bias per layer."""
    out = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        out += [int(n_in) * int(n_out), int(n_out)]
    return out


def check_memory(cfg: dict[str, Any]) -> None:
    """What the resolved config alone says must fit in memory, checked before any data is
    read: the synthetic data set, and an MLP whose sizes are all given (``auto`` ones are
    checked when the model is built)."""
    data, model = cfg["data"], cfg["model"]
    if data["name"] == "synthetic":
        features = 2 if data["kind"] == "spirals" else data["features"]
        need = data["samples"] * features * _DATA_BYTES + data["classes"] * features * 8 + data["samples"] * 16
        key = "data.samples" if data["samples"] >= features else "data.features"
        _refuse_if_too_big(key, need, f"a synthetic data set of {data['samples']:,} samples of {features:,} features")
    if model["type"] == "mlp" and AUTO not in model["sizes"]:
        check_model_memory(cfg, "model.sizes", mlp_tensors(model["sizes"]))


# -- the run directory ---------------------------------------------------------------------------
def run_dir_path(value: str | Path, what: str = "run_dir") -> Path:
    """``value`` as a run directory; an empty one is refused (Path("") is the working
    directory, where a run would scatter its files among the user's)."""
    if not str(value).strip():
        raise ConfigError(f"{what}: an empty path, which would mean the working directory; give a directory "
                          f"(the default is {_field('run_dir').default})")
    return Path(value)


def check_run_dir(path: str | Path) -> None:
    """Refuse, before anything is computed, a run directory that cannot be created or
    written, in one sentence naming it and why. Creates and writes nothing: the nearest part
    of the path that exists must be a directory this process may write."""
    target = Path(os.path.abspath(path))
    probe = target
    try:
        while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
            probe = probe.parent
        if probe.is_symlink() and not probe.exists():
            reason = f"{probe} is a symbolic link to nothing"
        elif not probe.is_dir():
            reason = "it is a file, not a directory" if probe == target else \
                f"it cannot be created, since {probe} is a file"
        elif not os.access(probe, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            readonly = bool(os.statvfs(probe).f_flag & getattr(os, "ST_RDONLY", 1))
            where = "it" if probe == target else probe
            reason = f"{where} is on a read-only file system" if readonly else \
                f"{where} is not writable by this user (permission denied)"
        else:
            return
    except OSError as e:
        reason = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    raise RunDirError(f"run directory {path}: cannot write there: {reason}")


def run_dir_error(path: str | Path, e: OSError) -> RunDirError:
    """The error for an OSError met writing the run directory ``path``: one sentence, no errno."""
    where = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
    return RunDirError(f"run directory {path}: cannot write there: {e.strerror or e}{where}")


def better(metric: str, mode: str = "auto") -> Callable[[float, float], bool]:
    """``better(new, best)`` for ``metric``: lower for losses and errors, else higher."""
    lower = mode == "min" or (mode == "auto" and metric in LOWER_IS_BETTER)
    return (lambda new, best: new < best) if lower else (lambda new, best: new > best)


# -- reading YAML that cannot hurt -------------------------------------------------------------
# A config is a few dozen nodes (the largest in configs/ has 63, nested 6 deep) and a few
# kilobytes. The limits are far above any real config and far below harm:
# - MAX_CONFIG_BYTES: read no more than this from a --config file (a device or /proc file
#   never ends) or from one --set value.
# - MAX_DEPTH: PyYAML composes nested collections recursively; 3,000 levels reach Python's
#   recursion limit, and nothing in the schema is nested more than a few levels.
# - MAX_NODES, MAX_CHARS: anchors and aliases stay allowed (sharing a block with
#   `<<: *defaults` is ordinary YAML), but every alias counts the whole subtree it stands
#   for, nodes and characters. A "billion laughs" file of 300 bytes expands to millions of
#   nodes: safe_load shares them lazily, but anything that walks the result (an error
#   message's repr, the config hash's JSON, a deepcopy) pays for all of them. 10,000
#   expanded nodes is ~150 times the largest real config; MAX_CHARS, the file cap, means
#   aliases never make the text larger than a file we would read without them. So any walk
#   of a config costs at most about a megabyte. A recursive alias (a node that contains
#   itself) is refused outright: nothing in a config is recursive, and JSON cannot hash it.
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 50
MAX_NODES = 10_000
MAX_CHARS = MAX_CONFIG_BYTES
_TYPED_SCALARS = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_STR_TAG = "tag:yaml.org,2002:str"


class _Refused(yaml.YAMLError):
    """Input past one of the limits: ``problem`` says which, ``problem_mark`` where."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts, while composing, how deep the input nests and how many nodes it
    expands to (an alias counts as the subtree it repeats), and stops past MAX_DEPTH or
    MAX_NODES before anything is constructed."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = self._chars = 0  # so far, every alias counted as what it repeats
        self._weights: dict[int, tuple[int, int]] = {}  # id(anchored node) -> its (nodes, chars), once complete

    def _count(self, nodes: int, chars: int, mark: Any) -> None:
        self._nodes += nodes
        self._chars += chars
        if self._nodes > MAX_NODES:
            raise _Refused(f"it expands to more than {MAX_NODES:,} values (aliases count the values they "
                           "repeat); a config needs far fewer", mark)
        if self._chars > MAX_CHARS:
            raise _Refused(f"its aliases expand it to more than {MAX_CHARS // 2**20} MiB of text", mark)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            weight = self._weights.get(id(node))
            if weight is None:  # defined but not complete: the alias is inside its own anchor
                raise _Refused(f"the alias *{_clip(str(event.anchor), 40)} is inside the node it refers to "
                               "(a recursive structure)", event.start_mark)
            self._count(*weight, event.start_mark)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"it nests more than {MAX_DEPTH} levels deep", event.start_mark)
        before = self._nodes, self._chars
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0, event.start_mark)
        if event.anchor is not None:
            self._weights[id(node)] = (self._nodes - before[0], self._chars - before[1])
        return node


def _strings_where_expected(node: Any, spec: Any, loader: _BoundedLoader) -> None:
    """Retag the plain scalars that YAML 1.1 would read as booleans or numbers (off, yes, 1.50)
    as strings where the schema expects a string, keeping the text as written: `progress: off`
    is the string "off", and the schema then says whether that is a valid choice."""
    if isinstance(spec, dict):
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)  # `<<: *base` merges first, so merged keys count too
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and isinstance(key.value, str) and key.value in spec:
                    _strings_where_expected(value, spec[key.value], loader)
    elif isinstance(spec, Field):
        items = [node] if spec.kind == "str" else node.value if spec.kind == "str_list" and \
            isinstance(node, yaml.SequenceNode) else []
        for item in items:
            if isinstance(item, yaml.ScalarNode) and item.style is None and item.tag in _TYPED_SCALARS:
                item.tag = _STR_TAG


def parse_yaml(text: str, spec: Any = None) -> Any:
    """``text`` as YAML (the safe subset), within MAX_DEPTH and MAX_NODES; ``spec`` (a schema
    section or Field) says where strings are expected. Raises yaml.YAMLError, with ``problem``
    and ``problem_mark``, for invalid YAML and for input past a limit."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if spec is not None:
            _strings_where_expected(node, spec, loader)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _yaml_problem(e: yaml.YAMLError) -> str:
    return _clip(str(getattr(e, "problem", None) or e))


def read_yaml_file(path: str | Path, what: str = "--config", spec: Any = SCHEMA) -> Any:
    """A YAML file as a config reads it: at most MAX_CONFIG_BYTES, UTF-8 text (not a binary
    file), within the limits of ``parse_yaml``; every problem a ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what}: no such file: {p}")
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {p} ({e.strerror or e})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_CONFIG_BYTES // 2**20} MiB; a config is a few kilobytes "
                          "of YAML (is this the right file?)")
    nul = data.find(b"\0")
    if nul >= 0:
        raise ConfigError(f"{p}: a binary file (a NUL byte at offset {nul}), not a YAML config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}), "
                          "so not a YAML config") from None
    try:
        return parse_yaml(text, spec)
    except _Refused as e:
        mark = e.problem_mark
        raise ConfigError(f"{p}:{mark.line + 1}: refused: {e.problem}" if mark else f"{p}: refused: {e.problem}") \
            from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ConfigError(f"{where}: not valid YAML ({_yaml_problem(e)})") from None


def _parse_override(key: str, text: str) -> Any:
    """The value of ``--set key=text``, parsed as read_yaml_file parses a file."""
    if len(text.encode("utf-8", "surrogateescape")) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--set {_clip(key)}: the value is larger than {MAX_CONFIG_BYTES // 2**20} MiB")
    node: Any = SCHEMA
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    try:
        return parse_yaml(text, node) if text.strip() else None
    except _Refused as e:
        raise ConfigError(f"--set {_clip(key)}: refused: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {_clip(key)}: cannot parse {_show(text)} as a YAML value ({_yaml_problem(e)})") \
            from None


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
            errors.append(f"--set {_show(item)}: expected key.path=value")
            continue
        try:
            value = _parse_override(key.strip(), text)
        except ConfigError as e:
            errors.append(str(e))
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
    """Read a YAML config (the safe subset, within the limits of ``read_yaml_file``) and
    resolve it; ``None`` gives the default config."""
    raw = None
    if path is not None:
        raw = read_yaml_file(path)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys (model:, data:, ...), got {_show(raw)}")
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
            out.append(f"{path}: {_show(va)} -> {_show(vb)}")
    return out
