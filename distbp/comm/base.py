"""The Communicator interface the Trainer talks to; numpy only, never autodiff."""

from __future__ import annotations

from typing import Any

import numpy as np


class MismatchError(RuntimeError):
    """Ranks disagree on something they must share: config hash, parameter count, or (replica
    drift) the parameters themselves. Every rank raises it together."""


class Communicator:
    """How the workers of one job combine gradients and agree on parameters.

    Every worker scales its loss by 1/global_batch, so ``allreduce_sum_`` of the flat
    gradient buffers is the gradient of the global mean loss. Rank 0 is the coordinator.
    """

    rank: int = 0
    size: int = 1

    @property
    def is_coordinator(self) -> bool:
        return self.rank == 0

    def allreduce_sum_(self, flat: np.ndarray) -> np.ndarray:
        """Sum ``flat`` over all workers, in place; returns it."""
        raise NotImplementedError

    def broadcast_(self, flat: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrite ``flat`` on every worker with root's values, in place; returns it."""
        raise NotImplementedError

    def iallreduce_sum_(self, view: np.ndarray) -> Any:
        """Start summing ``view`` in place over all workers; returns a handle for wait_all."""
        raise NotImplementedError

    def test_all(self, handles: list[Any]) -> bool:
        """Let pending operations progress; whether all are done."""
        return True

    def wait_all(self, handles: list[Any]) -> None:
        """Block until every handle's operation is complete."""

    def barrier(self) -> None:
        raise NotImplementedError

    def gather_u64(self, value: int) -> "np.ndarray":
        """Every rank's ``value`` (an unsigned 64-bit integer), in rank order, on every rank."""
        raise NotImplementedError

    def check_same(self, what: str, value: int, hint: str = "") -> None:
        """Raise MismatchError on every rank, naming the ranks whose ``value`` differs from
        rank 0's; a collective, so every rank must call it at the same point."""
        values = self.gather_u64(value)
        bad = [r for r in range(self.size) if values[r] != values[0]]
        if bad:
            ranks = ", ".join(f"rank {r} has {int(values[r]):x}" for r in bad)
            raise MismatchError(f"{what} differs between ranks: rank 0 has {int(values[0]):x}, {ranks}"
                                + (f"; {hint}" if hint else ""))

    def close(self) -> None:
        """Release the transport; safe to call twice."""


class LocalCommunicator(Communicator):
    """One process: the identity on everything, so one code path serves 1 and N workers."""

    def allreduce_sum_(self, flat: np.ndarray) -> np.ndarray:
        return flat

    def broadcast_(self, flat: np.ndarray, root: int = 0) -> np.ndarray:
        return flat

    def barrier(self) -> None:
        pass

    def iallreduce_sum_(self, view: np.ndarray) -> None:
        return None

    def gather_u64(self, value: int) -> np.ndarray:
        return np.array([value], dtype=np.uint64)
