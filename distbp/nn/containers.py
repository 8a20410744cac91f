"""Containers with torch.nn's names: ModuleList, ModuleDict and ParameterList (Sequential is
in module.py). What they hold is registered, so parameters(), state_dict(), to() and
optimizers see it, which a plain list or dict attribute would not (Module refuses those)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Iterator

import numpy as np

from ..autodiff.tensor import Tensor
from .module import Module, _index
from .parameter import Parameter


class ModuleList(Module):
    """Modules in a list, registered under "0", "1", ... (renumbered after a deletion or an
    insertion, so names always follow positions). It has no forward: iterate over it."""

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _position(self, idx: Any) -> str:
        return str(_index(idx, len(self._modules), type(self).__name__))

    def _reset(self, modules: list[Module]) -> None:
        for key in list(self._modules):
            delattr(self, key)
        for i, module in enumerate(modules):
            self.add_module(str(i), module)

    @staticmethod
    def _checked(module: Any, what: str) -> Module:
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList.{what}: a {type(module).__name__} is not a Module")
        return module

    def __getitem__(self, idx: int | slice) -> "Module | ModuleList":
        if isinstance(idx, slice):
            return type(self)(list(self._modules.values())[idx])
        return self._modules[self._position(idx)]

    def __setitem__(self, idx: int, module: Module) -> None:
        setattr(self, self._position(idx), self._checked(module, "__setitem__"))

    def __delitem__(self, idx: int | slice) -> None:
        modules = list(self._modules.values())
        if isinstance(idx, slice):
            del modules[idx]
        else:
            del modules[int(self._position(idx))]
        self._reset(modules)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __iadd__(self, modules: Iterable[Module]) -> "ModuleList":
        return self.extend(modules)

    def __add__(self, other: Iterable[Module]) -> "ModuleList":
        combined = ModuleList(self)
        return combined.extend(other)

    def append(self, module: Module) -> "ModuleList":
        self.add_module(str(len(self)), self._checked(module, "append"))
        return self

    def extend(self, modules: Iterable[Module]) -> "ModuleList":
        if not isinstance(modules, Iterable):
            raise TypeError(f"ModuleList.extend should be called with an iterable, but got {type(modules).__name__}")
        for module in list(modules):
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> None:
        """Insert ``module`` before ``index``, as list.insert (which clamps an index past
        either end)."""
        modules = list(self._modules.values())
        modules.insert(index, self._checked(module, "insert"))
        self._reset(modules)

    def pop(self, idx: int | slice = -1) -> "Module | ModuleList":
        v = self[idx]
        del self[idx]
        return v


class ModuleDict(Module):
    """Modules by name, registered under their keys, in insertion order (``update`` keeps
    the order of the mapping or of the (key, module) pairs it is given). No forward."""

    def __init__(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __setitem__(self, key: str, module: Module) -> None:
        if not isinstance(module, Module):
            raise TypeError(f"ModuleDict[{key!r}]: a {type(module).__name__} is not a Module")
        self.add_module(key, module)

    def __delitem__(self, key: str) -> None:
        if key not in self._modules:
            raise KeyError(key)
        delattr(self, key)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __contains__(self, key: object) -> bool:
        return key in self._modules

    def clear(self) -> None:
        for key in list(self._modules):
            delattr(self, key)

    def pop(self, key: str) -> Module:
        v = self[key]
        del self[key]
        return v

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()

    def update(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]]) -> None:
        """Add (or replace) the modules of a mapping, or of an iterable of (key, module) pairs."""
        if not isinstance(modules, Iterable):
            raise TypeError("ModuleDict.update should be called with an iterable of key/value pairs, "
                            f"but got {type(modules).__name__}")
        if isinstance(modules, (Mapping, ModuleDict)):
            for key, module in modules.items():
                self[key] = module
            return
        for j, pair in enumerate(modules):
            if not isinstance(pair, Iterable):
                raise TypeError(f"ModuleDict update sequence element #{j} should be Iterable; is "
                                f"{type(pair).__name__}")
            pair = list(pair)
            if len(pair) != 2:
                raise ValueError(f"ModuleDict update sequence element #{j} has length {len(pair)}; 2 is required")
            self[pair[0]] = pair[1]


def _as_parameter(value: Any) -> Parameter:
    """A Parameter for ``value``: itself, or a new Parameter holding a copy of a Tensor's
    values (in its dtype) or an array's (Parameter's default dtype, as ``nn.Parameter(arr)``)."""
    if isinstance(value, Parameter):
        return value
    if isinstance(value, Tensor):
        return Parameter(value.data, dtype=value.dtype)
    if isinstance(value, np.ndarray):
        return Parameter(value)
    raise TypeError(f"ParameterList holds Parameters (Tensors and arrays are wrapped in one), "
                    f"not {type(value).__name__}")


class ParameterList(Module):
    """Parameters in a list, registered under "0", "1", ... (so a model's ``named_parameters()``
    shows them as "<attribute>.0", ...). Tensors and arrays given are wrapped in Parameters."""

    def __init__(self, values: Iterable[Any] | None = None) -> None:
        super().__init__()
        if values is not None:
            self.extend(values)

    def _position(self, idx: Any) -> str:
        return str(_index(idx, len(self._parameters), type(self).__name__))

    def __getitem__(self, idx: int | slice) -> "Parameter | ParameterList":
        if isinstance(idx, slice):
            return type(self)(list(self._parameters.values())[idx])
        return self._parameters[self._position(idx)]

    def __setitem__(self, idx: int, param: Any) -> None:
        setattr(self, self._position(idx), _as_parameter(param))

    def __len__(self) -> int:
        return len(self._parameters)

    def __iter__(self) -> Iterator[Parameter]:
        return iter(self._parameters.values())

    def __iadd__(self, values: Iterable[Any]) -> "ParameterList":
        return self.extend(values)

    def append(self, value: Any) -> "ParameterList":
        self.register_parameter(str(len(self)), _as_parameter(value))
        return self

    def extend(self, values: Iterable[Any]) -> "ParameterList":
        # A Tensor or an array is iterable, but never meant to be unpacked here.
        if not isinstance(values, Iterable) or isinstance(values, (Tensor, np.ndarray)):
            raise TypeError("ParameterList.extend should be called with an iterable, but got "
                            f"{type(values).__name__}")
        for value in list(values):
            self.append(value)
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("ParameterList should not be called.")

    def extra_repr(self) -> str:
        return "\n".join(f"  ({i}): Parameter containing: [{p.dtype} of size {'x'.join(map(str, p.shape))}]"
                         for i, p in enumerate(self))

    def __repr__(self) -> str:
        body = self.extra_repr()
        return f"{type(self).__name__}(\n{body}\n)" if body else f"{type(self).__name__}()"


__all__ = ["ModuleList", "ModuleDict", "ParameterList"]
