"""The elastic parameter server's protocol, driven in-process over loopback with raw sockets
(docs/ARCHITECTURE.md, "Elastic parameter server"): a worker lost mid-step gets the step
re-cut among those left (``recut``, a new membership generation; gradients of the old one
are dropped as stale) and is told it was dropped; below ``comm.min_workers`` the job stops as
a fail-stop one does; a hello while the job runs joins at the next step boundary (``welcome``,
then ``start`` with the current parameters) up to ``comm.max_workers``; and a server whose
``comm.workers`` do not all come starts with ``comm.min_workers``. The processes that train
through all of this are in tests/test_elastic.py."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from distbp.comm import PeerLost
from test_zmq_admission import HASH, NUMEL, Raw, Served, comm_cfg, free_endpoint


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _job(ctx, n: int, **cfg) -> tuple[Served, list[Raw]]:
    """A server with ``n`` raw workers admitted (ranks 0..n-1, pids 20..), started at step 0."""
    endpoint = free_endpoint()
    s = Served(comm_cfg(endpoint, workers=n, **cfg))
    s.start(s.server.join, HASH, NUMEL)
    raws = []
    for r in range(n):
        raw = Raw(ctx, endpoint, f"w-{r}".encode())
        assert raw.hello(20 + r) and raw.answer({"welcome"})["rank"] == r
        raws.append(raw)
    s.join()
    assert s.error is None, s.error
    assert s.server.start(0, None, np.zeros(NUMEL, np.float32), list) == 0
    for r, raw in enumerate(raws):
        start = raw.answer({"start"})
        assert (start["step"], start["rank"], start["world"], start["gen"]) == (0, r, n, 0)
    return s, raws


class _Step:
    """One server step in a thread: the summed stats it returned, the parameters after it."""

    def __init__(self, s: Served, params: np.ndarray | None = None) -> None:
        self.params = np.zeros(NUMEL, np.float32) if params is None else params
        self.grad = np.zeros(NUMEL, np.float32)
        self.out = None

        def update():
            self.params -= self.grad

        def step():
            self.out = s.server.step(self.grad, self.params, update, np.zeros(3))

        s.start(step)


def _until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _grad(raw: Raw, value: float, step: int, rank: int, gen: int, loss: float = 0.5) -> None:
    assert raw.send("grad", np.full(NUMEL, value, np.float32), step=step, rank=rank, gen=gen, loss=loss)


def test_a_worker_lost_mid_step_gets_the_step_recut_among_the_rest(ctx):
    s, (a, b, c) = _job(ctx, 3, min_workers=2)
    try:
        step = _Step(s)
        _grad(a, 1.0, 0, 0, 0)
        _grad(b, 2.0, 0, 1, 0)
        _until(lambda: s.server.counters.accepted.get("grad") == 2)
        assert c.send("bye", rank=2)  # lost in the middle of step 1, after the others sent theirs
        for r, raw in enumerate((a, b)):
            recut = raw.answer({"recut"})
            assert (recut["step"], recut["rank"], recut["world"], recut["gen"]) == (0, r, 2, 1)
        assert "worker 2 (test:22) left during step 1" in c.answer({"drop"})["reason"]
        _grad(a, 100.0, 0, 0, 0)  # late, cut for three workers: dropped as stale
        _grad(a, 4.0, 0, 0, 1)
        _grad(b, 8.0, 0, 1, 1)
        s.join()
        assert s.error is None, s.error
        assert list(step.out) == [1.0, 0.0, 2.0]  # the two losses summed; two workers computed it
        assert np.array_equal(step.params, np.full(NUMEL, -12.0, np.float32))  # 4 + 8, nothing of the stale ones
        for r, raw in enumerate((a, b)):
            params = raw.answer({"params"})
            assert (params["step"], params["rank"], params["world"], params["gen"]) == (1, r, 2, 1)
        assert s.server.counters.dropped.get("stale") == 1
        assert s.server.size == 2
        assert ("worker 2 (test:22) left during step 1: the job goes on without it; world size 2 from step 1, "
                "which is computed again by the workers left") in s.log, s.log
    finally:
        s.server.close()


def test_a_silent_worker_is_dropped_after_timeout_s_and_the_job_goes_on(ctx):
    s, (a, b) = _job(ctx, 2, min_workers=1, timeout_s=1.0)
    try:
        step = _Step(s)
        _grad(b, 1.0, 0, 1, 0)  # a says nothing at all: not even a heartbeat
        recut = b.answer({"recut"}, timeout_s=5)
        assert (recut["rank"], recut["world"], recut["gen"]) == (0, 1, 1)
        _grad(b, 3.0, 0, 0, 1)
        s.join()
        assert s.error is None and list(step.out) == [0.5, 0.0, 1.0]
        assert np.array_equal(step.params, np.full(NUMEL, -3.0, np.float32))
        assert "worker 0 (test:20) silent for 1 s (comm.timeout_s) during step 1" in a.answer({"drop"})["reason"]
    finally:
        s.server.close()


def test_below_min_workers_the_job_stops_as_a_fail_stop_one(ctx):
    s, (a, b) = _job(ctx, 2)  # min_workers defaults to comm.workers
    try:
        _Step(s)
        _grad(a, 1.0, 0, 0, 0)
        assert b.send("bye", rank=1)
        s.join()
        assert isinstance(s.error, PeerLost)
        assert str(s.error) == ("worker 1 (test:21) left during step 1; 1 worker(s) left, fewer than "
                                "comm.min_workers (2)")
        assert a.answer({"recut"}, timeout_s=0.5) is None  # nobody is asked to go on
    finally:
        s.server.close()


def test_a_hello_during_a_step_joins_at_the_step_boundary(ctx):
    s, (a, b) = _job(ctx, 2, max_workers=3)
    endpoint = s.server.cfg["endpoint"]
    try:
        first = _Step(s)
        d = Raw(ctx, endpoint, b"w-new")
        assert d.hello(24)
        _until(lambda: "asks to join" in s.log)  # read during the step, which cannot end without a and b
        _grad(a, 1.0, 0, 0, 0)
        _grad(b, 2.0, 0, 1, 0)
        s.join()
        assert s.error is None and list(first.out) == [1.0, 0.0, 2.0]  # the step of two
        welcome = d.answer({"welcome"})
        assert (welcome["rank"], welcome["world"], welcome["step"]) == (2, 3, 1)
        start = d.answer({"start"})
        assert (start["step"], start["rank"], start["world"], start["gen"]) == (1, 2, 3, 1)
        for r, raw in enumerate((a, b)):
            params = raw.answer({"params"})
            assert (params["step"], params["rank"], params["world"], params["gen"]) == (1, r, 3, 1)
        assert "worker test:24 asks to join: admitted at the next step boundary" in s.log
        assert "worker 2 joined: test:24" in s.log and "world size 3 from step 2" in s.log, s.log
        # The next step has three workers, the newcomer's gradient summed in rank order.
        second = _Step(s, first.params)
        for r, (raw, value) in enumerate(((a, 1.0), (b, 2.0), (d, 4.0))):
            _grad(raw, value, 1, r, 1)
        s.join()
        assert s.error is None and list(second.out) == [1.5, 0.0, 3.0]
        assert np.array_equal(second.params, np.full(NUMEL, -10.0, np.float32))
    finally:
        s.server.close()


@pytest.mark.parametrize("hello, reason", [
    ({}, "the job already has its 2 worker(s) (comm.max_workers)"),
    ({"config_hash": "ffff"}, "config hash: worker 'ffff', server '0123456789abcdef'"),
])
def test_a_joiner_is_refused_when_the_job_is_full_or_it_differs(ctx, hello, reason):
    s, (a, b) = _job(ctx, 2, max_workers=2 if not hello else 3)
    try:
        _Step(s)
        d = Raw(ctx, s.server.cfg["endpoint"], b"w-new")
        from distbp import __version__

        assert d.send("hello", **{"version": __version__, "config_hash": HASH, "numel": NUMEL, "host": "test",
                                  "pid": 24, **hello})
        refuse = d.answer({"refuse", "welcome"})
        assert refuse["type"] == "refuse" and reason in refuse["reason"], refuse
        _grad(a, 1.0, 0, 0, 0)
        _grad(b, 2.0, 0, 1, 0)
        s.join()
        assert s.error is None and s.server.size == 2
    finally:
        s.server.close()


def test_a_server_whose_workers_do_not_all_come_starts_with_min_workers(ctx):
    endpoint = free_endpoint()
    s = Served(comm_cfg(endpoint, workers=3, min_workers=2, join_timeout_s=1.0))
    s.start(s.server.join, HASH, NUMEL)
    raws = [Raw(ctx, endpoint, f"w-{r}".encode()) for r in range(2)]
    try:
        for r, raw in enumerate(raws):
            assert raw.hello(20 + r) and raw.answer({"welcome"})["rank"] == r
        s.join()
        assert s.error is None and s.server.size == 2
        assert ("2 of 3 workers joined within 1 s (comm.join_timeout_s): starting with them (comm.min_workers 2)"
                in s.log), s.log
        s.server.start(None, None, np.zeros(NUMEL, np.float32), list)
        assert [raw.answer({"start"})["world"] for raw in raws] == [2, 2]
    finally:
        s.server.close()
