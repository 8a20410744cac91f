"""The Communicator interface the Trainer talks to; numpy only, never autodiff."""

from __future__ import annotations

import numpy as np


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

    def barrier(self) -> None:
        raise NotImplementedError

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
