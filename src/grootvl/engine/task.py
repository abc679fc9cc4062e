"""What a task plugs into the training loop: data, model, loss, evaluation, snapshot metadata.

The loop (:mod:`.loop`) owns everything that is the same for every task -- processes and
devices, seeding, sampling, gradient accumulation, mixed precision, clipping, the optimizer
and its schedule, EMA, snapshots and resumption, logging and progress. A task supplies only
what differs; ``grootvl.tasks`` has the image classification, detection and segmentation
tasks, and docs/design.md ("Extending grootvl") shows how to write another.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

__all__ = ["Batch", "Evaluator", "Task", "drop_replaced"]


@dataclass
class Batch:
    """One batch on its device, as the task's model wants it.

    ``size`` counts samples (for progress and throughput); ``skipped`` counts input files the
    data set could not read and replaced (reported per epoch; see :func:`drop_replaced`).
    An evaluation batch may be empty (``size`` 0) when all its files were unreadable.
    """

    inputs: Any
    targets: Any
    size: int
    skipped: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def drop_replaced(inputs, targets, skipped, training: bool):
    """``(inputs, targets, replaced)`` of a batch whose data set replaced each unreadable file
    by the next readable item (``skipped``: per item, the files passed over to reach it).

    ``replaced`` counts the items that stand in for an unreadable file. Training keeps them
    (a batch keeps its size); an evaluation drops them, so that every readable file counts
    exactly once. ``inputs``/``targets`` are tensors or lists; ``skipped`` a tensor or list.
    """
    flags = [int(s) > 0 for s in (skipped.tolist() if torch.is_tensor(skipped) else skipped)]
    replaced = sum(flags)
    if training or not replaced:
        return inputs, targets, replaced
    keep = [i for i, flag in enumerate(flags) if not flag]
    if torch.is_tensor(inputs):
        index = torch.tensor(keep, dtype=torch.long)
        return inputs[index], targets[index], replaced
    return [inputs[i] for i in keep], [targets[i] for i in keep], replaced


class Evaluator(Protocol):
    """Accumulates one evaluation pass; ``compute`` reduces over all processes, so every
    process returns the same metrics."""

    def update(self, model: nn.Module, batch: Batch) -> None: ...

    def compute(self) -> dict[str, Any]: ...


class Task(Protocol):
    """A training task for :func:`grootvl.engine.loop.run_training`.

    Attributes:
        name: recorded in snapshots; resuming requires the same task.
        primary_metric: dotted key into the evaluation metrics (``"top1"``, ``"bbox.AP"``);
            larger is better; ``best.pth`` follows it.
        collate_fn: how samples are batched (None: torch's default).
        eval_batch_size: batch size of evaluation loaders.
    """

    name: str
    primary_metric: str
    collate_fn: Callable | None
    eval_batch_size: int

    def datasets(self) -> tuple[Dataset, Dataset]:
        """The training and validation sets (user errors raised here, before any model)."""
        ...

    def build_model(self, log: bool = True) -> nn.Module:
        """The model, with its initial weights; ``log``: this process may log."""
        ...

    def prepare_batch(self, batch: Any, device: torch.device, training: bool) -> Batch:
        """Move a loader batch to ``device`` (and, in training, augment it, e.g. mixup)."""
        ...

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        """Named loss terms of a training batch; the loop minimises their sum."""
        ...

    def evaluator(self, device: torch.device) -> Evaluator:
        """A fresh accumulator for one evaluation pass."""
        ...

    def snapshot_meta(self) -> dict[str, Any]:
        """Entries written into every snapshot (what rebuilding the model needs)."""
        ...

    def check_resume(self, snapshot: dict[str, Any], path: Path) -> None:
        """Raise a UserError if ``snapshot`` belongs to an incompatible run."""
        ...

    def describe(self) -> dict[str, Any]:
        """Extra fields of the run's ``start`` log record (model name, classes...)."""
        ...
