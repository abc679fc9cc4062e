"""What a run has done so far, and how it goes into snapshots and comes back on resume.

:func:`save_epoch` writes an epoch's snapshots (``best.pth`` / ``ema_best.pth`` on
improvement, then ``last.pth``); :func:`read_resume_snapshot` and :func:`restore` bring a run
back from one, refusing a snapshot of another task, another model or more epochs than asked.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from .seeding import set_rng_state
from .snapshots import SnapshotManager, check_resumable, load_snapshot, state_misfit
from .task import Task

if TYPE_CHECKING:
    from .loop import RunParts

__all__ = ["RunState", "already_finished", "read_resume_snapshot", "restore", "save_epoch",
           "update_best"]

_log = logging.getLogger(__name__)


@dataclass
class RunState:
    """What a run has done so far (saved in every snapshot)."""

    epoch: int = 0                      # next epoch to train
    global_step: int = 0
    best: float | None = None           # best primary metric so far
    best_ema: float | None = None


def read_resume_snapshot(path: Path, epochs: int) -> dict:
    """The snapshot ``--resume`` names, checked: resumable, and not past ``epochs``."""
    snapshot = load_snapshot(path)
    check_resumable(snapshot, path)
    done = int(snapshot["epoch"]) + 1
    if done > epochs:
        raise UserError(f"sched.epochs (--epochs) = {epochs} is fewer than the {done} epochs "
                        f"{path} has already trained; pass --epochs {done} or more to continue "
                        "the run (or start a new one with another --output)")
    return snapshot


def already_finished(task: Task, output: Path, path: Path, snapshot: dict, summary_file: str) -> dict:
    """Resuming a run that trained all its epochs: nothing is written; its summary."""
    done = int(snapshot["epoch"]) + 1
    _log.warning("%s has already trained all %d epochs of the run in %s: nothing to do, nothing "
                 "changed (raise --epochs to train longer)", path, done, output)
    summary = None
    try:
        summary = json.loads((output / summary_file).read_text())
    except (OSError, ValueError):
        pass
    if not isinstance(summary, dict):
        summary = {"event": "end", "task": task.name, "epochs_completed": done,
                   "primary_metric": task.primary_metric,
                   f"best_{task.primary_metric}": snapshot.get("best_metric")}
    return {**summary, "already_finished": True}


def _metric(metrics: dict, dotted: str) -> float:
    value = metrics
    for key in dotted.split("."):
        value = value[key]
    return float(value)


def update_best(run: RunState, record: dict, metric: str) -> tuple[bool, bool]:
    """Track the best primary metric of the model and of its EMA (the same on every
    process); returns whether each improved in this epoch's ``record``."""
    improved = []
    for prefix, attr in (("val_", "best"), ("ema_val_", "best_ema")):
        values = {k[len(prefix):]: v for k, v in record.items() if k.startswith(prefix)}
        if metric.split(".")[0] not in values:
            improved.append(False)
            continue
        score = _metric(values, metric)
        best = getattr(run, attr)
        improved.append(best is None or score > best)
        if improved[-1]:
            setattr(run, attr, score)
    return improved[0], improved[1]


def save_epoch(parts: RunParts, run: RunState, epoch: int, rngs, improved: tuple[bool, bool],
               snapshots: SnapshotManager) -> None:
    """best.pth / ema_best.pth on improvement, then last.pth (the resume point) last."""
    task = parts.task
    meta = {"task": task.name, **task.snapshot_meta(), "epoch": epoch,
            "global_step": run.global_step, "primary_metric": task.primary_metric,
            "config": parts.cfg.model_dump(mode="json")}
    if improved[0]:
        snapshots.save_best(parts.bare.state_dict(), {**meta, "best_metric": run.best})
    if improved[1]:
        snapshots.save_best(parts.ema.module.state_dict(), {**meta, "best_metric": run.best_ema},
                            ema=True)
    snapshots.save_last({
        "model": parts.bare.state_dict(),
        "model_ema": parts.ema.module.state_dict() if parts.ema is not None else None,
        "optimizer": parts.optimizer.state_dict(),
        "lr_scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
        "rng": rngs, **meta, "best_metric": run.best, "best_ema_metric": run.best_ema,
    })


def restore(path: Path, snapshot: dict, parts: RunParts, run: RunState) -> None:
    """Load a checked snapshot into ``parts`` and ``run``: weights, EMA, optimizer, schedule,
    scaler, progress and this process's random state; refuses another task's snapshot or
    weights that do not fit the model."""
    task = parts.task
    saved_task = snapshot.get("task", "classification")  # snapshots before tasks were recorded
    if saved_task != task.name:
        raise UserError(f"--resume {path}: the snapshot is a {saved_task} run, this run is "
                        f"{task.name}; use another --output")
    task.check_resume(snapshot, path)
    misfit = state_misfit(parts.bare.state_dict(), snapshot["model"])
    if misfit:
        raise UserError(f"--resume {path}: the snapshot's weights do not fit this run's model "
                        f"({misfit}); were the model options (model.kwargs) or the classes "
                        "changed?")
    parts.bare.load_state_dict(snapshot["model"])
    if parts.ema is not None and snapshot.get("model_ema") is not None:
        parts.ema.module.load_state_dict(snapshot["model_ema"])
    parts.optimizer.load_state_dict(snapshot["optimizer"])
    parts.scheduler.load_state_dict(snapshot["lr_scheduler"])
    if parts.scaler is not None and snapshot.get("scaler"):
        parts.scaler.load_state_dict(snapshot["scaler"])
    run.global_step = int(snapshot["global_step"])
    run.epoch = int(snapshot["epoch"]) + 1
    run.best = snapshot.get("best_metric")
    run.best_ema = snapshot.get("best_ema_metric")
    rngs = snapshot.get("rng") or []
    if len(rngs) == parts.env.world_size:
        set_rng_state(rngs[parts.env.rank])
