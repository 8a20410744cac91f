"""The layer direction of docs/ARCHITECTURE.md, kept by an AST walk over every module of
distbp/: autodiff <- nn <- optim; data, comm and metrics on numpy only; process at the
bottom; train ties them; the CLI only parses arguments and calls train. Imports inside
functions count as much as those at the top. A self-test shows the walk can fail."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distbp"

# Each layer and the layers it may import (itself always allowed).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "_version": set(),
    "process": {"errors"},
    "autodiff": {"errors"},
    "functional": {"autodiff", "errors"},
    "nn": {"autodiff", "functional", "errors"},
    "optim": {"nn", "autodiff", "errors"},
    "data": {"errors"},
    "comm": {"errors", "process", "_version"},
    "metrics": set(),
    "train": {"autodiff", "functional", "nn", "optim", "data", "comm", "process", "metrics", "errors", "_version"},
    "distributed": {"comm", "data", "nn", "optim", "errors"},
    "cli": {"errors", "train", "_version"},
    # The package's front door: the core names (distbp.nn, distbp.optim as torch.nn, torch.optim),
    # and distbp.load from train (imported when called).
    "__init__": {"autodiff", "functional", "nn", "optim", "_version", "train"},
}


RENAMED = {"__version__": "_version"}  # re-exported by the package from its module


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def imported_layers(source: str, module: Path) -> list[tuple[int, str]]:
    """(line, layer) of every distbp module that ``source`` (the file ``module``) imports."""
    rel = module.relative_to(PACKAGE)
    package = list(rel.parts[:-1])  # the module's own package, for relative imports
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == "distbp":
                target = node.module.split(".")[1:]
            else:
                continue
            if target:
                out.append((node.lineno, target[0]))
            else:  # "from .. import nn, optim" at the top of the package: each name is a layer
                out += [(node.lineno, RENAMED.get(a.name, a.name)) for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "distbp" and len(parts) > 1:
                    out.append((node.lineno, parts[1]))
    return out


def violations(source: str, module: Path) -> list[str]:
    layer = layer_of(module)
    allowed = ALLOWED[layer] | {layer}
    return [f"{module.relative_to(PACKAGE.parent)}:{line}: {layer} imports {target}"
            for line, target in imported_layers(source, module) if target not in allowed]


def test_every_module_has_a_layer():
    layers = {layer_of(p) for p in PACKAGE.rglob("*.py")}
    assert layers <= set(ALLOWED), sorted(layers - set(ALLOWED))


def test_imports_flow_one_way():
    found = [v for p in sorted(PACKAGE.rglob("*.py")) for v in violations(p.read_text(encoding="utf-8"), p)]
    assert not found, "\n".join(found)


def test_the_walk_catches_each_kind_of_import():
    cli = PACKAGE / "cli.py"
    assert violations("from .comm import PeerLost\n", cli) == ["distbp/cli.py:1: cli imports comm"]
    assert violations("def f():\n    from .data import DataError\n", cli) == ["distbp/cli.py:2: cli imports data"]
    assert violations("import distbp.autodiff.tensor\n", cli) == ["distbp/cli.py:1: cli imports autodiff"]
    data = PACKAGE / "data" / "loaders.py"
    assert violations("from ..autodiff import Tensor\n", data) == ["distbp/data/loaders.py:1: data imports autodiff"]
    assert violations("from .dataset import Dataset\n", data) == []
    assert violations("from ..nn import Module\n", PACKAGE / "optim" / "sgd.py") == []
    assert violations("from ..optim import SGD\n", PACKAGE / "nn" / "layers.py") == \
        ["distbp/nn/layers.py:1: nn imports optim"]


def test_the_autodiff_engine_stays_within_its_budget():
    # tensor.py holds the graph, Primitive, apply, unbroadcast, Tensor's operators and the
    # reverse-mode walk: readable in one sitting. The torch-style conveniences live in
    # torch_methods.py, composed from primitives; they define none (docs/ARCHITECTURE.md).
    engine = PACKAGE / "autodiff" / "tensor.py"
    assert len(engine.read_text().splitlines()) <= 600
    methods = ast.parse((PACKAGE / "autodiff" / "torch_methods.py").read_text())
    calls = {n.func.id for n in ast.walk(methods) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "Primitive" not in calls and "apply" not in calls
