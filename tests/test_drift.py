"""tests/drift.py, which measures the README's tolerance figures, run short: the same N is
bitwise, another N stays within 1e-5 over a short run."""

from __future__ import annotations

import pytest

from drift import measure

pytestmark = pytest.mark.slow


def test_drift_measures_bitwise_same_n_and_small_drift_for_another_n(tmp_path):
    res = measure(60, [2, 3], tmp_path)
    assert res["steps"] == [6, 12, 18, 24, 30, 36, 42, 48, 54, 60]
    assert res["same_n_bitwise"]
    for n in (2, 3):
        diffs = res["max_abs_diff"][n]
        assert 0 < max(diffs) <= 1e-5, (n, diffs)  # not bitwise (summation order), but close
