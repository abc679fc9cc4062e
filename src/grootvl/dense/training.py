"""The training loop shared by ``det-train`` and ``seg-train``.

A *task* (``DetectionTask`` or ``SegmentationTask``) supplies the data sets, the model, the
loss of a batch, the evaluation and the learning-rate schedule; this module does the rest
with :mod:`grootvl.engine`: torchrun process groups, seeding, AMP, layer-wise lr decay,
atomic ``last.pth`` / ``best.pth`` checkpoints with ``--resume auto``, JSON-lines logging,
progress display and metric reduction over ranks.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from grootvl.engine import distributed as D
from grootvl.engine.amp import autocast, make_grad_scaler, resolve_amp
from grootvl.engine.checkpoint import CheckpointManager, load_checkpoint_file
from grootvl.engine.errors import UserError
from grootvl.engine.metrics import MetricSums
from grootvl.engine.progress import JsonlLogger, Progress
from grootvl.engine.seeding import get_rng_state, seed_everything, set_rng_state

from .lr_decay import param_groups_lrd

__all__ = ["LrSchedule", "run_dense_training", "LOG_FILE", "METRICS_FILE"]

LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"


@dataclass
class LrSchedule:
    """Per-iteration lr: linear warm-up, then steps (detection) or poly decay (segmentation).

    Every parameter group gets ``base_lr * lr_scale * factor(iteration)`` (``lr_scale``
    carries the layer-wise decay).
    """

    base_lr: float
    total_iters: int
    warmup_iters: int = 0
    warmup_ratio: float = 1e-3
    kind: str = "step"                  # "step" | "poly"
    milestones: tuple[int, ...] = ()    # iterations where the lr is multiplied by gamma
    gamma: float = 0.1
    power: float = 1.0
    min_lr: float = 0.0

    def factor(self, iteration: int) -> float:
        if self.kind == "step":
            factor = self.gamma ** sum(iteration >= m for m in self.milestones)
        else:
            progress = min(iteration, self.total_iters) / max(self.total_iters, 1)
            floor = self.min_lr / self.base_lr if self.base_lr else 0.0
            factor = (1 - progress) ** self.power * (1 - floor) + floor
        if iteration < self.warmup_iters:
            factor *= self.warmup_ratio + (1 - self.warmup_ratio) * iteration / self.warmup_iters
        return factor

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> float:
        factor = self.factor(iteration)
        for group in optimizer.param_groups:
            group["lr"] = self.base_lr * group.get("lr_scale", 1.0) * factor
        return self.base_lr * factor


def _seed_worker(worker_id: int) -> None:
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32  # distinct per worker and per epoch
    np.random.seed(seed)
    random.seed(seed)


def _train_loader(task, train_ds, args, env: D.DistEnv):
    needed = args.batch_size * env.world_size
    if len(train_ds) < needed:
        raise UserError(f"the training set has {len(train_ds)} usable images, fewer than one "
                        f"step needs (--batch-size {args.batch_size} x {env.world_size} "
                        "process(es)); lower --batch-size")
    # A DistributedSampler also in one process: its order depends only on (seed, epoch), so
    # a resumed run sees the batches an uninterrupted run would have seen.
    sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=env.world_size,
                                                  rank=env.rank, shuffle=True, seed=args.seed,
                                                  drop_last=True)
    loader = torch.utils.data.DataLoader(
        train_ds, batch_size=args.batch_size, sampler=sampler, drop_last=True,
        collate_fn=task.collate, num_workers=args.workers, persistent_workers=args.workers > 0,
        pin_memory=env.device.type == "cuda", worker_init_fn=_seed_worker)
    return sampler, loader


def _sync_buffers(model: torch.nn.Module) -> None:
    """Every rank takes rank 0's buffers (BatchNorm statistics) before evaluating.

    DDP broadcasts buffers at the start of each forward, so after the last training step
    each rank holds its own statistics; without this, ranks would evaluate slightly
    different models, and not the one saved in the checkpoint (rank 0's).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def _metric(metrics: dict, path: tuple[str, ...]) -> float:
    value = metrics
    for key in path:
        value = value[key]
    return float(value)


def run_dense_training(task, args) -> dict:
    """Trains ``task`` for ``args.epochs`` epochs; returns the run summary.

    Writes to ``args.output``: ``last.pth`` every epoch, ``best.pth`` when the task's main
    metric improves, ``metrics.json`` after every evaluation, ``log.jsonl``, ``summary.json``.
    """
    env = D.init_distributed(args.device)
    try:
        return _train(task, args, env)
    finally:
        D.teardown_distributed()


def _train(task, args, env: D.DistEnv) -> dict:
    seed_everything(args.seed + env.rank)
    amp = resolve_amp(args.amp, env.device)
    output = Path(args.output)
    train_ds, val_ds = task.datasets()
    sampler, loader = _train_loader(task, train_ds, args, env)
    bare = task.build_model()
    if env.distributed and env.device.type == "cuda":
        bare = torch.nn.SyncBatchNorm.convert_sync_batchnorm(bare)
    bare.to(env.device)
    model = bare
    if env.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            bare, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    groups = param_groups_lrd(bare, args.lr, args.weight_decay, args.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999))
    steps_per_epoch = len(loader)
    schedule = task.schedule(steps_per_epoch)
    scaler = make_grad_scaler(amp)
    ckpts = CheckpointManager(output)
    start_epoch, global_step, best = 0, 0, -math.inf
    resume_path = ckpts.find_resume(args.resume)
    if resume_path is not None:
        ckpt = load_checkpoint_file(resume_path)
        if ckpt.get("task") != task.kind or ckpt.get("model_args") != task.model_args():
            raise UserError(
                f"--resume {resume_path}: the checkpoint is a {ckpt.get('task')} run of "
                f"{ckpt.get('model_args')}, this run is {task.kind} with {task.model_args()}; "
                "resume with the same model options or use another --output")
        bare.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, global_step = int(ckpt["epoch"]) + 1, int(ckpt["global_step"])
        best = float(ckpt.get("best_metric", -math.inf))
        rngs = ckpt.get("rng") or []
        if len(rngs) == env.world_size:
            set_rng_state(rngs[env.rank])
    logger = JsonlLogger(output / LOG_FILE if env.is_main else None)
    if env.is_main:
        output.mkdir(parents=True, exist_ok=True)
        logger.log({"event": "start", "task": task.kind, "resumed_from":
                    str(resume_path) if resume_path else None, "start_epoch": start_epoch,
                    "epochs": args.epochs, "steps_per_epoch": steps_per_epoch,
                    "world_size": env.world_size, "device": str(env.device), "amp": amp.name,
                    "params": sum(p.numel() for p in bare.parameters()),
                    "train_images": len(train_ds), "val_images": len(val_ds),
                    "model_args": task.model_args(),
                    "lr_groups": [{"lr_scale": g["lr_scale"], "weight_decay": g["weight_decay"],
                                   "params": len(g["params"])} for g in groups]})
    run_start = time.perf_counter()
    record: dict = {}
    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.perf_counter()
        sampler.set_epoch(epoch)
        model.train()
        sums = MetricSums()
        progress = Progress(steps_per_epoch, f"{task.kind} epoch {epoch + 1}/{args.epochs}",
                            args.progress, args.log_every, enabled=env.is_main)
        try:
            for batch in loader:
                lr = schedule.apply(optimizer, global_step)
                with autocast(amp):
                    losses = task.losses(model, batch, env.device)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise UserError(f"the loss became {loss.item()} at step {global_step} (epoch "
                                    f"{epoch}); lower --lr or set --clip-grad")
                (scaler.scale(loss) if scaler else loss).backward()
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if args.clip_grad:
                    torch.nn.utils.clip_grad_norm_(bare.parameters(), args.clip_grad)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                values = {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}
                sums.add(1, **values)
                if global_step % args.log_every == 0:
                    logger.log({"event": "train_step", "epoch": epoch, "step": global_step,
                                "lr": lr, **values})
                progress.update(args.batch_size * env.world_size, loss=values["loss"], lr=lr)
        finally:
            progress.close()
        train_stats = sums.reduced(env.device)
        record = {"event": "epoch", "epoch": epoch, "global_step": global_step, "lr": lr,
                  "train_loss": train_stats.get("loss"),
                  "train_losses": {k: v for k, v in train_stats.items() if k != "loss"},
                  "train_time_s": round(time.perf_counter() - epoch_start, 3)}
        improved = False
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            _sync_buffers(bare)
            metrics = task.evaluate(bare, val_ds, env, amp, args)
            record["val"] = metrics
            score = _metric(metrics, task.primary_metric)
            improved = score > best
            best = max(best, score)
            if env.is_main:
                (output / METRICS_FILE).write_text(json.dumps(
                    {"epoch": epoch, "step": global_step, **metrics}, indent=2))
        rngs = D.all_gather_object(get_rng_state())
        if env.is_main:
            meta = {"task": task.kind, "model_args": task.model_args(), **task.checkpoint_meta(),
                    "epoch": epoch, "global_step": global_step, "best_metric": best,
                    "config": {k: v for k, v in vars(args).items() if k != "func"}}
            if improved:
                ckpts.save_best(bare.state_dict(), meta)
            ckpts.save_last({"model": bare.state_dict(), "optimizer": optimizer.state_dict(),
                             "scaler": scaler.state_dict() if scaler else None, "rng": rngs,
                             **meta})
        record["epoch_time_s"] = round(time.perf_counter() - epoch_start, 3)
        logger.log(record)
        D.barrier()
    summary = {"event": "end", "task": task.kind, "epochs_completed": args.epochs,
               "best_metric": best, "primary_metric": ".".join(task.primary_metric),
               "last": record, "run_time_s": round(time.perf_counter() - run_start, 3)}
    logger.log(summary)
    if env.is_main:
        (output / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
