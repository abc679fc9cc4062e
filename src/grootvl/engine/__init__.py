"""The training engine: one loop for every task, and the machinery around it.

It knows no model family and no task: a task plugs in its data, model,
loss and metrics (:class:`~.task.Task`; ``grootvl.tasks`` has classification, detection and
segmentation).

* :mod:`.loop`        -- :func:`run_training`, the loop
* :mod:`.evaluation`  -- :func:`evaluate`: a task's metrics of a model, all processes
* :mod:`.task`        -- the :class:`Task` protocol, :class:`Batch`, :class:`Evaluator`
* :mod:`.schema`      -- the ``optim``, ``sched``, ``ema`` and ``train`` config sections
* :mod:`.config`      -- typed configs from YAML files, ``--set`` overrides and flags
* :mod:`.optim`       -- optimizer and lr schedule (timm's factories), lr scaling
* :mod:`.snapshots`   -- atomic snapshot files, last/best/EMA-best, ``--resume auto``
* :mod:`.run_state`   -- what a run has done; what its snapshots hold, restored on resume
* :mod:`.run_folder`  -- the run's folder: locked, never overwritten by accident, its log cut
  back to the snapshot on resume
* :mod:`.sampling`    -- resumable training loaders, evaluation shards
* :mod:`.distributed` -- torchrun process groups (NCCL on CUDA, Gloo on CPU), reductions
* :mod:`.seeding`     -- deterministic seeding, RNG state capture/restore
* :mod:`.amp`         -- bf16/fp16 autocast and GradScaler selection
* :mod:`.progress`    -- JSON-lines logger, progress bar / log lines with speed and ETA
* :mod:`.metrics`     -- sums and means reducible across processes

User mistakes raise :class:`grootvl.errors.UserError`.
"""
from .amp import AmpSettings, autocast, make_grad_scaler, resolve_amp
from .config import ConfigSection, build_config, config_from_dict, dump_config, parse_override
from .distributed import (DistEnv, all_gather_object, all_reduce_sum, barrier, broadcast_object,
                          init_distributed, teardown_distributed)
from .evaluation import evaluate
from .loop import run_training
from .metrics import MetricSums
from .progress import JsonlLogger, Progress, read_jsonl
from .run_folder import RunFolder
from .sampling import ShardSampler
from .seeding import get_rng_state, seed_everything, set_rng_state
from .snapshots import SnapshotManager, atomic_save, load_snapshot, read_snapshot_meta, unwrap_model
from .task import Batch, Evaluator, Task

__all__ = [
    "AmpSettings", "Batch", "ConfigSection", "DistEnv", "Evaluator", "JsonlLogger", "MetricSums",
    "Progress", "RunFolder", "ShardSampler", "SnapshotManager", "Task", "all_gather_object",
    "all_reduce_sum",
    "atomic_save", "autocast", "barrier", "broadcast_object", "build_config", "config_from_dict",
    "dump_config", "evaluate", "get_rng_state", "init_distributed", "load_snapshot",
    "make_grad_scaler", "parse_override", "read_jsonl", "read_snapshot_meta", "resolve_amp",
    "run_training", "seed_everything", "set_rng_state", "teardown_distributed", "unwrap_model",
]
