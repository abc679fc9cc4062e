"""The tasks the training engine runs, and the run config they share.

* :mod:`.config`         -- :class:`RunConfig` (every key of every task), :func:`load_config`
* :mod:`.classification` -- image folders, any timm model; ``grootvl eval``
* :mod:`.detection`      -- COCO instance segmentation with GrootV Mask R-CNN; ``det-eval``
* :mod:`.segmentation`   -- ADE20K-format segmentation with GrootV UperNet; ``seg-eval``
* :mod:`.metrics`        -- top-k accuracy, COCO AP, mIoU
* :mod:`.demo`           -- ``grootvl demo`` (digits)

``train(cfg, output)`` runs the task ``cfg.task`` names.
"""
from __future__ import annotations

import os

from ..engine.loop import run_training
from .classification import ClassificationTask
from .config import RunConfig, load_config
from .detection import DetectionTask
from .segmentation import SegmentationTask

__all__ = ["ClassificationTask", "DetectionTask", "RunConfig", "SegmentationTask", "build_task",
           "load_config", "train"]

TASK_TYPES = {"classification": ClassificationTask, "detection": DetectionTask,
              "segmentation": SegmentationTask}


def build_task(cfg: RunConfig):
    """The task object for ``cfg.task``."""
    return TASK_TYPES[cfg.task](cfg)


def train(cfg: RunConfig, output: str | os.PathLike, resume: str | None = None,
          crash_at_step: int | None = None, overwrite: bool = False) -> dict:
    """Train ``cfg`` (any task) into ``output``; see :func:`grootvl.engine.run_training`."""
    return run_training(build_task(cfg), cfg, output, resume=resume, crash_at_step=crash_at_step,
                        overwrite=overwrite)
