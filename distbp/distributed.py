"""Data parallelism for a training loop of your own, in Horovod's and DDP's style.

    import distbp.distributed as dist

    dist.init()                                   # MPI under mpirun/mpiexec, else one process
    model = Net()
    opt = dist.DistributedOptimizer(optim.Adam(model.parameters(), lr=1e-3))
    dist.broadcast_parameters(model)              # every rank starts from rank 0's weights
    dist.broadcast_optimizer_state(opt)
    sampler = dist.DistributedSampler(len(x), global_batch=64, seed=0)
    for step in range(steps):
        idx, _ = sampler.local_indices(step)      # this rank's slice of the global batch
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()                                # gradients averaged over ranks, then the update

Run it as ``mpirun -n 4 python train.py``. After ``init()``, an exception that reaches the
top of any rank ends every rank within moments, naming the rank, with a non-zero exit
(Horovod and DDP hang there). A torchrun or Slurm environment without MPI is refused with
the command to use instead, rather than running N independent jobs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .comm import Communicator, MPICommunicator, get_communicator, install_abort_hook
from .data.sampler import DistributedSampler as _Sampler
from .nn import Module, Parameter

_state: dict[str, Communicator] = {}


def init(comm: Communicator | None = None, timeout_s: float | None = None) -> Communicator:
    """Join the job: MPI when launched by mpirun/mpiexec, otherwise one process (or ``comm``).
    Idempotent. Installs abort-on-error when there is more than one rank.

    ``timeout_s`` (as torch's ``init_process_group(timeout=)``): every collective has that
    deadline, from the first; a rank silent that long (stopped, hung) is named and every rank
    ends with a non-zero exit. None: collectives wait as long as plain MPI's."""
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"distbp.distributed.init: timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if "comm" in _state and comm is None:
        return _state["comm"]
    c = comm if comm is not None else get_communicator({"backend": "auto", "timeout_s": timeout_s})
    if timeout_s is not None and isinstance(c, MPICommunicator):
        c.arm("distbp.distributed.init's timeout_s")
    _state["comm"] = c
    if c.size > 1:
        install_abort_hook(c)
    return c


def _comm() -> Communicator:
    if "comm" not in _state:
        raise RuntimeError("distbp.distributed: call distbp.distributed.init() first")
    return _state["comm"]


def is_initialized() -> bool:
    return "comm" in _state


def rank() -> int:
    """This process's rank, 0 .. size() - 1."""
    return _comm().rank


def size() -> int:
    """The number of ranks."""
    return _comm().size


def allreduce_(array: np.ndarray, op: str = "sum") -> np.ndarray:
    """Sum (or ``op="average"``) ``array`` over all ranks, in place; returns it."""
    if op not in ("sum", "average"):
        raise ValueError(f"allreduce_: op must be 'sum' or 'average', got {op!r}")
    if op == "average" and array.dtype.kind != "f":
        raise TypeError(f"allreduce_: an average needs a float array, got {array.dtype}")
    c = _comm()
    c.allreduce_sum_(array)
    if op == "average" and c.size > 1:
        array *= array.dtype.type(1.0 / c.size)
    return array


def _parameters(model: Module | Any) -> list[Parameter]:
    params = list(model.parameters()) if isinstance(model, Module) else list(model)
    if not all(isinstance(p, Parameter) for p in params):
        raise TypeError("broadcast_parameters: expected an nn.Module or an iterable of Parameters")
    return params


def broadcast_parameters(model: Module | Any, root_rank: int = 0) -> None:
    """Overwrite every rank's parameters with ``root_rank``'s, in place (one call for a
    flat buffer, as after an optimizer is made; one per parameter otherwise)."""
    c = _comm()
    params = _parameters(model)
    flat = params[0]._flat if params else None
    if flat is not None and len(flat.params) == len(params) and all(p._flat is flat for p in params):
        c.broadcast_(flat.data, root=root_rank)
        return
    for p in params:
        c.broadcast_(p.data, root=root_rank)


def broadcast_optimizer_state(optimizer: Any, root_rank: int = 0) -> None:
    """Give every rank ``root_rank``'s optimizer state: its flat state arrays, step count and
    param-group hyperparameters (after a resume on rank 0, say)."""
    if root_rank != 0:
        raise ValueError("broadcast_optimizer_state: only root_rank=0 is supported (the coordinator)")
    opt = getattr(optimizer, "optimizer", optimizer)
    c = _comm()
    for _, arr in sorted(opt.state.items()):
        if isinstance(arr, np.ndarray):
            c.broadcast_(arr, root=0)
    scalars = {"step": opt.state["step"],
               "groups": [{k: v for k, v in g.items() if k != "params" and isinstance(v, (int, float, bool, list))}
                          for g in opt.param_groups]}
    shared = c.broadcast_json(scalars)
    opt.state["step"] = shared["step"]
    for group, values in zip(opt.param_groups, shared["groups"]):
        group.update(values)


class DistributedOptimizer:
    """Wrap ``optimizer`` so that ``step()`` first combines every rank's gradients: their
    average by default (``op="average"``, Horovod's default and what DDP computes), or their
    sum (``op="sum"``, for a loss already divided by the global batch, as the Trainer does;
    exact when ranks hold slices of different sizes). ``overlap=True`` all-reduces gradient
    buckets of ``bucket_mb`` while backward is still running (MPI only). Everything else
    (``zero_grad``, ``param_groups``, ``state_dict``, ...) is the wrapped optimizer's."""

    def __init__(self, optimizer: Any, op: str = "average", overlap: bool = False, bucket_mb: float = 1.0) -> None:
        if op not in ("sum", "average"):
            raise ValueError(f"DistributedOptimizer: op must be 'sum' or 'average', got {op!r}")
        if not hasattr(optimizer, "flat"):
            raise TypeError(f"DistributedOptimizer: expected a distbp.optim optimizer, got {type(optimizer).__name__}")
        self.optimizer, self.op = optimizer, op
        self.comm = _comm()
        flat = optimizer.flat
        if overlap and self.comm.size > 1:
            flat.on_grad_ready = self.comm.overlap(flat.grad, flat.offsets, int(bucket_mb * 2**20))

    def synchronize(self) -> np.ndarray:
        """Combine the gradients now (``step`` does this itself); returns the flat gradient."""
        grad = self.optimizer.flat.flat_grad()  # zero where backward wrote nothing, before the sum
        self.comm.reduce_gradients_(grad)
        if self.op == "average" and self.comm.size > 1:
            grad *= grad.dtype.type(1.0 / self.comm.size)
        return grad

    def step(self) -> None:
        self.synchronize()
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)


class DistributedSampler(_Sampler):
    """The Trainer's sampler: one permutation per epoch from ``(seed, epoch)``, cut into
    global batches of ``global_batch``; this rank takes its slice ``[r*B//N, (r+1)*B//N)`` of
    each. The same global order for any number of ranks, so N ranks see exactly the samples
    one process would. ``rank`` and ``world_size`` default to this process's.

    ``local_indices(step)`` gives this rank's indices and the global batch size (divide a
    summed loss by it for the exact global mean); ``steps_per_epoch`` and
    ``global_batch_indices(step)`` are there too."""

    def __init__(self, n: int, global_batch: int, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, drop_last: bool = False) -> None:
        super().__init__(n, global_batch, seed, _comm().rank if rank is None else rank,
                         _comm().size if world_size is None else world_size, drop_last)


__all__ = ["init", "is_initialized", "rank", "size", "allreduce_", "broadcast_parameters",
           "broadcast_optimizer_state", "DistributedOptimizer", "DistributedSampler"]
