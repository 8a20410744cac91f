"""Shared fixture: a fixed seed for distbp's default generator, and a guard on grad mode."""

from __future__ import annotations

import importlib

import pytest

import distbp as db
from distbp.autodiff import is_grad_enabled

# The module, not the function of the same name that distbp.autodiff exports.
_tensor_module = importlib.import_module("distbp.autodiff.tensor")


@pytest.fixture(autouse=True)
def _fixed_seed_and_grad_mode():
    """Every test starts from the same default generator and with grad mode on, and must
    leave grad mode on: a leaked no_grad fails the test that leaked it (and only that one)."""
    db.manual_seed(0)
    yield
    if not is_grad_enabled():
        _tensor_module._grad_mode.enabled = True
        pytest.fail("the test left grad mode disabled (a no_grad that did not restore it)")
