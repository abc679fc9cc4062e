"""What the detection and segmentation tasks share: snapshot checks and model rebuilding."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from ..engine.snapshots import load_snapshot
from ..errors import UserError
from .config import RunConfig, config_from_snapshot

__all__ = ["check_same_model", "read_task_snapshot"]


def check_same_model(task: str, saved: dict, current: dict, path: Path) -> None:
    """Resuming needs the model options the snapshot was trained with (``saved``)."""
    if saved != current:
        raise UserError(f"--resume {path}: the snapshot is a {task} run of {saved}, this run "
                        f"is {current}; resume with the same model options or use another "
                        "--output")


def read_task_snapshot(path, task: str, command: str) -> tuple[dict, RunConfig]:
    """A ``command`` snapshot (of ``task``) and its validated config."""
    snapshot = load_snapshot(path)
    if snapshot.get("task") != task or not isinstance(snapshot.get("config"), dict):
        raise UserError(f"--checkpoint {path} is not a {command} checkpoint (no {task} run "
                        f"config in it); pass last.pth or best.pth of a {command} run")
    return snapshot, config_from_snapshot(snapshot, path)


def load_snapshot_weights(model: nn.Module, snapshot: dict, path) -> nn.Module:
    """``model`` with the snapshot's weights (strict)."""
    try:
        model.load_state_dict(snapshot["model"])
    except RuntimeError as exc:
        raise UserError(f"--checkpoint {path}: its weights do not fit the model its config "
                        f"describes: {exc}") from exc
    return model
