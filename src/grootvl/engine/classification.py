"""One epoch of classifier training and a full evaluation pass, for any ``nn.Module``.

These functions know nothing about GrootV: they take a model, a loader yielding
``(images, targets, skipped_files)`` and the pieces built by :mod:`grootvl.engine.trainer`.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from .amp import AmpSettings, autocast
from .distributed import all_reduce_sum
from .metrics import MetricSums, topk_correct
from .progress import JsonlLogger, Progress


def build_mixup(aug_cfg: dict, num_classes: int) -> Mixup | None:
    """timm Mixup/CutMix (with label smoothing folded into the soft targets), or None."""
    if aug_cfg["mixup"] <= 0 and aug_cfg["cutmix"] <= 0:
        return None
    return Mixup(mixup_alpha=aug_cfg["mixup"], cutmix_alpha=aug_cfg["cutmix"],
                 prob=aug_cfg["mixup_prob"], switch_prob=aug_cfg["mixup_switch_prob"],
                 mode=aug_cfg["mixup_mode"], label_smoothing=aug_cfg["label_smoothing"],
                 num_classes=num_classes)


def build_train_criterion(aug_cfg: dict, mixup_active: bool) -> nn.Module:
    """Soft-target CE after mixup, label-smoothing CE without it, plain CE when both off."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if aug_cfg["label_smoothing"] > 0:
        return LabelSmoothingCrossEntropy(smoothing=aug_cfg["label_smoothing"])
    return nn.CrossEntropyLoss()


@dataclass
class StepState:
    """Counters that persist across epochs (saved in checkpoints)."""

    global_step: int = 0
    crash_at_step: int | None = None  # testing hook: SIGKILL ourselves after this step


@dataclass
class TrainParts:
    """What one training step needs besides the model and the batch."""

    optimizer: torch.optim.Optimizer
    scheduler: object                   # timm scheduler (step_update per optimizer step)
    criterion: nn.Module
    amp: AmpSettings
    device: torch.device
    scaler: torch.amp.GradScaler | None = None
    mixup: Mixup | None = None
    ema: object | None = None           # timm ModelEmaV3
    clip_grad: float | None = None
    accum_steps: int = 1
    channels_last: bool = False
    world_size: int = 1
    state: StepState = field(default_factory=StepState)


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN/inf loss)."""


def _to_device(images, targets, parts: TrainParts):
    images = images.to(parts.device, non_blocking=True)
    if parts.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(parts.device, non_blocking=True)


def train_one_epoch(model: nn.Module, loader, parts: TrainParts, epoch: int, *,
                    bare_model: nn.Module, max_steps: int | None = None,
                    progress: Progress | None = None, logger: JsonlLogger | None = None,
                    log_every: int = 50) -> dict[str, float]:
    """Train for one pass over ``loader`` (or ``max_steps`` optimizer steps).

    ``model`` may be DDP-wrapped; ``bare_model`` is the unwrapped module (for EMA).
    Returns the epoch's metrics averaged over all ranks: loss, lr, skipped images, steps.
    """
    model.train()
    accum = parts.accum_steps
    steps = len(loader) // accum if max_steps is None else min(max_steps, len(loader) // accum)
    sums = MetricSums()
    skipped = torch.zeros((), dtype=torch.long)
    loss_sum = torch.zeros((), device=parts.device)
    loss_count = 0
    optimizer = parts.optimizer
    optimizer.zero_grad(set_to_none=True)
    done = 0
    for micro, (images, targets, nskip) in enumerate(loader):
        if done >= steps:
            break
        skipped += nskip.sum()
        images, targets = _to_device(images, targets, parts)
        if parts.mixup is not None:
            images, targets = parts.mixup(images, targets)
        boundary = (micro + 1) % accum == 0
        sync = contextlib.nullcontext() if boundary or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(parts.amp):
                loss = parts.criterion(model(images), targets)
            loss_sum += loss.detach().float()
            loss_count += 1
            scaled = loss / accum
            (parts.scaler.scale(scaled) if parts.scaler else scaled).backward()
        if not boundary:
            continue
        grad_norm = _optimizer_step(model, parts)
        done += 1
        parts.state.global_step += 1
        parts.scheduler.step_update(num_updates=parts.state.global_step)
        if parts.ema is not None:
            parts.ema.update(bare_model, step=parts.state.global_step)
        if done % log_every == 0 or done == steps:
            mean_loss = (loss_sum / loss_count).item()
            if not math.isfinite(mean_loss):
                raise NonFiniteLossError(f"loss became {mean_loss} in epoch {epoch} at step "
                                         f"{parts.state.global_step}; lower optim.base_lr or "
                                         "enable optim.clip_grad")
            lr = optimizer.param_groups[0]["lr"]
            sums.add(loss_count, loss=mean_loss)
            if logger is not None:
                logger.log({"event": "train_step", "epoch": epoch, "step": parts.state.global_step,
                            "loss": mean_loss, "lr": lr,
                            "grad_norm": None if grad_norm is None else float(grad_norm)})
            loss_sum.zero_()
            loss_count = 0
        if progress is not None:
            progress.update(images.shape[0] * accum * parts.world_size,
                            loss=float(sums.local().get("loss", float("nan"))),
                            lr=optimizer.param_groups[0]["lr"])
        if parts.state.crash_at_step == parts.state.global_step:
            os.kill(os.getpid(), signal.SIGKILL)  # testing hook: die like a preempted job
    if loss_count:
        sums.add(loss_count, loss=(loss_sum / loss_count).item())
    out = sums.reduced(parts.device)
    out["skipped_images"] = int(all_reduce_sum({"s": float(skipped)}, parts.device)["s"])
    out["steps"] = done
    out["lr"] = optimizer.param_groups[0]["lr"]
    return out


def _optimizer_step(model: nn.Module, parts: TrainParts):
    """Unscale, clip, step, update the scaler; returns the pre-clip grad norm (or None)."""
    grad_norm = None
    if parts.scaler is not None:
        parts.scaler.unscale_(parts.optimizer)
    if parts.clip_grad:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), parts.clip_grad)
    if parts.scaler is not None:
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    else:
        parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    return grad_norm


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device: torch.device, amp: AmpSettings,
             channels_last: bool = False, max_steps: int | None = None,
             progress: Progress | None = None, world_size: int = 1) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and cross-entropy over ``loader``, summed over ranks."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    totals = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0.0, "skipped": 0.0}
    for step, (images, targets, nskip) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast(amp):
            logits = model(images)
        logits = logits.float()
        top1, top5 = topk_correct(logits, targets, (1, 5))
        totals["loss"] += float(criterion(logits, targets))
        totals["top1"] += top1
        totals["top5"] += top5
        totals["count"] += targets.shape[0]
        totals["skipped"] += float(nskip.sum())
        if progress is not None:
            progress.update(images.shape[0] * world_size)
    totals = all_reduce_sum(totals, device)
    n = max(totals["count"], 1.0)
    return {"loss": totals["loss"] / n, "top1": 100.0 * totals["top1"] / n,
            "top5": 100.0 * totals["top5"] / n, "count": int(totals["count"]),
            "skipped_images": int(totals["skipped"])}
