"""The data order of docs/ARCHITECTURE.md (invariant 1): one permutation per epoch from (seed, epoch), cut
into global batches; worker r of N takes its slice of every global batch. Everything is a
function of (seed, step), so a resumed run, with any N, continues the same order."""

from __future__ import annotations

import numpy as np


def split_indices(n: int, val_fraction: float, seed: int, labels: np.ndarray | None = None,
                  salt: int = 0x5A17) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic (kept, held-out) split of range(n), each in increasing order, the
    held-out part ``val_fraction`` of it. With ``labels``, stratified: each class gives the
    same fraction (rounded per class), so a rare class is in both parts. ``salt`` draws an
    independent split (the test split is carved with another one than validation)."""
    rng = np.random.default_rng([seed, salt])
    if labels is None:
        n_val = int(round(n * val_fraction))
        if val_fraction > 0 and n_val == 0:
            n_val = 1
        perm = rng.permutation(n)
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = int(round(len(members) * val_fraction))
        held.append(rng.permutation(members)[:take])
    out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(n), out), out


def slice_bounds(batch: int, rank: int, world_size: int) -> tuple[int, int]:
    """Worker ``rank``'s [lo, hi) of a batch of ``batch`` samples; sizes differ by at most one
    (and may be zero when the batch is smaller than the world)."""
    return rank * batch // world_size, (rank + 1) * batch // world_size


class DistributedSampler:
    """Global batches of ``global_batch`` indices into a data set of ``n`` samples.

    Step ``t`` is batch ``t % steps_per_epoch`` of epoch ``t // steps_per_epoch``. The last
    batch of an epoch is short when ``global_batch`` does not divide ``n`` (unless
    ``drop_last``); gradients are averaged over the samples the batch really has.
    """

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False) -> None:
        if n <= 0:
            raise ValueError("DistributedSampler: the data set is empty")
        if global_batch <= 0:
            raise ValueError(f"DistributedSampler: global_batch must be positive, got {global_batch}")
        if not 0 <= rank < world_size:
            raise ValueError(f"DistributedSampler: rank {rank} outside world of size {world_size}")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        full, rest = divmod(n, global_batch)
        if drop_last and full == 0:
            raise ValueError(f"DistributedSampler: global_batch {global_batch} exceeds the {n} "
                             "samples and drop_last leaves no batch")
        self.steps_per_epoch = full if drop_last or rest == 0 else full + 1
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of epoch ``epoch`` (cached: consecutive steps share it)."""
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._order

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of global step ``step``."""
        return divmod(step, self.steps_per_epoch)

    def global_batch_indices(self, step: int) -> np.ndarray:
        epoch, i = self.position(step)
        return self.order(epoch)[i * self.global_batch:(i + 1) * self.global_batch]

    def local_indices(self, step: int) -> tuple[np.ndarray, int]:
        """This worker's indices for step ``step`` and the size of the whole global batch
        (every worker divides its loss sum by it, so the all-reduced sum is the global mean)."""
        batch = self.global_batch_indices(step)
        lo, hi = slice_bounds(len(batch), self.rank, self.world_size)
        return batch[lo:hi], len(batch)
