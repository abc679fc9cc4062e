"""The optimizer and its learning-rate schedule, from the ``optim`` and ``sched`` sections.

Both come from timm's factories, for any model: parameter groups follow the model's own
``no_weight_decay()`` (names excluded from weight decay, besides all 1-D tensors) and, with
``optim.layer_decay``, its ``group_matcher()`` (layer-wise learning-rate decay; timm scales
each group's lr by its ``lr_scale``).

Where torch has a fused update for the optimizer (``optim.fused``), the engine uses it: torch's
default on the CPU is a Python loop over the parameter tensors, which costs most for models of
many small tensors. An AdamW step over 330 of them (a 30 M-parameter model) took 60 ms that
way and 18 ms fused on a 2-core CPU (``benchmarks/bench_optimizer.py``).
"""
from __future__ import annotations

import inspect

import torch
from timm.optim import create_optimizer_v2, get_optimizer_info
from timm.scheduler import create_scheduler_v2

from ..errors import UserError
from .schema import EngineConfig, OptimConfig, SchedConfig

__all__ = ["build_optimizer", "build_scheduler", "scaled_lrs"]


def scaled_lrs(cfg: EngineConfig, world_size: int) -> dict[str, float]:
    """Base, warm-up and minimum lr, scaled by total batch / ``optim.lr_base_batch`` (when
    set; total batch = batch_size x processes x accum_steps)."""
    total = cfg.train.batch_size * world_size * cfg.optim.accum_steps
    factor = total / cfg.optim.lr_base_batch if cfg.optim.lr_base_batch else 1.0
    return {"lr": cfg.optim.base_lr * factor, "warmup_lr": cfg.sched.warmup_lr * factor,
            "min_lr": cfg.sched.min_lr * factor, "total_batch": total}


# what torch's fused optimizers accept (torch.optim's documentation of ``fused``)
_FUSED_DEVICES = ("cpu", "cuda")
_FUSED_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _fused_unsupported(model: torch.nn.Module, name: str) -> str | None:
    """Why torch's fused update cannot run optimizer ``name`` over ``model``; None if it can."""
    opt_class = get_optimizer_info(name).opt_class
    if isinstance(opt_class, str) or "fused" not in inspect.signature(opt_class).parameters:
        return f"timm's {name!r} has no fused implementation"
    for param_name, param in model.named_parameters():
        if param.requires_grad and (param.device.type not in _FUSED_DEVICES
                                    or param.dtype not in _FUSED_DTYPES):
            return (f"parameter {param_name} is {param.dtype} on {param.device} (fused: "
                    f"{', '.join(map(str, _FUSED_DTYPES))} on {' or '.join(_FUSED_DEVICES)})")
    return None


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer ``cfg.name`` over ``model``'s parameter groups (on its device), fused
    as ``cfg.fused`` says."""
    extra = {"eps": cfg.eps, "betas": tuple(cfg.betas)} if "adam" in cfg.name else \
        {"momentum": cfg.momentum}
    if cfg.fused is not False:
        why_not = _fused_unsupported(model, cfg.name.lower())
        if cfg.fused and why_not:
            raise UserError(f"optim.fused is true, but {why_not}; set optim.fused to null "
                            "(fused where possible) or false")
        if why_not is None:
            extra["fused"] = True
    return create_optimizer_v2(model, opt=cfg.name, lr=lr, weight_decay=cfg.weight_decay,
                               layer_decay=cfg.layer_decay, **extra)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedConfig, lrs: dict[str, float],
                    steps_per_epoch: int):
    """timm's scheduler ``cfg.name``: ``step_update(step)`` after every optimizer step and
    ``step(epoch)`` after every epoch; only the one matching ``cfg.step_on_epochs`` acts."""
    warmup = cfg.warmup_epochs
    if cfg.warmup_steps is not None:
        warmup = cfg.warmup_steps / steps_per_epoch  # timm counts warm-up in epochs
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.name, num_epochs=cfg.epochs, warmup_epochs=warmup,
        warmup_lr=lrs["warmup_lr"], min_lr=lrs["min_lr"], step_on_epochs=cfg.step_on_epochs,
        updates_per_epoch=steps_per_epoch, decay_milestones=list(cfg.decay_milestones),
        decay_rate=cfg.decay_rate)
    # the lr of step 0 with each group's lr_scale (timm sets it at construction only when
    # warming up); a no-op otherwise
    if cfg.step_on_epochs:
        scheduler.step(0)
    else:
        scheduler.step_update(0)
    return scheduler
