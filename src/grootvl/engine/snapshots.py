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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..files import CheckpointError, check_finite, read_checkpoint

LAST = "last.pth"
BEST = "best.pth"
EMA_BEST = "ema_best.pth"
# the entries that hold state rather than describe the run
_STATE_KEYS = ("model", "model_ema", "optimizer", "lr_scheduler", "scaler", "rng")


TEMPORARY_SUFFIX = ".tmp"


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` so that readers never see a partial file."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` so that readers never see a partial file."""
    return _atomic_write(path, lambda f: f.write(text.encode()))


def _atomic_write(path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the temporary files a killed :func:`atomic_save` left in ``folder``; call it
    only while no other process writes there (the run folder's lock). Returns their names."""
    stale = sorted(Path(folder).glob(f".*{TEMPORARY_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return [p.name for p in stale]


def load_snapshot(path: str | os.PathLike) -> dict:
    """Load a snapshot written by this engine on CPU (torch's safe loader), with one clear
    error (:class:`~grootvl.files.CheckpointError`) for a missing, corrupt or foreign file."""
    obj = read_checkpoint(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a "
                              "dict (a training snapshot)")
    return obj


# what --resume needs of a snapshot, with the type each entry must have
_RESUME_ENTRIES = {"model": Mapping, "optimizer": Mapping, "lr_scheduler": Mapping,
                   "epoch": int, "global_step": int}


def check_resumable(snapshot: dict, path: str | os.PathLike) -> None:
    """A :class:`UserError` unless ``snapshot`` holds everything exact resumption needs, with
    finite weights: a weights-only file (``best.pth``) or a damaged snapshot is named."""
    where = f"--resume {path}"
    if isinstance(snapshot.get("model"), Mapping) and "optimizer" not in snapshot:
        raise UserError(f"{where} holds the model's weights only (as best.pth and ema_best.pth "
                        "do), not the optimizer, schedule and random state a resume needs; "
                        "resume from the run's last.pth, or start a new run from these weights "
                        f"with --set model.init_checkpoint={path}")
    for key, kind in _RESUME_ENTRIES.items():
        value = snapshot.get(key)
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
            raise UserError(f"{where} is not a training snapshot of grootvl: its {key!r} entry is "
                            f"{type(value).__name__ if key in snapshot else 'missing'}; "
                            "resume from a last.pth written by grootvl train")
    for key in ("config", "rng"):
        value = snapshot.get(key)
        expected = Mapping if key == "config" else list
        if value is not None and not isinstance(value, expected):
            raise UserError(f"{where}: its {key!r} entry is a {type(value).__name__}, expected a "
                            f"{'mapping' if key == 'config' else 'list'}; the snapshot is damaged")
    check_finite(snapshot["model"], where)


def state_misfit(target: Mapping, state: Mapping) -> str:
    """What keeps ``state`` from loading strictly into a model whose state dict is ``target``,
    in one line ("" if it fits)."""
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [f"{k}: snapshot {tuple(getattr(state[k], 'shape', ()))} vs model "
              f"{tuple(target[k].shape)}" for k in state
              if k in target and getattr(state[k], "shape", None) != target[k].shape]
    return "; ".join(f"{what} ({len(keys)}, e.g. {keys[0]})" for what, keys in (
        ("missing from the snapshot", missing), ("not in the model", unexpected),
        ("shape mismatches", shapes)) if keys)


def read_snapshot_meta(path: str | os.PathLike) -> dict:
    """The metadata entries of a snapshot (``task``, ``config``, ``epoch``, the task's own...).

    Checkpoints that cannot be read give ``{}``: they carry no metadata we use (the weights
    reader reports what is wrong with them).
    """
    try:
        obj = read_checkpoint(path)
    except CheckpointError:
        return {}
    if not isinstance(obj, dict):
        return {}
    return snapshot_meta(obj)


def snapshot_meta(snapshot: Mapping) -> dict:
    """The entries of a loaded snapshot that describe the run rather than hold its state."""
    return {k: v for k, v in snapshot.items()
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
