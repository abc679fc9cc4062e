"""What the detection and segmentation tasks share: snapshot checks and model rebuilding."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from ..engine.snapshots import load_snapshot, state_misfit
from ..errors import UserError, shown
from ..files import check_finite
from .config import RunConfig, load_config

__all__ = ["check_same_model", "read_task_snapshot"]


def check_same_model(task: str, saved: dict, current: dict, path: Path) -> None:
    """Resuming needs the model options the snapshot was trained with (``saved``)."""
    differ = [f"{key}: snapshot {shown(saved.get(key), 60)}, this run "
              f"{shown(current.get(key), 60)}" for key in sorted(set(saved) | set(current))
              if saved.get(key) != current.get(key)]
    if differ:
        raise UserError(f"--resume {path}: the snapshot is a {task} run with other model options "
                        f"({'; '.join(differ)}); resume with the same options or use another "
                        "--output")


def read_task_snapshot(path, task: str, command: str, flags=None) -> tuple[dict, RunConfig]:
    """A ``command`` snapshot (of ``task``) and its validated config, with the evaluation
    options ``flags`` (``{key: (value or None, flag)}``) layered on top."""
    snapshot = load_snapshot(path)
    if snapshot.get("task") != task or not isinstance(snapshot.get("config"), dict):
        raise UserError(f"--checkpoint {path} is not a {command} checkpoint (no {task} run "
                        f"config in it); pass last.pth or best.pth of a {command} run")
    return snapshot, load_config(base=snapshot["config"], base_origin=f"checkpoint {path}",
                                 flags=flags)


def load_snapshot_weights(model: nn.Module, snapshot: dict, path) -> nn.Module:
    """``model`` with the snapshot's weights (strict, finite)."""
    state = snapshot.get("model")
    if not isinstance(state, dict):
        raise UserError(f"--checkpoint {path} holds no weights (its 'model' entry is a "
                        f"{type(state).__name__}); pass last.pth or best.pth of a run")
    misfit = state_misfit(model.state_dict(), state)
    if misfit:
        raise UserError(f"--checkpoint {path}: its weights do not fit the model its config "
                        f"describes ({misfit})")
    check_finite(state, f"--checkpoint {path}")
    model.load_state_dict(state)
    return model
