"""Your own code named in a config: ``"pkg.module:function"`` imported from the working
directory or PYTHONPATH. Each failure is one ConfigError naming the key, the import path
and the cause."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable

from .config import ConfigError


def import_object(spec: str, key: str) -> Callable[..., Any]:
    """The callable ``spec`` ("pkg.module:function", the attribute may be dotted) names."""
    module_name, _, attr = spec.partition(":")
    cwd = os.getcwd()
    # A console script's sys.path starts with its own directory, not the working directory,
    # where `python -m` and a plain `python script.py` users expect their modules to be found.
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ConfigError(f"{key}: cannot import {spec}: no module named {e.name!r} in the working "
                              f"directory ({cwd}) or on PYTHONPATH") from None
        raise ConfigError(f"{key}: importing {spec} failed: ModuleNotFoundError: {e}") from None
    except Exception as e:  # the user's module raised while it was imported
        raise ConfigError(f"{key}: importing {spec} failed: {type(e).__name__}: {e}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key}: {spec}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key}: {spec} is not a function or class but an object of type {type(obj).__name__}")
    return obj


def call_factory(fn: Callable[..., Any], spec: str, key: str, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; an exception inside it becomes a ConfigError naming it."""
    try:
        return fn(*args, **kwargs)
    except ConfigError:
        raise
    except Exception as e:
        shown = ", ".join(["data_info"] * bool(args) + [f"{k}={v!r}" for k, v in kwargs.items()])
        raise ConfigError(f"{key}: {spec}({shown}) raised {type(e).__name__}: {e}") from None
