"""The training loop of every task: :func:`run_training`.

It works in a single process or under ``torchrun`` (one process per device) and knows no
model family: a :class:`~.task.Task` supplies data, model, loss and metrics. The loop owns
seeding, sampling, gradient accumulation, mixed precision, clipping, the optimizer and lr
schedule (timm's factories), EMA, atomic snapshots (``last.pth`` every epoch, ``best.pth`` /
``ema_best.pth`` on improvement of the task's primary metric), exact resumption, JSON-lines
logging, progress display and DDP.

Files in the output folder: ``last.pth``, ``best.pth``, ``ema_best.pth``, ``config.yaml``,
``log.jsonl`` (records ``start``, ``train_step``, ``epoch``, ``end``), ``metrics.json`` (the
latest evaluation) and ``summary.json``. The folder is locked for the run's life and a new
run refuses to start over another one's files (:class:`~.run_folder.RunFolder`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from timm.utils import ModelEmaV3

from ..errors import UserError
from . import distributed as D
from .amp import AmpSettings, autocast, make_grad_scaler, resolve_amp
from .config import dump_config
from .evaluation import evaluate, sync_buffers
from .metrics import MetricSums
from .optim import build_optimizer, build_scheduler, scaled_lrs
from .progress import JsonlLogger, Progress
from .run_folder import RunFolder
from .run_state import (RunState, already_finished, read_resume_snapshot, restore, save_epoch,
                        update_best)
from .sampling import eval_loader, train_loader
from .schema import EngineConfig
from .seeding import get_rng_state, seed_everything
from .snapshots import SnapshotManager, atomic_write_text
from .task import Task

__all__ = ["LOG_FILE", "METRICS_FILE", "NonFiniteLossError", "run_training"]

LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"
SUMMARY_FILE = "summary.json"
# a weight this large squares to more than float32 holds: activations overflow to inf/NaN
_DIVERGED_WEIGHT = 1e19
_DIVERGED_HINT = ("lower optim.base_lr (--lr) or optim.weight_decay (--weight-decay), or enable "
                  "optim.clip_grad (--clip-grad)")


class NonFiniteLossError(UserError):
    """Training diverged (NaN/inf loss)."""


@dataclass
class RunParts:
    """Everything one run trains with (:mod:`.run_state` saves and restores its state)."""

    task: Task
    cfg: EngineConfig
    env: D.DistEnv
    amp: AmpSettings
    bare: nn.Module                     # the model itself (saved, evaluated)
    model: nn.Module                    # the same, DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    scheduler: object                   # timm scheduler: step_update() per optimizer step
    scaler: torch.amp.GradScaler | None
    ema: ModelEmaV3 | None
    steps_per_epoch: int
    crash_at_step: int | None = None    # testing hook: SIGKILL ourselves after this step


def run_training(task: Task, cfg: EngineConfig, output: str | os.PathLike,
                 resume: str | None = None, crash_at_step: int | None = None,
                 overwrite: bool = False) -> dict:
    """Train ``task`` as ``cfg`` says, writing to ``output``; returns the run summary.

    ``resume``: ``"auto"`` continues from ``output/last.pth`` if it exists, a path from that
    snapshot; resuming a run that has trained all its epochs changes nothing (the summary
    returned has ``already_finished``). Without ``resume``, a folder that holds another run
    is refused unless ``overwrite`` (its run files are deleted first). The folder is locked
    while the run lasts. ``crash_at_step`` is a testing aid: the process kills itself
    (SIGKILL) right after that optimizer step, like a preempted job.
    """
    env = D.init_distributed(cfg.train.device)
    folder = RunFolder(output)
    try:
        problem = None
        if env.is_main:
            try:
                folder.claim(resume, overwrite)
            except UserError as exc:
                problem = str(exc)
        problem = D.broadcast_object(problem)
        if problem:
            raise UserError(problem)
        with D.cpu_threads(cfg.train.threads):
            return _run(task, cfg, folder, resume, crash_at_step, env)
    finally:
        folder.release()
        D.teardown_distributed()


def _build(task: Task, cfg: EngineConfig, env: D.DistEnv, crash_at_step):
    tcfg = cfg.train
    seed_everything(tcfg.seed + env.rank, tcfg.deterministic)
    amp = resolve_amp(tcfg.amp, env.device)
    train_ds, val_ds = task.datasets()
    loader = train_loader(train_ds, tcfg.batch_size, cfg.optim.accum_steps, tcfg.seed, env,
                          cfg.data.num_workers, cfg.data.pin_memory, task.collate_fn)
    bare = task.build_model(log=env.is_main)
    if tcfg.grad_checkpointing:
        if not hasattr(bare, "set_grad_checkpointing"):
            raise UserError(f"train.grad_checkpointing: {type(bare).__name__} does not support "
                            "gradient checkpointing; set it to false")
        bare.set_grad_checkpointing(True)
    if tcfg.sync_bn and env.distributed and env.device.type == "cuda":
        bare = nn.SyncBatchNorm.convert_sync_batchnorm(bare)
    bare.to(env.device)
    if tcfg.channels_last:
        bare.to(memory_format=torch.channels_last)
    if tcfg.compile:
        # In place (nn.Module.compile): state_dict keys, snapshots and resumption stay those of
        # the plain model. Before DDP wraps it; the EMA's deep copy drops the compilation, so
        # the EMA evaluates eagerly and costs no second compilation.
        bare.compile()
    ema = ModelEmaV3(bare, decay=cfg.ema.decay) if cfg.ema.enabled else None
    model = bare
    if env.distributed:
        model = nn.parallel.DistributedDataParallel(
            bare, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    lrs = scaled_lrs(cfg, env.world_size)
    optimizer = build_optimizer(bare, cfg.optim, lrs["lr"])
    steps_per_epoch = len(loader) // cfg.optim.accum_steps
    if tcfg.limit_train_steps:
        steps_per_epoch = min(steps_per_epoch, tcfg.limit_train_steps)
    scheduler = build_scheduler(optimizer, cfg.sched, lrs, steps_per_epoch)
    parts = RunParts(task, cfg, env, amp, bare, model, optimizer, scheduler,
                     make_grad_scaler(amp), ema, steps_per_epoch, crash_at_step)
    return parts, loader, train_ds, val_ds, lrs


def _run(task: Task, cfg: EngineConfig, folder: RunFolder, resume, crash_at_step, env) -> dict:
    output = folder.path
    snapshots = SnapshotManager(output)
    epochs = cfg.sched.epochs
    resume_path = snapshots.find_resume(resume)
    snapshot = read_resume_snapshot(resume_path, epochs) if resume_path else None
    if env.is_main and resume:
        done = (int(snapshot["epoch"]), int(snapshot["global_step"])) if snapshot else (-1, 0)
        folder.cut_log(LOG_FILE, *done)
    parts, loader, train_ds, val_ds, lrs = _build(task, cfg, env, crash_at_step)
    run = RunState()
    if snapshot is not None:
        restore(resume_path, snapshot, parts, run)  # every compatibility check first
        if run.epoch == epochs:
            return already_finished(task, output, resume_path, snapshot, SUMMARY_FILE)
    val_loader = eval_loader(val_ds, task.eval_batch_size, env, cfg.data.num_workers,
                             cfg.data.pin_memory, task.collate_fn)
    logger = JsonlLogger(output / LOG_FILE if env.is_main else None)
    if env.is_main:
        atomic_write_text(dump_config(cfg), output / "config.yaml")
        logger.log({"event": "start", "task": task.name,
                    "resumed_from": str(resume_path) if resume_path else None,
                    "start_epoch": run.epoch, "epochs": epochs, "world_size": env.world_size,
                    "device": str(env.device), "amp": parts.amp.name,
                    "params": sum(p.numel() for p in parts.bare.parameters()),
                    "train_images": len(train_ds), "val_images": len(val_ds),
                    "steps_per_epoch": parts.steps_per_epoch, **lrs, **task.describe(),
                    "optimizer": type(parts.optimizer).__name__,
                    "fused_update": bool(parts.optimizer.defaults.get("fused")),
                    "lr_groups": [{"lr_scale": g.get("lr_scale", 1.0),
                                   "weight_decay": g["weight_decay"], "params": len(g["params"])}
                                  for g in parts.optimizer.param_groups]})
    run_start = time.perf_counter()
    best_key = f"best_{task.primary_metric}"
    record: dict = {}
    for epoch in range(run.epoch, epochs):
        epoch_start = time.perf_counter()
        loader.sampler.set_epoch(epoch)
        progress = Progress(parts.steps_per_epoch, f"epoch {epoch + 1}/{epochs}",
                            cfg.train.progress, cfg.train.log_every, enabled=env.is_main)
        try:
            stats = _train_epoch(parts, loader, epoch, run, progress, logger)
        finally:
            progress.close()
        parts.scheduler.step(epoch + 1)
        record = {"event": "epoch", "epoch": epoch, "global_step": run.global_step,
                  "train_loss": stats.pop("loss", None), "train_losses": stats.pop("losses"),
                  **stats, "train_time_s": round(time.perf_counter() - epoch_start, 3)}
        if (epoch + 1) % cfg.train.epochs_between_eval == 0 or epoch + 1 == epochs:
            _validate(parts, val_loader, record, output, epoch, run.global_step)
        improved = update_best(run, record, task.primary_metric)
        rngs = D.all_gather_object(get_rng_state())
        record["epoch_time_s"] = round(time.perf_counter() - epoch_start, 3)
        record[best_key] = run.best
        logger.log(record, durable=True)  # on disk before the snapshot that claims it
        if env.is_main:
            save_epoch(parts, run, epoch, rngs, improved, snapshots)
        run.epoch = epoch + 1
        D.barrier()
    summary = {"event": "end", "task": task.name, "epochs_completed": epochs,
               "primary_metric": task.primary_metric, best_key: run.best,
               f"best_ema_{task.primary_metric}": run.best_ema, "last": record,
               "param_checksums": D.all_gather_object(param_checksum(parts.bare)),
               "run_time_s": round(time.perf_counter() - run_start, 3)}
    logger.log(summary)
    if env.is_main:
        atomic_write_text(json.dumps(summary, indent=2, default=str), output / SUMMARY_FILE)
    return summary


def _train_epoch(parts: RunParts, loader, epoch: int, run: RunState, progress: Progress,
                 logger: JsonlLogger) -> dict:
    """One pass over ``loader`` (at most ``steps_per_epoch`` optimizer steps).

    Losses are summed on the device and read back every ``log_every`` steps only (a read is
    a device synchronisation). Returns the epoch's means over all processes: ``loss``,
    ``losses`` (each term), ``lr``, ``skipped_images``, ``steps``.
    """
    cfg, env, optimizer = parts.cfg, parts.env, parts.optimizer
    accum, log_every = cfg.optim.accum_steps, cfg.train.log_every
    model = parts.model
    model.train()
    sums = MetricSums()
    skipped = 0
    window: dict[str, torch.Tensor] = {}
    count = 0
    done = 0
    optimizer.zero_grad(set_to_none=True)
    for micro, raw in enumerate(loader):
        if done >= parts.steps_per_epoch:
            break
        batch = parts.task.prepare_batch(raw, env.device, training=True)
        skipped += batch.skipped
        boundary = (micro + 1) % accum == 0
        sync = contextlib.nullcontext() if boundary or not hasattr(model, "no_sync") else model.no_sync()
        with sync, _divergence_reported(parts.bare, epoch, run.global_step + 1):
            with autocast(parts.amp):
                terms = parts.task.losses(model, batch)
            if "loss" in terms:  # the name of the total below
                raise ValueError(f"{type(parts.task).__name__}.losses: name no term 'loss'")
            names = list(terms)
            loss = terms[names[0]]
            for name in names[1:]:
                loss = loss + terms[name]
            for name, value in (("loss", loss), *terms.items()):
                total = window.get(name)
                window[name] = value.detach().float() if total is None else total + value.detach().float()
            count += 1
            scaled = loss / accum
            (parts.scaler.scale(scaled) if parts.scaler else scaled).backward()
        if not boundary:
            continue
        grad_norm = _optimizer_step(parts)
        done += 1
        run.global_step += 1
        parts.scheduler.step_update(num_updates=run.global_step)
        if parts.ema is not None:
            parts.ema.update(parts.bare, step=run.global_step)
        lr = max(group["lr"] for group in optimizer.param_groups)
        if done % log_every == 0 or done == parts.steps_per_epoch:
            means = {name: (total / count).item() for name, total in window.items()}
            if not math.isfinite(means["loss"]):
                raise NonFiniteLossError(
                    f"the loss became {means['loss']} in epoch {epoch} at step {run.global_step}; "
                    + _DIVERGED_HINT)
            sums.add(count, **means)
            logger.log({"event": "train_step", "epoch": epoch, "step": run.global_step,
                        **means, "lr": lr,
                        "grad_norm": None if grad_norm is None else float(grad_norm)})
            window.clear()
            count = 0
        progress.update(batch.size * accum * env.world_size,
                        loss=float(sums.local().get("loss", float("nan"))), lr=lr)
        if parts.crash_at_step == run.global_step:
            os.kill(os.getpid(), signal.SIGKILL)  # testing hook: die like a preempted job
    if count:
        sums.add(count, **{name: (total / count).item() for name, total in window.items()})
    means = sums.reduced(env.device)
    total_skipped = D.all_reduce_sum({"s": float(skipped)}, env.device)["s"]
    return {"loss": means.pop("loss", None), "losses": means,
            "lr": max(group["lr"] for group in optimizer.param_groups),
            "skipped_images": int(total_skipped), "steps": done}


@contextlib.contextmanager
def _divergence_reported(model: nn.Module, epoch: int, step: int):
    """A forward or backward that fails because the weights diverged (NaN, or so large that
    activations overflow; the tree construction refuses NaN features) is reported as
    :class:`NonFiniteLossError`, not as the failing operator's error."""
    try:
        yield
    except (ValueError, RuntimeError, FloatingPointError) as exc:
        with torch.no_grad():
            worst = max((float(p.detach().abs().max()) for p in model.parameters() if p.numel()),
                        default=0.0)
        if math.isfinite(worst) and worst < _DIVERGED_WEIGHT:
            raise
        raise NonFiniteLossError(f"training diverged in epoch {epoch} at step {step}: the "
                                 f"weights reached {worst:.3g}; {_DIVERGED_HINT}") from exc


def _optimizer_step(parts: RunParts):
    """Unscale, clip, step, update the scaler; returns the pre-clip grad norm (or None)."""
    optimizer, scaler = parts.optimizer, parts.scaler
    grad_norm = None
    if scaler is not None:
        scaler.unscale_(optimizer)
    if parts.cfg.optim.clip_grad:
        grad_norm = nn.utils.clip_grad_norm_(parts.model.parameters(), parts.cfg.optim.clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _validate(parts: RunParts, val_loader, record: dict, output: Path, epoch: int, step: int) -> None:
    """Evaluate the model (and its EMA) into ``record``; ``metrics.json`` on the main process."""
    cfg, env = parts.cfg, parts.env
    sync_buffers(parts.bare)
    options = dict(max_steps=cfg.train.limit_val_steps, progress_mode=cfg.train.progress,
                   log_every=cfg.train.log_every)
    metrics = evaluate(parts.task, parts.model, val_loader, env, parts.amp, **options)
    record.update({f"val_{k}": v for k, v in metrics.items()})
    if parts.ema is not None and cfg.ema.evaluate:
        ema_metrics = evaluate(parts.task, parts.ema.module, val_loader, env, parts.amp, **options)
        record.update({f"ema_val_{k}": v for k, v in ema_metrics.items()})
    if env.is_main:
        (output / METRICS_FILE).write_text(json.dumps({"epoch": epoch, "step": step, **metrics},
                                                      indent=2))


def param_checksum(model: nn.Module) -> float:
    """Sum of all parameters in float64: equal on all processes iff DDP kept them in sync."""
    with torch.no_grad():
        return float(sum(p.detach().double().sum() for p in model.parameters()))
