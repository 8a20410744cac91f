"""Config, the Trainer loop, checkpoints and metrics: where data, model, optimizer and
communicator meet."""

from .checkpoint import CheckpointError, latest_valid, list_checkpoints, read_checkpoint
from .config import ConfigError, config_hash, defaults, load_config, resolve
from .launching import abort_job, launched_by_mpi, make_keys, run_rejoining, supervise_rank, world_rank
from .trainer import Interrupted, RunResult, Trainer, TrainingError

__all__ = ["Trainer", "RunResult", "TrainingError", "Interrupted", "ConfigError", "CheckpointError",
           "load_config", "resolve", "defaults", "config_hash", "read_checkpoint", "latest_valid",
           "list_checkpoints", "abort_job", "launched_by_mpi", "make_keys", "run_rejoining", "supervise_rank",
           "world_rank"]
