"""Training snapshots: atomic files, the "last / best / EMA-best" set of a run, resumption.

(Weights from other sources -- release checkpoints, state dicts -- are read by
``grootvl.models.weights``; a snapshot's ``model`` entry loads there too.)

A snapshot is written to a temporary file in the same folder, flushed to disk and then
renamed over the target with ``os.replace`` (atomic on POSIX and Windows), so a run killed
at any moment leaves either the previous file or the new one, never a truncated one.
The dict layout follows the usual release checkpoints (``model``, ``model_ema``,
``optimizer``, ``lr_scheduler``, ``epoch``) plus what exact resumption needs (``scaler``,
``rng``, ``global_step``), the run's ``config``, its ``task``, the best value of the task's
primary metric (``best_metric``, ``best_ema_metric``) and the task's own entries (e.g.
``arch`` and ``classes`` for classification).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

LAST = "last.pth"
BEST = "best.pth"
EMA_BEST = "ema_best.pth"
# the entries that hold state rather than describe the run
_STATE_KEYS = ("model", "model_ema", "optimizer", "lr_scheduler", "scaler", "rng")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` so that readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_snapshot(path: str | os.PathLike) -> dict:
    """Load a snapshot written by this engine on CPU (torch's safe ``weights_only`` loader),
    with a clear error for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise UserError(f"checkpoint {path} could not be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def read_snapshot_meta(path: str | os.PathLike) -> dict:
    """The metadata entries of a snapshot (``task``, ``config``, ``epoch``, the task's own...).

    Tensors are memory-mapped, not read. Checkpoints that pickle foreign objects (e.g. the
    original release's config objects) give ``{}``: they carry no metadata we use.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unsafe globals, or a format mmap cannot read: no metadata
        return {}
    if not isinstance(obj, dict):
        return {}
    return {k: v for k, v in obj.items()
            if k not in _STATE_KEYS and not isinstance(v, torch.Tensor)}


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class SnapshotManager:
    """Writes ``last.pth`` every epoch and ``best.pth`` / ``ema_best.pth`` on improvement.

    Only call the ``save_*`` methods on the main process. ``best.pth`` and
    ``ema_best.pth`` hold weights only (``model`` key), enough for ``grootvl eval``.
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)

    @property
    def last_path(self) -> Path:
        return self.output_dir / LAST

    def save_last(self, state: dict) -> Path:
        return atomic_save(state, self.last_path)

    def save_best(self, weights: dict, meta: dict, ema: bool = False) -> Path:
        return atomic_save({"model": weights, **meta}, self.output_dir / (EMA_BEST if ema else BEST))

    def find_resume(self, resume: str | None) -> Path | None:
        """Checkpoint to resume from: ``auto`` -> this run's ``last.pth`` if present."""
        if not resume:
            return None
        if resume == "auto":
            return self.last_path if self.last_path.is_file() else None
        path = Path(resume)
        if not path.is_file():
            raise UserError(f"--resume {resume}: no such checkpoint file (use --resume auto to "
                            f"continue the run in {self.output_dir} if it has one)")
        return path
