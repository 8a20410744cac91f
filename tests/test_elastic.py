"""The elastic parameter server with real processes on loopback: a worker lost at a chosen step
(kill -9, SIGSTOP) costs no restart and no lost step, a worker that joins at a chosen step is
admitted at the step boundary, and the final parameters are bitwise those of the job whose
workers changed at that step (run in two parts through a checkpoint), and within the
N-invariance tolerance of the undisturbed job and of one process. The trials are in
tests/faults/elastic_faults.py (the fault report runs them too)."""

from __future__ import annotations

import pytest

from faults.elastic_faults import drop_and_rejoin, join_worker, lose_worker

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5  # N-invariance over FINAL steps (README, "How exact")


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("elastic")  # references shared by the tests


@pytest.mark.parametrize("how, seed", [("SIGKILL", 0), ("SIGSTOP", 1)])
def test_a_worker_lost_at_a_chosen_step_costs_no_restart_and_no_step(tmp_root, how, seed):
    f = lose_worker(tmp_root, seed, how, composite_check=True)
    assert f["completed"] and f["no_restart"] and f["leftover_processes"] == 0, f
    assert f["world_sizes_as_expected"], f  # 3 to the step before the loss, 2 from it on
    assert f["bitwise_composite"], f
    assert f["max_abs_diff"] <= TOLERANCE and f["max_abs_diff_single"] <= TOLERANCE, f
    assert f["says"] and f"worker {f['rank']} (" in f["says"][0], f
    assert f["victim_told"], f
    assert f["seconds_fault_to_step_end"] <= f["limit_s"], f


def test_a_worker_that_joins_at_a_chosen_step_is_admitted_at_the_step_boundary(tmp_root):
    f = join_worker(tmp_root, 0, composite_check=True)
    assert f["admitted"] and f["completed"] and f["leftover_processes"] == 0, f
    assert f["world_sizes_as_expected"], f  # 2 to the step it asked in, 3 after
    assert f["bitwise_composite"], f
    assert f["max_abs_diff"] <= TOLERANCE, f


def test_a_dropped_worker_that_runs_again_rejoins_at_the_next_step_boundary(tmp_root):
    f = drop_and_rejoin(tmp_root, 2)
    assert f["dropped"] and f["rejoined_said"] and f["admitted"], f
    assert f["completed"] and f["leftover_processes"] == 0, f
    assert f["world_sizes_as_expected"], f  # 3, then 2 from the step it stopped in, 3 again after K+3
    assert f["max_abs_diff"] <= TOLERANCE, f
