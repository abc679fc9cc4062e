"""Reusable, model-agnostic training machinery.

* :mod:`.distributed` -- torchrun process groups (NCCL on CUDA, Gloo on CPU), metric reduction
* :mod:`.seeding`     -- deterministic seeding, RNG state capture/restore
* :mod:`.checkpoint`  -- atomic checkpoint files, last/best/EMA-best, ``--resume auto``
* :mod:`.progress`    -- JSON-lines logger, progress bar / log lines with speed and ETA
* :mod:`.amp`         -- bf16/fp16 autocast and GradScaler selection
* :mod:`.metrics`     -- sums/means reducible across ranks, top-k accuracy
* :mod:`.config`      -- YAML configs with ``base:`` inheritance and ``key=value`` overrides
* :mod:`.weights`     -- timm model creation and weight loading with clear errors
* :mod:`.classification` / :mod:`.trainer` -- the image-classification loop built on the above

User mistakes raise :class:`UserError`; command-line tools print its message and exit 2.
"""
from .amp import AmpSettings, autocast, make_grad_scaler, resolve_amp
from .checkpoint import CheckpointManager, atomic_save, load_checkpoint_file, unwrap_model
from .config import build_config, load_config_file, packaged_config_names
from .distributed import (DistEnv, all_gather_object, all_reduce_sum, barrier, broadcast_object,
                          init_distributed, teardown_distributed)
from .errors import UserError, cli_command
from .metrics import MetricSums, topk_correct
from .progress import JsonlLogger, Progress, read_jsonl
from .seeding import get_rng_state, seed_everything, set_rng_state

__all__ = [
    "AmpSettings", "CheckpointManager", "DistEnv", "JsonlLogger", "MetricSums", "Progress",
    "UserError", "all_gather_object", "cli_command", "all_reduce_sum", "atomic_save", "autocast", "barrier",
    "broadcast_object", "build_config", "get_rng_state", "init_distributed",
    "load_checkpoint_file", "load_config_file", "make_grad_scaler", "packaged_config_names",
    "read_jsonl", "resolve_amp", "seed_everything", "set_rng_state", "teardown_distributed",
    "topk_correct", "unwrap_model",
]
