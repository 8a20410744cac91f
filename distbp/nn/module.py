"""Module: the container of parameters, buffers and submodules, with torch.nn's names."""

from __future__ import annotations

import operator
from collections import OrderedDict
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..autodiff.tensor import ShapeError, Tensor
from .parameter import Parameter


class _Registry(OrderedDict):
    """The submodules of a Module: an OrderedDict that counts its changes in ``version``, so
    that Sequential can cache the plan of its forward and know when to rebuild it, however
    the modules were changed (attribute, ``add_module``, ``del``, or ``_modules`` itself)."""

    version = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        OrderedDict.__setitem__(self, key, value)
        self.version += 1

    def __delitem__(self, key: Any) -> None:
        OrderedDict.__delitem__(self, key)
        self.version += 1

    # OrderedDict's C versions of these do not go through __setitem__ / __delitem__.
    def pop(self, *args: Any) -> Any:
        self.version += 1
        return OrderedDict.pop(self, *args)

    def popitem(self, last: bool = True) -> Any:
        self.version += 1
        return OrderedDict.popitem(self, last)

    def clear(self) -> None:
        self.version += 1
        OrderedDict.clear(self)

    def move_to_end(self, key: Any, last: bool = True) -> None:
        self.version += 1
        OrderedDict.move_to_end(self, key, last)


_REGISTRIES = ("_parameters", "_buffers", "_modules")  # assigned whole only by Module's own code


def _plain_container_error(owner: "Module", name: str, value: Any) -> TypeError | None:
    """The error for a list, tuple or dict of Modules (or Parameters) assigned as an attribute:
    it would register none of them, so parameters(), state_dict() and optimizers miss them."""
    items = value.values() if isinstance(value, dict) else value
    kind = None
    for v in items:
        if isinstance(v, Parameter):
            kind = kind or "Parameter"
        elif isinstance(v, Module):
            kind = "Module"
            break
    if kind is None:
        return None
    what = type(value).__name__
    if kind == "Module":
        fix = "nn.ModuleDict" if isinstance(value, dict) else "nn.ModuleList"
    else:
        fix = ("register_parameter(name, p) for each (or an nn.ParameterList)" if isinstance(value, dict)
               else "nn.ParameterList")
    return TypeError(f"{type(owner).__name__}.{name}: a plain {what} of {kind}s is not registered (parameters(), "
                     f"state_dict() and optimizers would not see them); use {fix} instead")


def _check_name(owner: "Module", name: Any, kind: str, registry: Mapping[str, Any]) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{kind} name should be a string, got {type(name).__name__}")
    if "." in name:
        raise KeyError(f"{kind} name can't contain '.', got {name!r}")
    if name == "":
        raise KeyError(f"{kind} name can't be an empty string")
    # An attribute that is None may be a parameter or module unregistered by assigning None.
    if hasattr(owner, name) and name not in registry and owner.__dict__.get(name, 0) is not None:
        raise KeyError(f"attribute '{name}' already exists")


def _as_dtype(x: Any) -> np.dtype | None:
    """numpy's dtype for ``x`` (also torch's dtypes, by name); None when ``x`` is no dtype."""
    if x is None or isinstance(x, bool):
        return None
    try:
        return np.dtype(x)
    except (TypeError, ValueError):
        text = str(x)
        if text.startswith("torch."):
            try:
                return np.dtype(text[len("torch."):])
            except (TypeError, ValueError):
                return None
        return None


def _parse_to(owner: str, args: tuple, kwargs: dict) -> np.dtype | None:
    """torch's ``to`` signatures, ``to(device=None, dtype=None, non_blocking=False)``,
    ``to(dtype, non_blocking=False)`` and ``to(tensor, non_blocking=False)``: the dtype asked
    for (None for none). The device "cpu" (or "cpu:N") is accepted; any other is a ValueError."""
    kwargs = dict(kwargs)
    device = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", None)
    kwargs.pop("non_blocking", None)
    kwargs.pop("memory_format", None)  # a layout hint: numpy arrays have no other layout here
    if kwargs:
        raise TypeError(f"{owner}.to() got unexpected keyword arguments: {', '.join(kwargs)}")
    if len(args) > 3:
        raise TypeError(f"{owner}.to() takes at most 3 positional arguments, got {len(args)}")
    rest: tuple = ()
    if args:
        first, rest = args[0], args[1:]
        if isinstance(first, (Tensor, np.ndarray)):
            dtype = first.dtype
        elif _as_dtype(first) is not None:
            if dtype is not None:
                raise TypeError(f"{owner}.to(): dtype given twice")
            dtype = first
        else:
            device = first
            if rest and not isinstance(rest[0], bool):
                if dtype is not None:
                    raise TypeError(f"{owner}.to(): dtype given twice")
                dtype, rest = rest[0], rest[1:]
        if any(not isinstance(r, bool) for r in rest):
            raise TypeError(f"{owner}.to(): unexpected positional arguments {rest!r} (only non_blocking may follow)")
    if device is not None:
        kind = getattr(device, "type", device)  # torch.device has .type
        if not isinstance(kind, str) or kind.split(":")[0] != "cpu":
            raise ValueError(f"{owner}.to(): device {device!r} is not available: distbp computes on the CPU "
                             "only (the device 'cpu' is accepted and changes nothing)")
    if dtype is None:
        return None
    resolved = _as_dtype(dtype)
    if resolved is None:
        raise TypeError(f"{owner}.to(): {dtype!r} is not a dtype")
    if resolved.kind != "f":
        raise TypeError(f"{owner}.to() only accepts floating point dtypes, but got desired dtype={resolved}")
    return resolved


def _first_param_dtype(module: "Module") -> np.dtype | None:
    """The dtype of the first parameter in named_parameters() order (None if there is none)."""
    for p in module._parameters.values():
        return p.data.dtype
    for child in module._modules.values():
        dtype = _first_param_dtype(child)
        if dtype is not None:
            return dtype
    return None


def _cast_inputs(module: "Module", args: tuple) -> tuple:
    """``args`` with each floating ndarray (or list of floats) made a Tensor of the dtype of
    the module's parameters: float64 numpy data does not silently make a float32 model compute
    in float64, and ``forward`` sees a Tensor (``x.view``, ``x.size(0)``), as in torch. Integer
    arrays (ids for embeddings), Tensors and other objects pass unchanged."""
    dtype = _first_param_dtype(module)
    out = list(args)
    for i, a in enumerate(args):
        if type(a) is list:
            if any(isinstance(e, Tensor) for e in a):
                continue  # keep a list of tensors a list: converting it would cut the graph
            try:
                a = np.asarray(a)
            except (ValueError, TypeError):  # ragged, or not numbers: the module's own business
                continue
            if a.dtype.kind != "f":
                continue
            out[i] = a
        if type(a) is np.ndarray and a.dtype.kind == "f":
            out[i] = Tensor._wrap(a if dtype is None else a.astype(dtype, copy=False))
    return tuple(out)


class Module:
    """Base class of layers and models. Assigning a Parameter or Module to an attribute
    registers it; ``register_buffer`` registers a non-trainable array (a numpy array or a
    Tensor) that ``state_dict()`` saves. ``named_parameters()`` lists a module's own
    parameters in assignment order, then each submodule's, recursively (torch's order).

    Calling a module casts a floating numpy array (or a list of floats) given positionally to
    its parameters' dtype (float64 data into a float32 model computes in float32); Tensors and
    integer arrays are passed as they are.
    """

    def __init__(self) -> None:
        d = self.__dict__
        d["_parameters"] = OrderedDict()
        d["_buffers"] = OrderedDict()
        d["_non_persistent_buffers_set"] = set()
        d["_modules"] = _Registry()
        d["training"] = True

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        params = d.get("_parameters")
        if params is None:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                 f"before assigning {name!r}")
        modules, buffers = d["_modules"], d["_buffers"]
        if isinstance(value, Parameter):
            if name in modules:
                del modules[name]
            buffers.pop(name, None)
            d["_non_persistent_buffers_set"].discard(name)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            d["_non_persistent_buffers_set"].discard(name)
            modules[name] = value
        elif name in buffers:
            if value is not None and not isinstance(value, (np.ndarray, Tensor)):
                raise TypeError(f"cannot assign '{type(value).__name__}' as buffer '{name}' "
                                "(a numpy array, a Tensor or None expected)")
            buffers[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as parameter '{name}' "
                                "(nn.Parameter or None expected)")
            del params[name]
        elif name in modules:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as child module '{name}' "
                                "(nn.Module or None expected)")
            del modules[name]
        elif name in _REGISTRIES:
            if name == "_modules" and not isinstance(value, _Registry):
                value = _Registry(value)  # Sequential's cached plan watches its version
        elif isinstance(value, (list, tuple, dict)):
            error = _plain_container_error(self, name, value)
            if error is not None:
                raise error
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        d = self.__dict__
        for key in _REGISTRIES:
            registry = d.get(key)
            if registry is not None and name in registry:
                del registry[name]
        d.get("_non_persistent_buffers_set", set()).discard(name)
        object.__delattr__(self, name)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        # Cheap for nested calls (their input is a Tensor): two type checks per argument.
        for a in args:
            if type(a) is np.ndarray and a.dtype.kind == "f" or type(a) is list:
                args = _cast_inputs(self, args)
                break
        return self.forward(*args, **kwargs)

    # -- registration -----------------------------------------------------------------------
    def add_module(self, name: str, module: "Module | None") -> None:
        """Register ``module`` as the child ``name`` (as assigning the attribute does, for
        names that are not identifiers: "0", "1", ...). None unregisters the name."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        _check_name(self, name, "module", self._modules)
        setattr(self, name, module)

    register_module = add_module

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` under ``name`` (None unregisters it)."""
        if "_parameters" not in self.__dict__:
            raise AttributeError("cannot assign parameter before Module.__init__() call")
        _check_name(self, name, "parameter", self._parameters)
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign '{type(param).__name__}' object to parameter '{name}' "
                            "(nn.Parameter or None required)")
        setattr(self, name, param)

    def register_buffer(self, name: str, tensor: np.ndarray | Tensor | None, persistent: bool = True) -> None:
        """Register ``tensor`` (a numpy array or a Tensor; None reserves the name) as a buffer:
        state the model keeps but no optimizer trains. ``state_dict()`` saves it unless
        ``persistent`` is False; ``to(dtype)`` casts it if it is floating."""
        if "_buffers" not in self.__dict__:
            raise AttributeError("cannot assign buffer before Module.__init__() call")
        _check_name(self, name, "buffer", self._buffers)
        if isinstance(tensor, Parameter):
            raise TypeError(f"cannot register the Parameter '{name}' as a buffer; use register_parameter")
        if tensor is not None and not isinstance(tensor, (np.ndarray, Tensor)):
            raise TypeError(f"cannot assign '{type(tensor).__name__}' object to buffer '{name}' "
                            "(a numpy array, a Tensor or None required)")
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers_set.discard(name)
        else:
            self._non_persistent_buffers_set.add(name)
        object.__setattr__(self, name, tensor)

    # -- traversal ------------------------------------------------------------------------
    def named_modules(self, memo: set[int] | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Iterator[tuple[str, "Module"]]:
        """(dotted name, module) for this module and every submodule, depth first; a module
        reachable under several names appears once (the first), unless ``remove_duplicate``
        is False."""
        if memo is None:
            memo = set()
        if id(self) in memo:
            return
        if remove_duplicate:
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(memo, f"{prefix}.{name}" if prefix else name, remove_duplicate)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        """(name, module) of the direct submodules, each module once."""
        seen: set[int] = set()
        for name, child in self._modules.items():
            if id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self) -> Iterator["Module"]:
        for _, child in self.named_children():
            yield child

    def _named_members(self, registry: str, prefix: str, recurse: bool, remove_duplicate: bool,
                       skip: Callable[["Module", str], bool] | None = None) -> Iterator[tuple[str, Any]]:
        seen: set[int] = set()
        modules = (self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse
                   else [(prefix, self)])
        for module_prefix, module in modules:
            for name, v in getattr(module, registry).items():
                if v is None or (skip is not None and skip(module, name)):
                    continue
                if remove_duplicate:
                    if id(v) in seen:
                        continue
                    seen.add(id(v))
                yield (f"{module_prefix}.{name}" if module_prefix else name), v

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) pairs; a parameter shared by two modules appears once."""
        return self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True) -> Iterator[tuple[str, np.ndarray | Tensor]]:
        """(dotted name, buffer) pairs, persistent or not; buffers set to None are skipped."""
        return self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[np.ndarray | Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn: Callable[["Module"], Any]) -> "Module":
        """Call ``fn`` on every submodule (children first, recursively), then on this module."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # -- modes ----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Training mode (dropout active); ``eval()`` is ``train(False)``."""
        if not isinstance(mode, (bool, np.bool_)):
            raise ValueError(f"training mode is expected to be boolean, got {type(mode).__name__}")
        object.__setattr__(self, "training", bool(mode))
        for child in self.children():
            child.train(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    # -- dtype and device -------------------------------------------------------------------
    def to(self, *args: Any, **kwargs: Any) -> "Module":
        """torch's ``to(dtype)``, ``to(device, dtype)``, ``to(device=..., dtype=...)``,
        ``to(tensor)``: cast every parameter (and its gradient) and every floating buffer to a
        floating ``dtype``, in place. The device "cpu" is the only one and changes nothing.

        A cast must come before an optimizer is made, as with torch: an optimizer packs the
        parameters into its flat buffer of one dtype, and ``to`` refuses to change the dtype of
        parameters that live there (a ``to`` that changes nothing is always fine)."""
        return self._cast(_parse_to(type(self).__name__, args, kwargs), "to")

    def double(self) -> "Module":
        """Cast floating parameters and buffers to float64 (see ``to``)."""
        return self._cast(np.dtype(np.float64), "double")

    def float(self) -> "Module":
        """Cast floating parameters and buffers to float32 (see ``to``)."""
        return self._cast(np.dtype(np.float32), "float")

    def cpu(self) -> "Module":
        """The model itself: the CPU is distbp's only device."""
        return self

    def _cast(self, dtype: np.dtype | None, how: str) -> "Module":
        if dtype is None:
            return self
        params = [p for p in self.parameters() if p.data.dtype != dtype]
        bound = [p for p in params if p._flat is not None]
        if bound:
            call = f"to({dtype})" if how == "to" else f"{how}()"
            raise RuntimeError(f"{type(self).__name__}.{call}: its parameters are in an optimizer's "
                               f"{bound[0]._flat.data.dtype} flat buffer; cast the model before creating "
                               "the optimizer (as with torch)")
        for p in params:
            p.data = p.data.astype(dtype)
            if p.grad is not None:  # a gradient keeps its parameter's dtype
                p.grad = p.grad.astype(dtype)
        for module in self.modules():
            for name, b in list(module._buffers.items()):
                if b is not None and b.dtype.kind == "f" and b.dtype != dtype:
                    new = Tensor(b.data, dtype=dtype) if isinstance(b, Tensor) else b.astype(dtype)
                    module._buffers[name] = new
                    object.__setattr__(module, name, new)
        return self

    # -- state ----------------------------------------------------------------------------
    def _state_items(self) -> Iterator[tuple[str, Any]]:
        """(dotted name, parameter or persistent buffer), in state_dict order: module by module,
        each one's parameters, then its buffers."""
        seen: set[int] = set()
        for prefix, module in self.named_modules():
            dot = prefix + "." if prefix else ""
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield dot + name, p
            transient = module._non_persistent_buffers_set
            for name, b in module._buffers.items():
                if b is not None and name not in transient and id(b) not in seen:
                    seen.add(id(b))
                    yield dot + name, b

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter's and persistent buffer's values, by dotted name."""
        return OrderedDict((name, np.array(v.data if isinstance(v, Tensor) else v, copy=True))
                           for name, v in self._state_items())

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Copy values into the parameters and persistent buffers in place (flat views stay
        valid). Every missing or unexpected name, shape mismatch and impossible cast is listed
        in one error, and then nothing is loaded."""
        own = {name: (v.data if isinstance(v, Tensor) else v) for name, v in self._state_items()}
        problems = []
        missing = [n for n in own if n not in state]
        unexpected = [n for n in state if n not in own]
        if strict and missing:
            problems.append("missing: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected: " + ", ".join(unexpected))
        values = {}
        for name in [n for n in own if n in state]:
            value = np.asarray(state[name])
            if value.shape != own[name].shape:
                problems.append(f"{name}: shape {value.shape} in the state dict, {own[name].shape} in the model")
            elif not np.can_cast(value.dtype, own[name].dtype, casting="same_kind"):
                problems.append(f"{name}: dtype {value.dtype} in the state dict cannot be cast to "
                                f"{own[name].dtype}")
            values[name] = value
        if problems:
            raise ShapeError(f"load_state_dict into {type(self).__name__}: " + "; ".join(problems))
        for name, value in values.items():
            np.copyto(own[name], value, casting="same_kind")

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            lines.append(f"  ({name}): " + repr(child).replace("\n", "\n  "))
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


def _index(idx: Any, n: int, owner: str) -> int:
    """``idx`` (an int, negative counting from the end) as a position in 0..n-1."""
    idx = operator.index(idx)
    if not -n <= idx < n:
        raise IndexError(f"{owner}: index {idx} is out of range for {n} modules")
    return idx % n


class Sequential(Module):
    """Modules applied in order; registered under the names "0", "1", ..., or, given one
    OrderedDict of name -> module (torch's form), under its names.

    ``forward`` runs a Linear followed by a fused activation (ReLU, Tanh, Sigmoid) as one op
    (``Linear.forward_activated``); the plan of which layers pair up is cached and rebuilt when
    the modules change."""

    # (the _modules registry, its version, the (layer, fused activation or None) steps, the
    # layers) as of the last plan; the class default matches no registry.
    _plan: tuple = (None, -1, (), ())

    def __init__(self, *args: Module) -> None:
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for key, module in args[0].items():
                if not isinstance(module, Module):
                    raise TypeError(f"Sequential: the OrderedDict's entry {key!r} is a {type(module).__name__}, "
                                    "not a Module")
                self.add_module(key, module)
            return
        for i, module in enumerate(args):
            if not isinstance(module, Module):
                if isinstance(module, Mapping):
                    hint = "; to name the layers, pass one collections.OrderedDict of name -> module"
                elif isinstance(module, (list, tuple)):
                    hint = f"; unpack it: Sequential(*{type(module).__name__.lower()}_of_modules)"
                else:
                    hint = ""
                raise TypeError(f"Sequential: argument {i} is a {type(module).__name__}, not a Module{hint}")
            self.add_module(str(i), module)

    def _steps(self) -> tuple:
        """The cached plan (see ``_plan``), rebuilt if the modules changed since."""
        modules = self._modules
        plan = self._plan
        if plan[0] is modules and plan[1] == modules.version:
            return plan
        layers = tuple(modules.values())
        steps = []
        i = 0
        while i < len(layers):
            layer = layers[i]
            if i + 1 < len(layers) and getattr(layers[i + 1], "fused", None) and hasattr(layer, "forward_activated"):
                steps.append((layer, layers[i + 1]))
                i += 2
            else:
                steps.append((layer, None))
                i += 1
        plan = (modules, modules.version, tuple(steps), layers)
        object.__setattr__(self, "_plan", plan)
        return plan

    def forward(self, x: Tensor) -> Tensor:
        # A Linear followed by an activation runs as one op where it can (Linear.forward_activated):
        # the pre-activation, which no VJP reads, is then overwritten instead of kept by the graph.
        modules = self._modules
        plan = self._plan
        if plan[0] is not modules or plan[1] != modules.version:
            plan = self._steps()
        for layer, act in plan[2]:
            if act is None:
                x = layer(x)
            else:
                x = layer.forward_activated(x, act)
        return x

    def __getitem__(self, idx: int | slice) -> "Module | Sequential":
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        layers = self._steps()[3]
        return layers[_index(idx, len(layers), type(self).__name__)]

    def __setitem__(self, idx: int, module: Module) -> None:
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}: cannot set item to a {type(module).__name__}, not a Module")
        keys = list(self._modules)
        setattr(self, keys[_index(idx, len(keys), type(self).__name__)], module)

    def __delitem__(self, idx: int | slice) -> None:
        keys = list(self._modules)
        if isinstance(idx, slice):
            doomed = keys[idx]
        else:
            doomed = [keys[_index(idx, len(keys), type(self).__name__)]]
        for key in doomed:
            delattr(self, key)
        if all(k == str(i) for i, k in enumerate(keys)):  # numbered: renumber, as torch
            self._reset(list(self._modules.values()))

    def _reset(self, modules: list[Module]) -> None:
        """Register ``modules`` as "0", "1", ... in place of the current children."""
        for key in list(self._modules):
            delattr(self, key)
        for i, module in enumerate(modules):
            self.add_module(str(i), module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> "Sequential":
        """Add ``module`` at the end, under the name ``str(len(self))``."""
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.append: a {type(module).__name__} is not a Module")
        name = str(len(self))
        if name in self._modules:
            raise KeyError(f"{type(self).__name__}.append: the name {name!r} is taken by a named module")
        self.add_module(name, module)
        return self

    def extend(self, modules: Any) -> "Sequential":
        for module in modules:
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> "Sequential":
        """Insert ``module`` before position ``index`` (-len(self) <= index <= len(self)); the
        modules are renumbered "0", "1", ..."""
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.insert: a {type(module).__name__} is not a Module")
        n = len(self._modules)
        index = operator.index(index)
        if not -n <= index <= n:
            raise IndexError(f"{type(self).__name__}.insert: index {index} is out of range for {n} modules")
        if any(k != str(i) for i, k in enumerate(self._modules)):
            raise KeyError(f"{type(self).__name__}.insert: the modules have names ({', '.join(self._modules)}); "
                           "insert renumbers them, so build a new Sequential(OrderedDict(...)) instead")
        layers = list(self._modules.values())
        layers.insert(index + n if index < 0 else index, module)
        self._reset(layers)
        return self

    def pop(self, idx: int | slice) -> "Module | Sequential":
        v = self[idx]
        del self[idx]
        return v
