"""One source for each choice: the schema's choices, and which keys apply to which choice,
come from the registries (distbp/train/registry.py, the data readers, nn's activations, the
communicator backends), and what the config names is what gets built."""

from __future__ import annotations

import pytest

from distbp import comm, data, nn, optim
from distbp.train import config as C
from distbp.train import registry as R
from distbp.train.build import build_loss, build_optimizer, build_scheduler

SECTION_CHOICES = [
    ("model.activation", tuple(nn.ACTIVATIONS)), ("model.init", tuple(R.INITS)), ("model.loss", tuple(R.LOSSES)),
    ("data.name", (*data.READERS, "conll", "custom")), ("data.kind", tuple(data.SYNTHETIC)),
    ("data.preprocess", data.PREPROCESS_KINDS), ("optimizer.name", tuple(R.OPTIMIZERS)),
    ("schedule.name", tuple(R.SCHEDULES)), ("schedule.after", ("constant", "step", "annealing", "cosine")),
    ("comm.backend", comm.BACKENDS),
]


@pytest.mark.parametrize("key, choices", SECTION_CHOICES, ids=[k for k, _ in SECTION_CHOICES])
def test_the_schema_offers_exactly_the_registered_choices(key, choices):
    assert C._field(key).choices == choices


@pytest.mark.parametrize("section, entries, common", [
    ("optimizer", R.OPTIMIZERS, {"name", "lr", "weight_decay", "decay_biases"}),
    ("schedule", R.SCHEDULES, {"name"}),
])
def test_every_key_of_a_section_is_common_or_read_by_an_entry(section, entries, common):
    read = {u.key for u in R.users(entries)}
    assert read | common == set(C.SCHEMA[section]), "a key no entry reads, or an entry reading no key"
    assert not read & common


def test_each_key_applies_exactly_to_the_entries_that_read_it():
    for u in R.users(R.OPTIMIZERS):
        for name in R.OPTIMIZERS:
            cfg = C.resolve(None, [f"optimizer.name={name}"])
            assert (f"optimizer.{u.key}" not in C.inapplicable(cfg)) == (name in u.choices), (u, name)


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)


@pytest.mark.parametrize("name, cls, state", [
    ("sgd", optim.SGD, {"momentum": 0.0}), ("momentum", optim.SGD, {"momentum": 0.9}),
    ("adagrad", optim.AdaGrad, {"eps": 1e-10}), ("rmsprop", optim.RMSProp, {"eps": 1e-8, "alpha": 0.99}),
    ("adam", optim.Adam, {"eps": 1e-8, "betas": (0.9, 0.999)}), ("adamw", optim.AdamW, {"eps": 1e-8}),
])
def test_the_named_optimizer_is_built_with_its_keys(name, cls, state):
    cfg = C.resolve(None, [f"optimizer.name={name}", "optimizer.lr=0.05"])
    opt = build_optimizer(cfg, _Model())
    assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.05
    for k, v in state.items():
        assert opt.param_groups[0][k] == v, k


@pytest.mark.parametrize("sets, cls, after", [
    ([], optim.lr_scheduler.Constant, None),
    (["schedule.name=step", "schedule.step_size=7"], optim.lr_scheduler.StepLR, None),
    (["schedule.name=cosine"], optim.lr_scheduler.CosineAnnealingLR, None),
    (["schedule.name=warmup", "schedule.after=annealing"], optim.lr_scheduler.LinearWarmup,
     optim.lr_scheduler.Annealing),
])
def test_the_named_schedule_is_built(sets, cls, after):
    cfg = C.resolve(None, sets)
    opt = build_optimizer(cfg, _Model())
    sched = build_scheduler(cfg, opt, total_steps=123)
    assert type(sched) is cls
    if cls is optim.lr_scheduler.StepLR:
        assert sched.step_size == 7
    if cls is optim.lr_scheduler.CosineAnnealingLR:
        assert sched.T_max == 123  # the run's length when schedule.t_max is not set
    if after is not None:
        assert type(sched.after) is after


def test_a_registered_loss_is_what_the_config_builds():
    import numpy as np

    from distbp.autodiff.tensor import Tensor
    out = Tensor(np.array([[2.0, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=np.float32), requires_grad=True)
    y = np.array([0, 2])
    cfg = C.resolve(None, ["model.loss=multi_margin", "model.margin=0.5"])
    # multi-margin by hand: sample 0: max(0, .5 - 2 + 0) twice = 0; sample 1: (.5 - 0 + 0) + (.5 - 0 + .5) = 1.5; / 3 classes
    assert build_loss(cfg, 3)(out, y, 1.0).item() == pytest.approx(1.5 / 3)
