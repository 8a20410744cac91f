"""No unsafe loading anywhere in the package.

Walks every ``*.py`` under ``distbp/`` with :mod:`ast` (so comments and docstrings never
count) and fails, naming file:line, on: importing pickle/cPickle/dill/marshal (or using them
as attributes), calling ``eval``/``exec``, ``allow_pickle=True`` anywhere, ``yaml.load`` /
``yaml.unsafe_load`` / ``yaml.full_load`` / a ``Loader=`` keyword, ``np.load`` /
``numpy.load`` without ``allow_pickle=False``, and ``torch.load``. A self-test feeds the
checker snippets with each offence, so this test can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "distbp"

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "marshal", "shelve"}
UNSAFE_YAML = {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all", "full_load_all"}
NUMPY_NAMES = {"np", "numpy"}


def _dotted(node: ast.AST) -> str | None:
    """'a.b.c' for an Attribute/Name chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _is_const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def find_offences(source: str, filename: str = "<string>") -> list[str]:
    """Every unsafe-loading offence in ``source`` as 'filename:line: what'."""
    tree = ast.parse(source, filename=filename)
    found: list[str] = []

    def add(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in UNSAFE_MODULES:
                    add(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if mod.split(".")[0] in UNSAFE_MODULES:
                add(node, f"from {mod} import ...")
            for alias in node.names:
                if alias.name in UNSAFE_MODULES:
                    add(node, f"from {mod} import {alias.name}")
                if mod.split(".")[0] == "yaml" and alias.name in UNSAFE_YAML | {"Loader", "UnsafeLoader", "FullLoader"}:
                    add(node, f"from yaml import {alias.name}")
        elif isinstance(node, ast.Attribute):
            base = _dotted(node.value)
            if base is not None and base.split(".")[0] in UNSAFE_MODULES:
                add(node, f"use of {base}.{node.attr}")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in {"eval", "exec"}:
                add(node, f"call to {func.id}()")
            name = _dotted(func)
            if name is not None:
                head, _, last = name.rpartition(".")
                if head.split(".")[-1:] == ["yaml"] and last in UNSAFE_YAML:
                    add(node, f"call to {name}() (only yaml.safe_load/safe_dump/dump allowed)")
                if head in {"builtins", "__builtins__"} and last in {"eval", "exec"}:
                    add(node, f"call to {name}()")
                if head == "torch" and last == "load":
                    add(node, "call to torch.load()")
                if head in NUMPY_NAMES and last == "load":
                    kw = {k.arg: k.value for k in node.keywords if k.arg}
                    if not _is_const(kw.get("allow_pickle"), False):
                        add(node, f"call to {name}() without allow_pickle=False")
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not _is_const(kw.value, False):
                    add(node, f"allow_pickle={ast.unparse(kw.value)}")
                if kw.arg == "Loader":
                    add(node, f"Loader={ast.unparse(kw.value)} (use yaml.safe_load)")
    return found


def package_offences() -> list[str]:
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        offences += find_offences(path.read_text(encoding="utf-8"), rel)
    return offences


def test_the_package_has_python_files():
    assert len(list(PACKAGE.rglob("*.py"))) > 10


def test_no_unsafe_loading_in_the_package():
    offences = package_offences()
    assert not offences, "unsafe loading in distbp/:\n" + "\n".join(offences)


BAD_SNIPPETS = [
    "import pickle",
    "import cPickle as p",
    "import dill",
    "import marshal",
    "from pickle import loads",
    "from _pickle import loads",
    "import os, pickle",
    "x = eval('1')",
    "exec('x = 1')",
    "import numpy as np\nnp.load('f.npy', allow_pickle=True)",
    "import numpy as np\nnp.load('f.npz')",
    "import numpy\nnumpy.load('f.npz', allow_pickle=flag)",
    "import numpy as np\nnp.lib.format.read_array(f, allow_pickle=True)",
    "import yaml\nyaml.load(s)",
    "import yaml\nyaml.load(s, Loader=yaml.SafeLoader)",
    "import yaml\nyaml.unsafe_load(s)",
    "import yaml\nyaml.full_load(s)",
    "from yaml import load",
    "import torch\ntorch.load('m.pt')",
]


@pytest.mark.parametrize("source", BAD_SNIPPETS)
def test_the_checker_catches_each_offence(source):
    offences = find_offences(source, "snippet.py")
    assert offences, f"not caught: {source!r}"
    assert all(o.startswith("snippet.py:") for o in offences)


def test_the_checker_reports_the_line():
    offences = find_offences("import json\n\nimport pickle\n", "m.py")
    assert offences == ["m.py:3: import pickle"]


CLEAN = '''
"""Docstring mentioning pickle, eval(x), yaml.load and allow_pickle=True is fine."""
import json
import numpy as np
import yaml

# import pickle; eval("x"); np.load("f", allow_pickle=True)  -- comments do not count


def read(path, text):
    cfg = yaml.safe_load(text)
    out = yaml.safe_dump(cfg) + yaml.dump(cfg)
    arr = np.load(path, allow_pickle=False)
    z = np.load(path, mmap_mode="r", allow_pickle=False)
    model.eval()
    evaluate = "eval("
    return json.loads(out), arr, z, evaluate
'''


def test_a_clean_snippet_passes():
    assert find_offences(CLEAN, "clean.py") == []
