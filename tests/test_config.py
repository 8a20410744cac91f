"""The config schema: defaults, validation with dotted paths and suggestions,
--set overrides parsed as YAML, every error reported at once, and the config hash."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from distbp.train import config as C
from distbp.train.config import SCHEMA, ConfigError, Field, config_hash, defaults, dump, load_config, resolve

REPO = Path(__file__).resolve().parents[1]


def _fields(schema: dict[str, Any] = SCHEMA, prefix: str = "") -> list[tuple[str, Field]]:
    out = []
    for key, spec in schema.items():
        path = f"{prefix}{key}"
        if isinstance(spec, dict):
            out.extend(_fields(spec, path + "."))
        else:
            out.append((path, spec))
    return out


FIELDS = _fields()


def _nested(path: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


NER = str(REPO / "configs" / "data" / "ner-small.conll")
# The variant each key takes effect in (config.APPLIES): a key set elsewhere is refused.
_CONTEXT = {
    "model.margin": {"model": {"loss": "multi_margin"}},
    "model.layers": {"model": {"type": "sequential"}},
    "data.whiten_eps": {"data": {"preprocess": "whiten"}},
    "optimizer.momentum": {"optimizer": {"name": "sgd"}}, "optimizer.dampening": {"optimizer": {"name": "sgd"}},
    "optimizer.nesterov": {"optimizer": {"name": "momentum"}},
    "optimizer.alpha": {"optimizer": {"name": "rmsprop"}},
    "schedule.step_size": {"schedule": {"name": "step"}}, "schedule.gamma": {"schedule": {"name": "step"}},
    "schedule.tau": {"schedule": {"name": "annealing"}}, "schedule.t_max": {"schedule": {"name": "cosine"}},
    "schedule.eta_min": {"schedule": {"name": "cosine"}},
}
for _k in ("embed_dim", "window", "hidden"):
    _CONTEXT[f"model.{_k}"] = {"model": {"type": "window"}, "data": {"name": "conll", "path": NER}}
for _k in ("kind", "samples", "features", "classes", "noise"):
    _CONTEXT[f"data.{_k}"] = {"data": {"name": "synthetic"}, "model": {"sizes": [16, 8, 3]}}
for _k in ("warmup_steps", "after"):
    _CONTEXT[f"schedule.{_k}"] = {"schedule": {"name": "warmup"}}
for _k in ("role", "endpoint", "workers", "min_workers", "max_workers", "max_connections", "heartbeat_s", "timeout_s",
           "join_timeout_s", "curve", "reconnect_s"):
    _CONTEXT[f"comm.{_k}"] = {"comm": {"backend": "zmq"}}


def _in_context(path: str, value: Any) -> dict[str, Any]:
    """``{path: value}`` in a config where ``path`` takes effect."""
    out = copy.deepcopy(_CONTEXT.get(path, {}))
    node = out
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return out


def _error(raw: Any = None, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(raw, overrides)
    return str(info.value)


# -- defaults -----------------------------------------------------------------------------------

def test_defaults_resolve_to_themselves():
    cfg = resolve()
    assert cfg == defaults()
    assert resolve(copy.deepcopy(defaults())) == defaults()
    # a few values of the documented shape
    assert cfg["model"]["sizes"] == [64, 256, 10]
    assert cfg["data"]["name"] == "digits"
    assert cfg["optimizer"] == {**cfg["optimizer"], "name": "adam", "lr": 0.001, "weight_decay": 0.0}
    assert cfg["train"]["global_batch"] == 128
    assert cfg["checkpoint"] == {"every": 100, "keep": 3, "keep_best": None}


def test_default_yaml_is_the_default_config():
    assert load_config(REPO / "configs" / "default.yaml") == defaults()
    assert load_config(None) == defaults()


def test_every_schema_default_is_valid():
    for path, f in FIELDS:
        if f.default is None:
            continue
        assert resolve(_nested(path, copy.deepcopy(f.default))) == defaults(), path


def test_empty_config_file_is_the_default(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing but a comment\n")
    assert load_config(p) == defaults()


# -- unknown keys ---------------------------------------------------------------------------------

def test_unknown_key_with_suggestion():
    assert _error(overrides=("optimizer.lrr=0.1",)) == "optimizer.lrr: unknown key; did you mean optimizer.lr?"
    assert _error({"optimiser": {"lr": 0.1}}) == "optimiser: unknown key; did you mean optimizer?"
    assert _error({"train": {"global_bacth": 3}}).startswith(
        "train.global_bacth: unknown key; did you mean train.global_batch?")


def test_unknown_key_without_close_match_has_no_suggestion():
    msg = _error({"zzzzqqq": 1})
    assert msg == "zzzzqqq: unknown key"


def test_section_must_be_a_mapping():
    assert _error({"optimizer": 3}) == "optimizer: expected a mapping of keys, got 3"
    assert "expected a mapping" in _error([1, 2])


# -- types and ranges, by hand ------------------------------------------------------------------

@pytest.mark.parametrize("override, expected", [
    ("train.global_batch=abc", "train.global_batch: expected an integer, got 'abc'"),
    ("train.global_batch=true", "train.global_batch: expected an integer, got True"),
    ("train.global_batch=[1, 2]", "train.global_batch: expected an integer, got [1, 2]"),
    ("train.epochs=2.5", "train.epochs: expected an integer, got 2.5"),
    ("optimizer.lr=abc", "optimizer.lr: expected a number, got 'abc'"),
    ("optimizer.lr=[0.1]", "optimizer.lr: expected a number, got [0.1]"),
    ("optimizer.lr=.nan", "optimizer.lr: expected a finite number, got nan"),
    ("optimizer.nesterov=3", "optimizer.nesterov: expected true or false, got 3"),
    ("run_dir=[123]", "run_dir: expected a string, got [123]"),  # a bare 123 is the directory "123"
    ("run_dir=null", "run_dir: a value is required (default 'runs/digits-mlp')"),
    ("model.sizes=64", "model.sizes: expected a non-empty list, got 64"),
    ("model.sizes=[]", "model.sizes: expected a non-empty list, got []"),
    ("model.sizes=[64, 32.5, 10]", "model.sizes[1]: expected an integer, got 32.5"),
    ("model.sizes=[64, 0, 10]", "model.sizes[1]: 0 is out of range; it must be >= 1"),
    ("optimizer.betas=[0.9]", "optimizer.betas: expected a list of 2 values, got 1"),
    ("optimizer.betas=[0.9, 1.0]", "optimizer.betas[1]: 1.0 is out of range; it must be >= 0.0 and < 1.0"),
    ("train.global_batch=-1", "train.global_batch: -1 is out of range; it must be >= 1"),
    ("train.global_batch=0", "train.global_batch: 0 is out of range; it must be >= 1"),
    ("data.val_fraction=1.0", "data.val_fraction: 1.0 is out of range; it must be >= 0.0 and < 1.0"),
    ("model.dropout=1.0", "model.dropout: 1.0 is out of range; it must be >= 0.0 and < 1.0"),
    ("optimizer.lr=0", "optimizer.lr: 0.0 is out of range; it must be > 0.0"),
    ("optimizer.lr=-0.1", "optimizer.lr: -0.1 is out of range; it must be > 0.0"),
    ("seed=-1", "seed: -1 is out of range; it must be >= 0"),
    ("data.label=true", "data.label: expected a column name or index, got True"),
    ("optimizer.name=adamm", "optimizer.name: 'adamm' is not one of sgd, momentum, adagrad, rmsprop, adam, "
                             "adamw; did you mean adam?"),
    ("model.activation=rellu", "model.activation: 'rellu' is not one of relu, tanh, sigmoid, leaky_relu, "
                               "hardtanh, softsign; did you mean relu?"),
])
def test_bad_value(override, expected):
    assert _error(overrides=(override,)) == expected


def test_list_for_a_string_and_a_choice():
    assert _error({"optimizer": {"name": ["adam"]}}) == "optimizer.name: expected a string, got ['adam']"


# -- types and ranges, generated from the schema ----------------------------------------------

def _below_min(f: Field) -> list[Any]:
    if f.min is None:
        return []
    lo = f.min if f.min_open else f.min - 1
    return [int(lo) if f.kind in ("int", "int_list") else float(lo)]


def _above_max(f: Field) -> list[Any]:
    if f.max is None:
        return []
    hi = f.max if f.max_open else f.max + 1
    return [int(hi) if f.kind in ("int", "int_list") else float(hi)]


RANGE_CASES = [(path, f, v) for path, f in FIELDS for v in _below_min(f) + _above_max(f)]
CHOICE_FIELDS = [(path, f) for path, f in FIELDS if f.choices and f.kind != "str_list"]
WRONG_TYPE = {"int": "abc", "float": "abc", "bool": 3, "str": 123, "str_or_int": [1], "str_list": "abc",
              "int_list": "abc", "size_list": "abc", "float_list": "abc", "mapping": [1], "list": "abc", "import_path": 123}


def test_the_schema_has_the_cases_the_generated_tests_need():
    assert len(RANGE_CASES) >= 25
    assert len(CHOICE_FIELDS) >= 10
    assert {f.kind for _, f in FIELDS} <= set(WRONG_TYPE)


@pytest.mark.parametrize("path, f, value", RANGE_CASES, ids=[f"{p}={v}" for p, _, v in RANGE_CASES])
def test_every_out_of_range_value_is_rejected(path, f, value):
    v = [value] * (f.length or 1) if f.kind.endswith("_list") else value
    msg = _error(_nested(path, v))
    assert msg.startswith(path), msg
    assert "out of range" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("path, f", [(p, f) for p, f in FIELDS if f.min is not None],
                         ids=[p for p, f in FIELDS if f.min is not None])
def test_every_minimum_is_accepted(path, f):
    if f.min_open:
        value = f.min + (1 if f.kind in ("int", "int_list") else 1e-3)
    else:
        value = f.min
    value = int(value) if f.kind in ("int", "int_list") else float(value)
    v = [value] * (f.length or 1) if f.kind.endswith("_list") else value
    if path == "model.sizes":
        v = [value, value]
    cfg = resolve(_in_context(path, v))
    node = cfg
    for part in path.split("."):
        node = node[part]
    assert node == v


@pytest.mark.parametrize("path, f", CHOICE_FIELDS, ids=[p for p, _ in CHOICE_FIELDS])
def test_every_choice_field_rejects_a_bogus_value_with_a_suggestion(path, f):
    msg = _error(_nested(path, "bogus-value-xyz"))
    also = " or a function of your own as pkg.module:function" if f.factory else ""
    assert msg == f"{path}: 'bogus-value-xyz' is not one of {', '.join(f.choices)}{also}"
    near = f.choices[0] + "x"
    msg = _error(_nested(path, near))
    assert msg.startswith(f"{path}: {near!r} is not one of ")
    suggestion = msg.rsplit("did you mean ", 1)[1].rstrip("?")
    assert suggestion in f.choices


@pytest.mark.parametrize("path, f", FIELDS, ids=[p for p, _ in FIELDS])
def test_every_field_rejects_the_wrong_type(path, f):
    msg = _error(_nested(path, WRONG_TYPE[f.kind]))
    assert msg.startswith(f"{path}: expected "), msg


@pytest.mark.parametrize("path, f", [(p, f) for p, f in FIELDS if not f.nullable],
                         ids=[p for p, f in FIELDS if not f.nullable])
def test_every_required_field_rejects_null(path, f):
    assert _error(_nested(path, None)) == f"{path}: a value is required (default {f.default!r})"


@pytest.mark.parametrize("path", [p for p, f in FIELDS if f.kind in ("int", "float")])
def test_every_number_rejects_a_bool(path):
    assert _error(_nested(path, True)).startswith(f"{path}: expected ")


# -- --set ----------------------------------------------------------------------------------------

def test_set_values_are_parsed_as_yaml(tmp_path):
    (tmp_path / "d.csv").write_text("a,label\n1,x\n")
    csv = ["data.name=csv", f"data.path={tmp_path / 'd.csv'}"]
    cfg = resolve(None, ["train.epochs=5", "optimizer.lr=0.5", "model.sizes=[64, 32, 10]",
                         "train.max_steps=null", "data.label=label", "run_dir=runs/a=b",
                         "optimizer.betas=[0.8, 0.9]"] + csv)
    assert cfg["train"]["epochs"] == 5 and isinstance(cfg["train"]["epochs"], int)
    assert cfg["optimizer"]["lr"] == 0.5
    assert cfg["model"]["sizes"] == [64, 32, 10]
    assert cfg["train"]["max_steps"] is None
    assert resolve(None, ["optimizer.name=momentum", "optimizer.nesterov=true"])["optimizer"]["nesterov"] is True
    assert cfg["data"]["label"] == "label"
    assert cfg["run_dir"] == "runs/a=b"  # only the first '=' separates key and value
    assert cfg["optimizer"]["betas"] == [0.8, 0.9]
    assert resolve(None, ["data.label=3"] + csv)["data"]["label"] == 3


def test_set_scientific_notation_without_a_dot_is_a_float():
    # PyYAML reads 1e-3 as the string "1e-3"; the schema accepts it for a float.
    cfg = resolve(None, ["optimizer.lr=1e-3", "data.preprocess=whiten", "data.whiten_eps=1e-8"])
    assert cfg["optimizer"]["lr"] == 0.001 and isinstance(cfg["optimizer"]["lr"], float)
    assert cfg["data"]["whiten_eps"] == 1e-8


def test_set_integral_float_for_an_int():
    assert resolve(None, ["train.epochs=2.0"])["train"]["epochs"] == 2


def test_set_overrides_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optimizer: {lr: 0.01}\ntrain: {epochs: 3}\n")
    cfg = load_config(p, ["optimizer.lr=0.2"])
    assert cfg["optimizer"]["lr"] == 0.2 and cfg["train"]["epochs"] == 3


@pytest.mark.parametrize("item, expected", [
    ("optimizer.lr", "--set 'optimizer.lr': expected key.path=value"),
    ("=3", "--set '=3': expected key.path=value"),
])
def test_bad_set_syntax(item, expected):
    assert _error(overrides=(item,)) == expected


def test_set_value_that_is_not_yaml():
    msg = _error(overrides=("optimizer.lr=[1",))
    assert msg.startswith("--set optimizer.lr: cannot parse '[1' as a YAML value")


# -- several errors at once ---------------------------------------------------------------------

def test_several_errors_are_reported_together():
    msg = _error({"train": {"global_batch": -3}, "optimizer": {"name": "adamm"}},
                 ["optimizer.lrr=0.1", "model.dropout=1.5"])
    lines = msg.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("train.global_batch: -3 is out of range")
    assert lines[1].startswith("optimizer.name: 'adamm' is not one of")
    assert lines[2] == "optimizer.lrr: unknown key; did you mean optimizer.lr?"
    assert lines[3].startswith("model.dropout: 1.5 is out of range")


# -- files ----------------------------------------------------------------------------------------

def test_yaml_syntax_error_names_file_and_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("seed: 0\ntrain:\n  epochs: [1, 2\n  global_batch: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}:")
    line = int(msg[len(str(p)) + 1:].split(":", 1)[0])
    assert line in (3, 4)
    assert "not valid YAML" in msg


def test_yaml_tab_indentation_error(tmp_path):
    p = tmp_path / "tabs.yaml"
    p.write_text("train:\n\tepochs: 3\n")
    with pytest.raises(ConfigError, match=rf"^{p}:2: not valid YAML"):
        load_config(p)


def test_yaml_is_read_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^--config: no such file: .*nope\.yaml$"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["npz", "csv", "idx", "conll"])
def test_missing_data_file_names_data_path(tmp_path, name):
    missing = tmp_path / f"missing.{name}"
    overrides = [f"data.name={name}", f"data.path={missing}"]
    if name == "idx":
        overrides.append(f"data.labels={tmp_path / 'labels.idx'}")
    if name == "conll":
        overrides.append("model.type=window")
    lines = _error(overrides=tuple(overrides)).splitlines()
    assert lines[0] == f"data.path: no such file: {missing}"
    if name == "idx":
        assert lines[1] == f"data.labels: no such file: {tmp_path / 'labels.idx'}"


def test_file_data_set_needs_a_path():
    assert _error(overrides=("data.name=csv",)) == "data.path: the csv data set needs a file path"


def test_idx_needs_labels(tmp_path):
    p = tmp_path / "images.idx"
    p.write_bytes(b"")
    msg = _error(overrides=("data.name=idx", f"data.path={p}"))
    assert msg == "data.labels: the idx data set needs the path of its label file"


def test_window_model_needs_conll():
    msg = _error(overrides=("model.type=window",))
    assert msg.startswith("model.type: 'window' does not fit data.name 'digits'")


def test_regression_needs_mse():
    msg = _error(overrides=("data.name=synthetic", "data.kind=regression", "model.sizes=[16, 1]"))
    assert msg == "model.loss: 'cross_entropy' needs class labels; a regression task uses mse"
    resolve(None, ["data.name=synthetic", "data.kind=regression", "model.sizes=[16, 1]", "model.loss=mse"])


def test_mlp_needs_two_sizes():
    assert _error(overrides=("model.sizes=[64]",)).startswith("model.sizes: an MLP needs at least")


# -- dump -------------------------------------------------------------------------------------------

def test_dump_round_trips(tmp_path):
    cfg = resolve(None, ["optimizer.lr=1e-3", "model.sizes=[64, 32, 10]", "schedule.name=step",
                         "schedule.gamma=0.5"])
    p = tmp_path / "c.yaml"
    p.write_text(dump(cfg))
    assert load_config(p) == cfg
    assert list(yaml.safe_load(dump(cfg))) == list(SCHEMA)  # keys in schema order


# -- hash -----------------------------------------------------------------------------------------

def _reordered(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _reordered(d[k]) for k in reversed(list(d))}
    return d


def test_config_hash_is_stable():
    cfg = defaults()
    h = config_hash(cfg)
    assert len(h) == 16 and int(h, 16) >= 0
    assert config_hash(_reordered(cfg)) == h
    assert list(_reordered(cfg)) != list(cfg)
    assert config_hash(cfg) == h and cfg == defaults()  # hashing does not modify the config
    # the same in another interpreter (no dependence on hash randomization)
    code = "from distbp.train.config import config_hash, defaults; print(config_hash(defaults()))"
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**__import__("os").environ, "PYTHONHASHSEED": seed}, check=True)
        assert out.stdout.strip() == h


@pytest.mark.parametrize("override", ["optimizer.lr=0.002", "seed=1", "model.sizes=[64, 128, 10]",
                                      "train.global_batch=64", "data.val_fraction=0.2", "model.dropout=0.1",
                                      "schedule.name=cosine", "data.preprocess=whiten"])
def test_config_hash_changes_with_the_numbers(override):
    assert config_hash(resolve(None, [override])) != config_hash(defaults())


@pytest.mark.parametrize("override", ["run_dir=elsewhere", "checkpoint.every=7", "checkpoint.keep=9",
                                      "train.max_steps=5", "train.epochs=99", "train.log_every=3",
                                      "train.eval_every=4", "train.progress=plain", "comm.backend=local"])
def test_config_hash_ignores_where_and_how_often(override):
    assert config_hash(resolve(None, [override])) == config_hash(defaults())


def test_semantic_diff_names_the_key():
    a, b = defaults(), resolve(None, ["optimizer.lr=0.5", "run_dir=x"])
    assert C.semantic_diff(a, b) == ["optimizer.lr: 0.001 -> 0.5"]


# -- keys that take no effect for the chosen variant ------------------------------------------------

@pytest.mark.parametrize("sets, message", [
    (["schedule.name=step", "schedule.tau=50"],
     "schedule.tau: has no effect with schedule.name: step; it applies to the annealing schedule "
     "(remove the key, or choose that variant)"),
    (["optimizer.nesterov=true"],
     "optimizer.nesterov: has no effect with optimizer.name: adam; it applies to optimizer.name: sgd or momentum "
     "(remove the key, or choose that variant)"),
    (["optimizer.name=sgd", "optimizer.nesterov=true"],
     "optimizer.nesterov: Nesterov momentum needs optimizer.momentum > 0 and optimizer.dampening 0 (as "
     "torch.optim.SGD), got momentum 0.0 and dampening 0.0"),
    (["optimizer.name=adam", "optimizer.alpha=0.9"],
     "optimizer.alpha: has no effect with optimizer.name: adam; it applies to optimizer.name: rmsprop "
     "(remove the key, or choose that variant)"),
    (["model.type=window", "data.name=conll", f"data.path={NER}", "model.sizes=[5, 3]"],
     "model.sizes: has no effect with model.type: window; it applies to model.type: mlp "
     "(remove the key, or choose that variant)"),
    (["schedule.name=warmup", "schedule.after=cosine", "schedule.gamma=0.5"],
     "schedule.gamma: has no effect with schedule.name: warmup then cosine; it applies to the step schedule "
     "(remove the key, or choose that variant)"),
    (["comm.backend=local", "comm.timeout_s=3"],
     "comm.timeout_s: has no effect with comm.backend: local; it applies to comm.backend: zmq or mpi (or auto "
     "under mpirun) (remove the key, or choose that variant)"),
    (["comm.heartbeat_s=3"], "comm.heartbeat_s: has no effect with comm.backend: auto; it applies to comm.backend: "
                             "zmq (remove the key, or choose that variant)"),
])
def test_a_key_without_effect_is_refused_naming_key_and_variant(sets, message):
    assert _error(overrides=tuple(sets)) == message


def test_a_key_set_to_its_default_is_harmless_where_it_has_no_effect():
    # A config.yaml of an older run may list every key: at its default, none is refused.
    assert resolve(None, ["schedule.name=step", "schedule.tau=100.0"])["schedule"]["name"] == "step"


@pytest.mark.parametrize("sets, momentum, dampening, nesterov", [
    (["optimizer.name=sgd"], 0.0, 0.0, False),                                  # torch.optim.SGD's defaults
    (["optimizer.name=sgd", "optimizer.momentum=0.9"], 0.9, 0.0, False),
    (["optimizer.name=sgd", "optimizer.momentum=0.9", "optimizer.dampening=0.5"], 0.9, 0.5, False),
    (["optimizer.name=sgd", "optimizer.momentum=0.8", "optimizer.nesterov=true"], 0.8, 0.0, True),
    (["optimizer.name=momentum"], 0.9, 0.0, False),                             # the older name still works
])
def test_sgd_honours_momentum_dampening_and_nesterov_as_torch(sets, momentum, dampening, nesterov):
    from distbp import nn
    from distbp.train.build import build_optimizer
    cfg = resolve(None, sets)
    opt = build_optimizer(cfg, nn.MLP([4, 3, 2]))
    g = opt.param_groups[0]
    assert (g["momentum"], g["dampening"], g["nesterov"]) == (momentum, dampening, nesterov)
    assert yaml.safe_load(dump(cfg))["optimizer"]["momentum"] == momentum  # recorded: it takes effect


def test_config_yaml_records_only_the_keys_that_take_effect():
    sgd = yaml.safe_load(dump(resolve(None, ["optimizer.name=sgd"])))["optimizer"]
    assert set(sgd) == {"name", "lr", "weight_decay", "decay_biases", "momentum", "dampening", "nesterov"}
    adam = yaml.safe_load(dump(defaults()))
    assert "momentum" not in adam["optimizer"] and set(adam["schedule"]) == {"name"}
    assert "factory" not in adam["model"] and "layers" not in adam["model"]


@pytest.mark.parametrize("sets", [[], ["optimizer.name=sgd", "optimizer.momentum=0.5"], ["schedule.name=warmup"],
                                  ["model.type=sequential", "model.layers=[{Linear: [auto, auto]}]"]])
def test_resolving_a_resolved_config_changes_nothing(sets):
    cfg = resolve(None, sets)
    assert resolve(copy.deepcopy(cfg)) == cfg
    assert config_hash(resolve(yaml.safe_load(dump(cfg)))) == config_hash(cfg)


def test_the_hash_ignores_keys_without_effect():
    assert config_hash(resolve(None, ["schedule.name=step"])) == \
        config_hash(resolve({"schedule": {"name": "step", "tau": 100.0}}))


def test_train_metrics_are_names_that_fit_the_task():
    assert _error(overrides=("train.metrics=[macro_f11]",)) == (
        "train.metrics: 'macro_f11' is not one of accuracy, macro_f1, weighted_f1, entity_f1, entity_precision, "
        "entity_recall, mse, mae, r2; did you mean macro_f1?")
    assert _error(overrides=("train.metrics=[r2]",)) == "train.metrics: r2 needs regression"
    assert _error(overrides=("train.metrics=[entity_f1]",)) == "train.metrics: entity_f1 needs CoNLL data"
    assert _error(overrides=("train.early_stopping={metric: val_loss, patience: 0}",)) == (
        "train.early_stopping.patience: expected a positive integer, got 0")
    assert _error(overrides=("train.early_stopping={metric: val_loss, wait: 3}",)) == (
        "train.early_stopping: unknown key 'wait'; it takes metric, patience and mode")
