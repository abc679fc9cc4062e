"""Evaluation of a model by a task's metrics, over this process's shard of a data set.

Used after training epochs (:mod:`.loop`) and by the evaluation commands alike, so a
snapshot evaluated on its own gives the metrics its run recorded.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import distributed as D
from .amp import AmpSettings, autocast
from .progress import Progress
from .task import Task

__all__ = ["evaluate", "sync_buffers"]


def sync_buffers(model: nn.Module) -> None:
    """Every process takes process 0's buffers (BatchNorm statistics) before evaluating.

    DDP broadcasts buffers at the start of each forward, so after the last training step
    each process holds its own statistics; without this, processes would evaluate slightly
    different models, and not the one saved in the snapshot (process 0's).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, loader, env: D.DistEnv, amp: AmpSettings,
             max_steps: int | None = None, progress_mode: str = "auto",
             log_every: int = 50) -> dict:
    """``task``'s metrics of ``model`` over ``loader`` (this process's shard), reduced over
    all processes: every process returns the same dict."""
    model.eval()
    evaluator = task.evaluator(env.device)
    steps = min(len(loader), max_steps or len(loader))
    progress = Progress(steps, f"{task.name} eval", progress_mode, log_every, enabled=env.is_main)
    try:
        for step, raw in enumerate(loader):
            if step >= steps:
                break
            batch = task.prepare_batch(raw, env.device, training=False)
            with autocast(amp):
                evaluator.update(model, batch)
            progress.update(batch.size * env.world_size)
    finally:
        progress.close()
    return evaluator.compute()
