"""nn containers (ModuleList, ModuleDict, ParameterList, Sequential's torch forms) and the
Module methods around them: traversal, apply, buffers, register_parameter, dtype casts, the
guards against plain lists and dicts of modules, and the input-dtype cast of a call."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import distbp as db
import distbp.functional as F
from distbp import nn, optim
from distbp.autodiff import ShapeError

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def names(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_parameters()]


# -- ModuleList ---------------------------------------------------------------------------------
def test_module_list_registers_under_positions_and_behaves_as_a_list():
    a, b, c, d = (nn.Linear(2, 2) for _ in range(4))
    layers = nn.ModuleList([a, b])
    assert len(layers) == 2 and list(layers) == [a, b]
    assert layers.append(c) is layers
    layers.extend([d])
    assert [k for k, _ in layers.named_children()] == ["0", "1", "2", "3"]
    assert layers[0] is a and layers[-1] is d and layers[-4] is a
    with pytest.raises(IndexError, match="index 4 is out of range"):
        layers[4]
    with pytest.raises(IndexError):
        layers[-5]
    part = layers[1:3]
    assert type(part) is nn.ModuleList and list(part) == [b, c]
    assert names(part) == ["0.weight", "0.bias", "1.weight", "1.bias"]  # renumbered, as torch
    assert names(layers)[:3] == ["0.weight", "0.bias", "1.weight"] and len(names(layers)) == 8


def test_module_list_insert_delete_set_and_pop_renumber():
    a, b, c, e = nn.ReLU(), nn.Tanh(), nn.Sigmoid(), nn.Softsign()
    layers = nn.ModuleList([a, b])
    layers.insert(1, c)
    assert list(layers) == [a, c, b]
    layers.insert(-1, e)  # list.insert semantics: before the last
    assert list(layers) == [a, c, e, b]
    assert [k for k, _ in layers.named_children()] == ["0", "1", "2", "3"]
    del layers[1]
    assert list(layers) == [a, e, b] and layers[1] is e and layers.__dict__["1"] is e
    assert "3" not in layers.__dict__
    layers[-1] = c
    assert list(layers) == [a, e, c]
    assert layers.pop(0) is a and list(layers) == [e, c]
    del layers[0:2]
    assert len(layers) == 0
    with pytest.raises(TypeError, match="not a Module"):
        layers.append(np.ones(2))
    with pytest.raises(TypeError, match="iterable"):
        layers.extend(nn.Linear(2, 2))


def test_module_list_in_a_model_is_seen_by_parameters_optimizers_and_state_dict():
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Linear(3, 3) for _ in range(2))
            self.head = nn.Linear(3, 1)

        def forward(self, x):
            for block in self.blocks:
                x = F.relu(block(x))
            return self.head(x)

    model = Stack()
    assert names(model) == ["blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias",
                            "head.weight", "head.bias"]
    assert list(model.state_dict()) == names(model)
    before = model.blocks[1].weight.data.copy()
    opt = optim.SGD(model.parameters(), lr=0.1)
    model(db.tensor(np.ones((2, 3)))).sum().backward()
    assert model.blocks[1].weight.grad is not None
    opt.step()
    assert not np.array_equal(model.blocks[1].weight.data, before)
    with pytest.raises(NotImplementedError, match="ModuleList does not define forward"):
        model.blocks(db.tensor(np.ones((1, 3))))
    assert (nn.ModuleList([model.head]) + [nn.ReLU()])[0] is model.head


# -- ModuleDict --------------------------------------------------------------------------------
def test_module_dict_is_an_ordered_mapping_of_registered_modules():
    relu, tanh, lin = nn.ReLU(), nn.Tanh(), nn.Linear(2, 3)
    d = nn.ModuleDict({"b": relu, "a": lin})
    d["c"] = tanh
    assert list(d) == ["b", "a", "c"] == list(d.keys())
    assert list(d.values()) == [relu, lin, tanh] and list(d.items())[1] == ("a", lin)
    assert len(d) == 3 and "a" in d and "z" not in d and d["a"] is lin
    assert names(d) == ["a.weight", "a.bias"]
    d.update([("d", nn.Sigmoid()), ("b", nn.Softsign())])  # pairs; an existing key keeps its place
    assert list(d) == ["b", "a", "c", "d"] and isinstance(d["b"], nn.Softsign)
    assert d.pop("a") is lin and "a" not in d and names(d) == [] and "a" not in d.__dict__
    del d["c"]
    assert list(d) == ["b", "d"]
    with pytest.raises(KeyError):
        del d["c"]
    d.clear()
    assert len(d) == 0
    with pytest.raises(TypeError, match="not a Module"):
        d["x"] = np.ones(2)
    with pytest.raises(KeyError, match="can't contain"):
        d["x.y"] = nn.ReLU()
    with pytest.raises(ValueError, match="length 3"):
        d.update([("x", nn.ReLU(), 1)])


def test_module_dict_in_a_model_names_parameters_by_key():
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleDict(OrderedDict([("y", nn.Linear(2, 1)), ("x", nn.Linear(2, 3))]))

    assert names(Heads()) == ["heads.y.weight", "heads.y.bias", "heads.x.weight", "heads.x.bias"]


# -- ParameterList -----------------------------------------------------------------------------
def test_parameter_list_registers_parameters_by_position():
    class Scales(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(np.ones(1))
            self.scales = nn.ParameterList([nn.Parameter(np.ones(2)), db.tensor(np.zeros(3), dtype=np.float64)])

    model = Scales()
    plist = model.scales
    assert names(model) == ["w", "scales.0", "scales.1"]
    assert all(isinstance(p, nn.Parameter) for p in plist)
    assert plist[1].dtype == np.float64 and plist[1].shape == (3,)  # a Tensor is wrapped, keeping its dtype
    plist.append(np.full(2, 5.0))
    assert len(plist) == 3 and names(plist) == ["0", "1", "2"] and plist[-1].dtype == np.float32
    p = nn.Parameter(np.ones(4))
    plist[0] = p
    assert plist[0] is p and list(model.parameters())[1] is p
    part = plist[1:]
    assert type(part) is nn.ParameterList and list(part) == [plist[1], plist[2]]
    with pytest.raises(IndexError):
        plist[3]
    with pytest.raises(TypeError, match="not str"):
        plist.append("x")
    with pytest.raises(TypeError, match="iterable"):
        plist.extend(nn.Parameter(np.ones(2)))
    with pytest.raises(RuntimeError, match="should not be called"):
        plist(1)
    assert "(0): Parameter containing: [float32 of size 4]" in repr(plist)


# -- Sequential --------------------------------------------------------------------------------
def test_sequential_from_an_ordered_dict_uses_its_names():
    lin, act = nn.Linear(3, 2), nn.Tanh()
    model = nn.Sequential(OrderedDict([("hidden", lin), ("act", act)]))
    assert names(model) == ["hidden.weight", "hidden.bias"]
    assert len(model) == 2 and model[0] is lin and model[-1] is act
    x = db.tensor(np.ones((1, 3)))
    np.testing.assert_allclose(model(x).data, np.tanh(x.data @ lin.weight.data), rtol=1e-6)
    assert list(model.state_dict()) == ["hidden.weight", "hidden.bias"]


@pytest.mark.parametrize("bad, fragment", [
    (OrderedDict(), None),  # an empty OrderedDict is an empty model, as torch
    ({"a": nn.ReLU()}, "argument 0 is a dict, not a Module.*OrderedDict"),
    ([nn.ReLU()], "argument 0 is a list, not a Module.*unpack"),
])
def test_sequential_never_silently_builds_an_empty_model(bad, fragment):
    if fragment is None:
        assert len(nn.Sequential(bad)) == 0
        return
    with pytest.raises(TypeError, match=fragment):
        nn.Sequential(bad)


def test_sequential_non_module_argument_names_its_position_and_type():
    with pytest.raises(TypeError, match="argument 1 is a OrderedDict, not a Module"):
        nn.Sequential(nn.ReLU(), OrderedDict(a=nn.ReLU()))
    with pytest.raises(TypeError, match="argument 2 is a int"):
        nn.Sequential(nn.ReLU(), nn.ReLU(), 3)
    with pytest.raises(TypeError, match="entry 'b' is a float"):
        nn.Sequential(OrderedDict([("a", nn.ReLU()), ("b", 1.0)]))


def test_sequential_append_insert_index_and_slice():
    a, b, c, d = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2), nn.Tanh()
    model = nn.Sequential(a, b)
    assert model.append(c) is model and len(model) == 3 and model[2] is c
    assert model.insert(1, d) is model
    assert list(model) == [a, d, b, c] and [k for k, _ in model.named_children()] == ["0", "1", "2", "3"]
    model.insert(-4, nn.Sigmoid())  # -len(self) <= index <= len(self), as torch
    assert isinstance(model[0], nn.Sigmoid) and model[1] is a
    with pytest.raises(IndexError):
        model.insert(7, nn.ReLU())
    assert model[-1] is c and model[-5] is model[0]
    with pytest.raises(IndexError):
        model[5]
    part = model[2:4]
    assert type(part) is nn.Sequential and list(part) == [d, b]
    assert [k for k, _ in part.named_children()] == ["2", "3"]  # the same names, as torch
    assert names(model[1:]) == ["1.weight", "1.bias", "4.weight", "4.bias"]
    named = nn.Sequential(OrderedDict([("x", a), ("y", b)]))
    assert [k for k, _ in named[1:].named_children()] == ["y"]
    with pytest.raises(KeyError, match="names"):
        named.insert(0, nn.ReLU())
    with pytest.raises(TypeError, match="not a Module"):
        model.append(3)


def test_sequential_delete_renumbers_and_pop():
    a, b, c = nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)
    model = nn.Sequential(a, b, c)
    del model[1]
    assert list(model) == [a, c] and names(model) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert model.pop(-1) is c and list(model) == [a]
    model[0] = c
    assert list(model) == [c]


def test_sequential_forward_follows_changes_to_its_modules():
    """The fused forward caches its plan; every way of changing the modules must show."""
    rng = np.random.default_rng(0)
    x = db.tensor(rng.standard_normal((4, 3)))
    model = nn.Sequential(nn.Linear(3, 3, rng=rng))
    w0 = model[0].weight.data
    np.testing.assert_allclose(model(x).data, x.data @ w0, rtol=1e-6)

    model.append(nn.ReLU())  # now fused Linear + ReLU
    np.testing.assert_allclose(model(x).data, np.maximum(x.data @ w0, 0), rtol=1e-6)
    model.append(nn.Linear(3, 2, rng=rng))
    w2 = model[2].weight.data
    expected = np.maximum(x.data @ w0, 0) @ w2
    np.testing.assert_allclose(model(x).data, expected, rtol=1e-5)

    model[1] = nn.Tanh()  # setitem
    np.testing.assert_allclose(model(x).data, np.tanh(x.data @ w0) @ w2, rtol=1e-5)
    model.insert(2, nn.Sigmoid())  # Tanh, Sigmoid: only the first pairs with the Linear
    np.testing.assert_allclose(model(x).data, (1 / (1 + np.exp(-np.tanh(x.data @ w0)))) @ w2, rtol=1e-5)
    setattr(model, "1", nn.ReLU())  # plain attribute assignment
    ref = (1 / (1 + np.exp(-np.maximum(x.data @ w0, 0)))) @ w2
    np.testing.assert_allclose(model(x).data, ref, rtol=1e-5)
    model._modules["1"] = nn.Tanh()  # even the registry itself
    np.testing.assert_allclose(model(x).data, (1 / (1 + np.exp(-np.tanh(x.data @ w0)))) @ w2, rtol=1e-5)
    del model[1:3]
    np.testing.assert_allclose(model(x).data, x.data @ w0 @ w2, rtol=1e-5)


def test_sequential_fused_forward_matches_layer_by_layer_after_append():
    rng = np.random.default_rng(3)
    model = nn.Sequential(nn.Linear(4, 5, rng=rng)).append(nn.Sigmoid()).append(nn.Linear(5, 3, rng=rng))
    x, y = db.tensor(rng.standard_normal((6, 4))), rng.integers(0, 3, 6)
    F.cross_entropy(model(x), y).backward()
    fused = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    h = x
    for layer in model:
        h = layer(h)
    F.cross_entropy(h, y).backward()
    for g, p in zip(fused, model.parameters()):
        np.testing.assert_array_equal(g, p.grad)


# -- traversal and apply ------------------------------------------------------------------------
class Tree(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        self.b = nn.Linear(2, 1)
        self.c = self.b  # the same module under a second name


def test_modules_children_and_their_named_forms_visit_each_module_once():
    t = Tree()
    assert [n for n, _ in t.named_modules()] == ["", "a", "a.0", "a.1", "b"]
    assert [n for n, _ in t.named_modules(remove_duplicate=False)] == ["", "a", "a.0", "a.1", "b", "c"]
    assert [n for n, _ in t.named_modules(prefix="m")] == ["m", "m.a", "m.a.0", "m.a.1", "m.b"]
    assert list(t.modules()) == [m for _, m in t.named_modules()]
    assert [n for n, _ in t.named_children()] == ["a", "b"] and list(t.children()) == [t.a, t.b]
    assert names(t) == ["a.0.weight", "a.0.bias", "b.weight", "b.bias"]
    assert [n for n, _ in t.named_parameters(prefix="m", recurse=True)][0] == "m.a.0.weight"
    assert list(t.a.parameters(recurse=False)) == []


def test_apply_visits_children_first_then_self_and_returns_self():
    t = Tree()
    order = []
    assert t.apply(lambda m: order.append(m)) is t
    assert order == [t.a[0], t.a[1], t.a, t.b, t]
    t.apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Linear) else None)
    assert all(np.all(p.data == 0) for n, p in t.named_parameters() if n.endswith("weight"))


def test_train_eval_reach_every_module_and_need_a_boolean():
    t = Tree()
    assert t.eval() is t and not any(m.training for m in t.modules())
    t.train()
    assert all(m.training for m in t.modules())
    with pytest.raises(ValueError, match="boolean"):
        t.train("no")


# -- buffers -----------------------------------------------------------------------------------
class Normalizer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer("mean", np.array([1.0, 2.0]))
        self.register_buffer("count", np.array(3, dtype=np.int64))
        self.register_buffer("scratch", db.tensor(np.zeros(2)), persistent=False)
        self.register_buffer("later", None)

    def forward(self, x):
        return self.lin(x - self.mean)


def test_buffers_are_registered_listed_and_saved_when_persistent():
    m = Normalizer()
    assert [n for n, _ in m.named_buffers()] == ["mean", "count", "scratch"]  # None is skipped
    assert [b is m.mean for b in m.buffers()] == [True, False, False]
    assert names(m) == ["lin.weight", "lin.bias"]  # buffers are no parameters
    state = m.state_dict()
    assert list(state) == ["mean", "count", "lin.weight", "lin.bias"]  # torch's order: own, then children
    assert state["count"].dtype == np.int64 and state["count"].shape == ()
    state["mean"][0] = 100.0
    assert m.mean[0] == 1.0  # a copy
    m.later = np.ones(1)  # a reserved name: assignment registers the buffer
    assert "later" in m.state_dict()
    m.mean = np.array([5.0, 6.0])
    assert m.state_dict()["mean"].tolist() == [5.0, 6.0]
    with pytest.raises(TypeError, match="buffer 'mean'"):
        m.mean = [1.0, 2.0]
    outer = nn.Sequential(m)
    assert [n for n, _ in outer.named_buffers()] == ["0.mean", "0.count", "0.scratch", "0.later"]
    assert list(outer.state_dict()) == ["0.mean", "0.count", "0.later", "0.lin.weight", "0.lin.bias"]


def test_load_state_dict_restores_buffers_in_place_and_checks_them():
    src, dst = Normalizer(), Normalizer()
    src.mean[:] = [7.0, 8.0]
    src.count[...] = 9
    kept = dst.mean
    dst.load_state_dict(src.state_dict())
    assert dst.mean is kept and dst.mean.tolist() == [7.0, 8.0] and int(dst.count) == 9
    np.testing.assert_array_equal(dst.lin.weight.data, src.lin.weight.data)

    state = src.state_dict()
    del state["count"]
    state["mean"] = np.zeros(3)
    state["scratch"] = np.zeros(2)  # not persistent: unexpected, as torch
    with pytest.raises(ShapeError) as err:
        dst.load_state_dict(state)
    msg = str(err.value)
    for fragment in ("missing: count", "unexpected: scratch", "mean: shape (3,)", "(2,) in the model"):
        assert fragment in msg
    assert dst.mean.tolist() == [7.0, 8.0]  # nothing half-loaded
    with pytest.raises(ShapeError, match="count: dtype float64 .* int64"):
        dst.load_state_dict({"count": np.array(1.5)}, strict=False)


def test_register_buffer_and_parameter_reject_bad_names_and_values():
    m = Normalizer()
    with pytest.raises(KeyError, match="already exists"):
        m.register_buffer("lin", np.ones(1))
    with pytest.raises(KeyError, match="can't contain"):
        m.register_buffer("a.b", np.ones(1))
    with pytest.raises(TypeError, match="buffer 'x'"):
        m.register_buffer("x", [1.0])
    with pytest.raises(TypeError, match="register_parameter"):
        m.register_buffer("x", nn.Parameter(np.ones(1)))
    p = nn.Parameter(np.ones(3))
    m.register_parameter("gain", p)
    assert m.gain is p and names(m) == ["gain", "lin.weight", "lin.bias"]
    with pytest.raises(TypeError, match="parameter 'bias'"):
        m.register_parameter("bias", np.ones(2))
    with pytest.raises(KeyError, match="already exists"):
        m.register_parameter("mean", p)
    m.register_parameter("gain", None)
    assert m.gain is None and names(m) == ["lin.weight", "lin.bias"]
    m.register_parameter("gain", p)  # a name unregistered by None can be registered again
    assert names(m)[0] == "gain"
    m.gain = None
    m.add_module("extra", nn.Linear(1, 1))
    assert names(m)[-2:] == ["extra.weight", "extra.bias"]
    with pytest.raises(TypeError, match="not a Module subclass"):
        m.add_module("bad", 3)


def test_delattr_unregisters():
    m = Normalizer()
    del m.mean, m.lin
    assert list(m.state_dict()) == ["count"]
    assert not hasattr(m, "mean")


# -- dtype and device --------------------------------------------------------------------------
def test_double_float_and_to_cast_parameters_gradients_and_floating_buffers():
    m = Normalizer()
    m(db.tensor(np.ones((1, 2)))).sum().backward()
    assert m.double() is m
    assert all(p.dtype == np.float64 and p.grad.dtype == np.float64 for p in m.parameters())
    assert m.mean.dtype == np.float64 and m.scratch.dtype == np.float64 and isinstance(m.scratch, db.Tensor)
    assert m.count.dtype == np.int64  # integer buffers keep their dtype, as torch
    assert m.float() is m and m.lin.weight.dtype == np.float32 and m.mean.dtype == np.float32
    assert m.to(np.float64) is m and m.lin.bias.dtype == np.float64
    m.to("cpu", np.float32)
    assert m.lin.bias.dtype == np.float32
    m.to(device="cpu", dtype="float64")
    assert m.lin.bias.dtype == np.float64
    m.to(db.tensor(np.ones(1), dtype=np.float32))  # to(tensor): its dtype
    assert m.lin.bias.dtype == np.float32
    assert m.to("cpu") is m and m.to(device="cpu:0") is m and m.cpu() is m
    assert m.lin.bias.dtype == np.float32
    with pytest.raises(ValueError, match="'cuda'.*CPU only"):
        m.to("cuda")
    with pytest.raises(ValueError, match="cuda:0"):
        m.to(device="cuda:0", dtype=np.float64)
    with pytest.raises(TypeError, match="floating point"):
        m.to(np.int64)
    with pytest.raises(TypeError, match="unexpected keyword"):
        m.to(dtyp=np.float64)
    assert m.lin.bias.dtype == np.float32  # nothing changed by the refused calls


def test_to_refuses_a_dtype_change_once_an_optimizer_holds_the_parameters():
    model = nn.MLP([3, 4, 2])
    opt = optim.SGD(model.parameters(), lr=0.1)
    for cast in (lambda: model.to(np.float64), model.double, lambda: model.to(dtype=np.float16)):
        with pytest.raises(RuntimeError, match="optimizer's float32 flat buffer; cast the model before creating "
                                               r"the optimizer \(as with torch\)"):
            cast()
    # Casts that change nothing are fine, and the optimizer still works.
    assert model.to(np.float32) is model and model.float() is model and model.to("cpu") is model
    before = model[0].weight.data.copy()
    F.cross_entropy(model(db.tensor(np.ones((2, 3)))), [0, 1]).backward()
    opt.step()
    assert np.shares_memory(model[0].weight.data, opt.flat.data)
    assert not np.array_equal(model[0].weight.data, before)
    # Cast first, then the optimizer: as with torch.
    fresh = nn.MLP([3, 4, 2]).double()
    assert optim.SGD(fresh.parameters(), lr=0.1).flat.data.dtype == np.float64


# -- guards against plain containers --------------------------------------------------------------
@pytest.mark.parametrize("value, fix", [
    (lambda: [nn.Linear(2, 2), nn.ReLU()], "plain list of Modules.*nn.ModuleList"),
    (lambda: (nn.Linear(2, 2),), "plain tuple of Modules.*nn.ModuleList"),
    (lambda: {"a": nn.Linear(2, 2)}, "plain dict of Modules.*nn.ModuleDict"),
    (lambda: [nn.Parameter(np.ones(2))], "plain list of Parameters.*nn.ParameterList"),
    (lambda: {"w": nn.Parameter(np.ones(2))}, "plain dict of Parameters.*register_parameter"),
])
def test_plain_lists_and_dicts_of_modules_or_parameters_are_refused(value, fix):
    m = nn.Module()
    with pytest.raises(TypeError, match="Module.layers: a " + fix):
        m.layers = value()
    assert not hasattr(m, "layers")


def test_plain_containers_of_other_things_and_reassignments_are_fine():
    m = nn.Linear(2, 2)
    m.sizes, m.names, m.opts, m.empty = [1, 2], ("a",), {"k": 1}, []
    assert names(m) == ["weight", "bias"]
    with pytest.raises(TypeError, match="cannot assign 'ndarray' as parameter 'weight'"):
        m.weight = np.ones((2, 2))  # would silently drop the parameter
    seq = nn.Sequential(nn.ReLU())
    with pytest.raises(TypeError, match="child module '0'"):
        setattr(seq, "0", 3)
    m.weight = nn.Parameter(np.zeros((2, 2)))  # a new Parameter replaces it
    assert names(m) == ["weight", "bias"] and np.all(m.weight.data == 0)


# -- input dtype of a call -----------------------------------------------------------------------
def test_float_numpy_input_is_cast_to_the_parameters_dtype():
    model = nn.MLP([3, 4, 2])
    x64 = np.random.default_rng(0).standard_normal((5, 3))
    out = model(x64)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.data, model(db.tensor(x64)).data)
    assert model([[1.0, 2.0, 3.0]]).dtype == np.float32  # a list too
    assert model(db.tensor(x64, dtype=np.float64)).dtype == np.float64  # Tensors are left alone
    model.double()
    out = model(x64.astype(np.float32))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out.data, model(db.tensor(x64, dtype=np.float64)).data, rtol=1e-6)
    assert nn.ReLU()(x64).dtype == np.float64  # no parameters: nothing to follow


def test_integer_inputs_pass_unchanged_to_embeddings():
    model = nn.WindowClassifier(vocab_size=10, embed_dim=3, window=1, hidden=4, num_classes=2)
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    assert model(ids).dtype == np.float32
    assert model([[1, 2, 3]]).shape == (1, 2)
    with pytest.raises(TypeError, match="integers"):
        nn.Embedding(5, 2)(np.array([1.0, 2.0]))  # a float array is cast, and still refused
