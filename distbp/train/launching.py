"""What the command line needs of the process and the job, so that it imports only the
training layer (docs/ARCHITECTURE.md, "Layers")."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..comm import PeerLost
from ..process import launched_by_mpi, supervise_rank, world_rank

__all__ = ["launched_by_mpi", "world_rank", "supervise_rank", "abort_job", "make_keys", "run_rejoining"]


def run_rejoining(make: Callable[[dict[str, Any]], Any], cfg: dict[str, Any]) -> tuple[Any, Any]:
    """``make(cfg).run()``, and for a parameter-server worker whose server goes away (killed,
    restarted, cut off), again with a new Trainer that joins the server anew, for up to
    ``comm.reconnect_s`` from the loss: a server restarted on its run directory resumes from
    its newest checkpoint and admits the workers again. Returns (trainer, result)."""
    c = cfg["comm"]
    rejoin = c.get("backend") == "zmq" and c.get("role") == "worker" and float(c.get("reconnect_s") or 0) > 0
    deadline = None
    while True:
        trainer = make(cfg)
        try:
            return trainer, trainer.run()
        except PeerLost as e:
            admitted = getattr(trainer.comm, "admitted", False)
            if not rejoin or (deadline is None and not admitted):
                raise  # never admitted: a first join that failed (comm.join_timeout_s) is not a lost server
            now = time.monotonic()
            if admitted:
                deadline = now + float(c["reconnect_s"])  # a new loss: the window starts again
            if now >= deadline:
                raise PeerLost(f"{e}; no server took this worker back within {c['reconnect_s']:g} s "
                               "(comm.reconnect_s)") from None
            print(f"distbp-train: {e}; trying to rejoin for {deadline - now:.0f} s more (comm.reconnect_s)",
                  file=sys.stderr, flush=True)
            cfg = {**cfg, "comm": {**c, "join_timeout_s": max(1.0, min(float(c["join_timeout_s"]), deadline - now))}}


def abort_job(code: int) -> None:
    """End every rank of the MPI job now (MPI_Abort), so none is left waiting in a collective."""
    from ..comm import MPICommunicator

    MPICommunicator.abort_world(code)


def make_keys(key_dir: str | Path, workers: int | None = None) -> list[Path]:
    """CURVE key pairs for a parameter-server job, one per worker with ``workers`` (see
    distbp.comm.zmq_ps.make_keys)."""
    from ..comm.zmq_ps import make_keys as make  # imported here: only key making needs zmq

    return make(key_dir, workers)
