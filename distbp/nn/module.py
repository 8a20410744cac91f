"""Module: the container of parameters and submodules, with torch.nn's names."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator, Mapping

import numpy as np

from ..autodiff.tensor import ShapeError, Tensor
from .parameter import Parameter


class Module:
    """Base class of layers and models. Assigning a Parameter or Module to an attribute
    registers it. ``named_parameters()`` lists a module's own parameters in assignment order,
    then each submodule's, recursively (torch's order)."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                 f"before assigning {name!r}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.forward(*args, **kwargs)

    # -- traversal ------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def children(self) -> Iterator["Module"]:
        yield from self._modules.values()

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) pairs; a parameter shared by two modules appears once."""
        seen: set[int] = set()
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # -- modes ----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Training mode (dropout active); ``eval()`` is ``train(False)``."""
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, dtype: Any) -> "Module":
        """Cast every parameter to ``dtype`` (float64 for gradcheck). Parameters leave their
        flat buffer, so call this before building an optimizer, as with torch."""
        for p in self.parameters():
            p._unbind()
            p.data = p.data.astype(dtype)
            if p.grad is not None:  # a gradient keeps its parameter's dtype
                p.grad = p.grad.astype(dtype)
        return self

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter's values, by dotted name."""
        return OrderedDict((name, p.data.copy()) for name, p in self.named_parameters())

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Copy values into the parameters in place (flat views stay valid). Every missing or
        unexpected name and every shape mismatch is listed in one error."""
        own = dict(self.named_parameters())
        problems = []
        missing = [n for n in own if n not in state]
        unexpected = [n for n in state if n not in own]
        if strict and missing:
            problems.append("missing: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected: " + ", ".join(unexpected))
        for name in [n for n in own if n in state]:
            shape = np.shape(state[name])
            if shape != own[name].shape:
                problems.append(f"{name}: shape {shape} in the state dict, {own[name].shape} in the model")
        if problems:
            raise ShapeError(f"load_state_dict into {type(self).__name__}: " + "; ".join(problems))
        for name in own.keys() & state.keys():
            np.copyto(own[name].data, np.asarray(state[name]), casting="same_kind")

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            lines.append(f"  ({name}): " + repr(child).replace("\n", "\n  "))
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied in order; registered under the names "0", "1", ..."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def forward(self, x: Tensor) -> Tensor:
        # A Linear followed by an activation runs as one op where it can (Linear.forward_activated):
        # the pre-activation, which no VJP reads, is then overwritten instead of kept by the graph.
        layers = list(self._modules.values())
        i = 0
        while i < len(layers):
            layer = layers[i]
            if i + 1 < len(layers) and getattr(layers[i + 1], "fused", None) and hasattr(layer, "forward_activated"):
                x = layer.forward_activated(x, layers[i + 1])
                i += 2
            else:
                x = layer(x)
                i += 1
        return x

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())
