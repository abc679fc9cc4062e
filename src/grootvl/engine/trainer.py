"""A complete classification run: data, model, optimiser, EMA, resumption, checkpoints.

:func:`run_training` is what ``grootvl train`` (and ``grootvl demo``) call. It works in a
single process or under ``torchrun`` (one process per device), for any timm model name.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from grootvl.data import ImageFolderDataset, ShardSampler, build_transform

from . import distributed as D
from .amp import make_grad_scaler, resolve_amp
from .checkpoint import CheckpointManager, load_checkpoint_file
from .classification import (StepState, TrainParts, build_mixup, build_train_criterion, evaluate,
                             train_one_epoch)
from .config import dump_config
from .errors import UserError
from .progress import JsonlLogger, Progress
from .seeding import get_rng_state, seed_everything, set_rng_state
from .weights import create_model, load_weights

LOG_FILE = "log.jsonl"
_log = logging.getLogger(__name__)


def scaled_lrs(cfg: dict, world_size: int) -> dict[str, float]:
    """Base, warm-up and minimum lr scaled by total batch / ``optim.lr_base_batch``."""
    total = cfg["train"]["batch_size"] * world_size * cfg["optim"]["accum_steps"]
    factor = total / cfg["optim"]["lr_base_batch"]
    return {"lr": cfg["optim"]["base_lr"] * factor, "warmup_lr": cfg["sched"]["warmup_lr"] * factor,
            "min_lr": cfg["sched"]["min_lr"] * factor, "total_batch": total}


def _seed_worker(worker_id: int) -> None:
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32  # distinct per worker and per epoch
    np.random.seed(seed)
    random.seed(seed)


def build_data(cfg: dict, env: D.DistEnv):
    """Train/val datasets and loaders from the ``data`` and ``aug`` sections."""
    dcfg, tcfg = cfg["data"], cfg["train"]
    if not dcfg["path"]:
        raise UserError("no data folder given: pass --data DIR (DIR/train and DIR/val hold one "
                        "sub-folder of images per class)")
    root = Path(dcfg["path"])
    if not root.is_dir():
        raise UserError(f"--data {root}: folder does not exist")
    mode = "L" if dcfg["in_chans"] == 1 else "RGB"
    train_ds = ImageFolderDataset(root / dcfg["train_split"], mode=mode, what="training folder",
                                  transform=build_transform(dcfg, cfg["aug"], is_training=True))
    val_ds = ImageFolderDataset(root / dcfg["val_split"], classes=train_ds.classes, mode=mode,
                                what="validation folder",
                                transform=build_transform(dcfg, cfg["aug"], is_training=False))
    batch = tcfg["batch_size"]
    if len(train_ds) < batch * env.world_size * cfg["optim"]["accum_steps"]:
        raise UserError(f"training folder has {len(train_ds)} images, fewer than one optimizer "
                        f"step needs (batch_size {batch} x {env.world_size} process(es) x "
                        f"accum_steps {cfg['optim']['accum_steps']}); lower --batch-size")
    workers = dcfg["num_workers"]
    common = dict(num_workers=workers, pin_memory=dcfg["pin_memory"] and env.device.type == "cuda",
                  persistent_workers=workers > 0, worker_init_fn=_seed_worker)
    # A DistributedSampler also in one process: its permutation depends only on (seed, epoch),
    # so a resumed run sees exactly the batches an uninterrupted one would.
    train_sampler = torch.utils.data.DistributedSampler(
        train_ds, num_replicas=env.world_size, rank=env.rank, shuffle=True,
        seed=tcfg["seed"], drop_last=True)
    train_loader = torch.utils.data.DataLoader(train_ds, batch_size=batch, sampler=train_sampler,
                                               drop_last=True, **common)
    val_loader = torch.utils.data.DataLoader(
        val_ds, batch_size=batch, sampler=ShardSampler(len(val_ds), env.rank, env.world_size),
        **common)
    return train_ds, val_ds, train_loader, val_loader


@dataclass
class RunState:
    epoch: int = 0                  # next epoch to train
    best_top1: float = -1.0
    best_ema_top1: float = -1.0


def _checkpoint_state(cfg, bare, parts: TrainParts, run: RunState, epoch: int, classes, rngs):
    return {
        "model": bare.state_dict(),
        "model_ema": parts.ema.module.state_dict() if parts.ema is not None else None,
        "optimizer": parts.optimizer.state_dict(),
        "lr_scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
        "epoch": epoch,
        "global_step": parts.state.global_step,
        "max_accuracy": run.best_top1,
        "max_accuracy_ema": run.best_ema_top1,
        "rng": rngs,
        "arch": cfg["model"]["name"],
        "classes": list(classes),
        "config": cfg,
    }


def _resume(path: Path, cfg, bare, parts: TrainParts, run: RunState, env: D.DistEnv) -> None:
    ckpt = load_checkpoint_file(path)
    if ckpt.get("arch") != cfg["model"]["name"]:
        raise UserError(f"--resume {path}: checkpoint is for model {ckpt.get('arch')!r}, this run "
                        f"trains {cfg['model']['name']!r}; use another --output or --model")
    try:
        bare.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(f"--resume {path}: the checkpoint's weights do not fit this run's model "
                        f"(were model.kwargs or the classes changed?): {exc}") from exc
    if parts.ema is not None and ckpt.get("model_ema") is not None:
        parts.ema.module.load_state_dict(ckpt["model_ema"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["lr_scheduler"])
    if parts.scaler is not None and ckpt.get("scaler"):
        parts.scaler.load_state_dict(ckpt["scaler"])
    parts.state.global_step = int(ckpt["global_step"])
    run.epoch = int(ckpt["epoch"]) + 1
    run.best_top1 = float(ckpt.get("max_accuracy", -1.0))
    run.best_ema_top1 = float(ckpt.get("max_accuracy_ema", -1.0))
    rngs = ckpt.get("rng") or []
    if len(rngs) == env.world_size:
        set_rng_state(rngs[env.rank])


def param_checksum(model: torch.nn.Module) -> float:
    """Sum of all parameters in float64: equal on all ranks iff DDP kept them in sync."""
    with torch.no_grad():
        return float(sum(p.detach().double().sum() for p in model.parameters()))


def build_model(cfg: dict, num_classes: int, log: bool = True) -> torch.nn.Module:
    """The ``model`` section's model, initialised from ``model.init_checkpoint`` if set.

    The initial checkpoint (ours or an original release) must fit strictly, except its
    classifier: one for another number of classes is dropped, with a log line, and the
    model's own freshly initialised classifier is trained instead.
    """
    mcfg = cfg["model"]
    model = create_model(mcfg["name"], num_classes, cfg["data"]["in_chans"], mcfg["drop_path_rate"],
                         **(mcfg["kwargs"] or {}))
    if mcfg["init_checkpoint"]:
        dropped = load_weights(model, mcfg["init_checkpoint"], model_name=mcfg["name"],
                               new_classifier=True)
        if dropped and log:
            _log.info("model.init_checkpoint %s: its classifier does not fit %d classes; dropped "
                      "%s and re-initialised the model's classifier", mcfg["init_checkpoint"],
                      num_classes, ", ".join(dropped))
    return model


def run_training(cfg: dict, output: str | Path, resume: str | None = None,
                 crash_at_step: int | None = None) -> dict:
    """Train ``cfg`` writing checkpoints and ``log.jsonl`` to ``output``; returns the summary."""
    env = D.init_distributed(cfg["train"]["device"])
    try:
        with D.cpu_threads(cfg["train"]["threads"]):
            return _run(cfg, Path(output), resume, crash_at_step, env)
    finally:
        D.teardown_distributed()


def _run(cfg, output: Path, resume, crash_at_step, env: D.DistEnv) -> dict:
    tcfg, ocfg = cfg["train"], cfg["optim"]
    seed_everything(tcfg["seed"] + env.rank, tcfg["deterministic"])
    amp = resolve_amp(tcfg["amp"], env.device)
    train_ds, val_ds, train_loader, val_loader = build_data(cfg, env)
    num_classes = len(train_ds.classes)
    mixup = build_mixup(cfg["aug"], num_classes)
    if mixup is not None and tcfg["batch_size"] % 2:
        raise UserError(f"mixup/cutmix needs an even --batch-size (got {tcfg['batch_size']}); "
                        "or disable them with --set aug.mixup=0 --set aug.cutmix=0")
    bare = build_model(cfg, num_classes, log=env.is_main)
    mcfg = cfg["model"]
    if tcfg["grad_checkpointing"]:
        bare.set_grad_checkpointing(True)
    if tcfg["sync_bn"] and env.distributed:
        bare = torch.nn.SyncBatchNorm.convert_sync_batchnorm(bare)
    bare.to(env.device)
    if tcfg["channels_last"]:
        bare.to(memory_format=torch.channels_last)
    ema = ModelEmaV3(bare, decay=cfg["ema"]["decay"]) if cfg["ema"]["enabled"] else None
    model = bare
    if env.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            bare, device_ids=[env.device.index] if env.device.type == "cuda" else None)

    lrs = scaled_lrs(cfg, env.world_size)
    opt_kwargs = {"eps": ocfg["eps"], "betas": tuple(ocfg["betas"])} if "adam" in ocfg["name"] \
        else {"momentum": ocfg["momentum"]}
    optimizer = create_optimizer_v2(bare, opt=ocfg["name"], lr=lrs["lr"],
                                    weight_decay=ocfg["weight_decay"], **opt_kwargs)
    steps_per_epoch = len(train_loader) // ocfg["accum_steps"]
    if tcfg["limit_train_steps"]:
        steps_per_epoch = min(steps_per_epoch, tcfg["limit_train_steps"])
    scfg = cfg["sched"]
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=scfg["name"], num_epochs=scfg["epochs"], warmup_epochs=scfg["warmup_epochs"],
        warmup_lr=lrs["warmup_lr"], min_lr=lrs["min_lr"], step_on_epochs=scfg["step_on_epochs"],
        updates_per_epoch=steps_per_epoch)
    parts = TrainParts(optimizer=optimizer, scheduler=scheduler,
                       criterion=build_train_criterion(cfg["aug"], mixup is not None),
                       amp=amp, device=env.device, scaler=make_grad_scaler(amp), mixup=mixup,
                       ema=ema, clip_grad=ocfg["clip_grad"], accum_steps=ocfg["accum_steps"],
                       channels_last=tcfg["channels_last"], world_size=env.world_size,
                       state=StepState(crash_at_step=crash_at_step))
    ckpts = CheckpointManager(output)
    run = RunState()
    logger = JsonlLogger(output / LOG_FILE if env.is_main else None)
    resume_path = ckpts.find_resume(resume)
    if resume_path is not None:
        _resume(resume_path, cfg, bare, parts, run, env)
    if env.is_main:
        output.mkdir(parents=True, exist_ok=True)
        (output / "config.yaml").write_text(dump_config(cfg))
        logger.log({"event": "start", "resumed_from": str(resume_path) if resume_path else None,
                    "start_epoch": run.epoch, "epochs": num_epochs, "world_size": env.world_size,
                    "device": str(env.device), "amp": amp.name, "model": mcfg["name"],
                    "params": sum(p.numel() for p in bare.parameters()),
                    "train_images": len(train_ds), "val_images": len(val_ds),
                    "classes": num_classes, "steps_per_epoch": steps_per_epoch, **lrs})

    run_start = time.perf_counter()
    summary: dict = {}
    for epoch in range(run.epoch, num_epochs):
        epoch_start = time.perf_counter()
        train_loader.sampler.set_epoch(epoch)
        progress = Progress(steps_per_epoch, f"epoch {epoch + 1}/{num_epochs}", tcfg["progress"],
                            tcfg["log_every"], enabled=env.is_main)
        try:
            train_stats = train_one_epoch(model, train_loader, parts, epoch, bare_model=bare,
                                          max_steps=tcfg["limit_train_steps"], progress=progress,
                                          logger=logger, log_every=tcfg["log_every"])
        finally:
            progress.close()
        scheduler.step(epoch + 1)
        record = {"event": "epoch", "epoch": epoch, "global_step": parts.state.global_step,
                  "train_loss": train_stats.get("loss"), "lr": train_stats["lr"],
                  "skipped_images": train_stats["skipped_images"],
                  "train_time_s": round(time.perf_counter() - epoch_start, 3)}
        if (epoch + 1) % tcfg["epochs_between_eval"] == 0 or epoch + 1 == num_epochs:
            val = _evaluate(model, val_loader, env, amp, tcfg)
            record.update({f"val_{k}": v for k, v in val.items()})
            if ema is not None and cfg["ema"]["evaluate"]:
                ema_val = _evaluate(ema.module, val_loader, env, amp, tcfg)
                record.update({f"ema_val_{k}": v for k, v in ema_val.items()})
        rngs = D.all_gather_object(get_rng_state())
        if env.is_main:
            _save_epoch(cfg, bare, parts, run, epoch, train_ds.classes, rngs, record, ckpts)
        record["epoch_time_s"] = round(time.perf_counter() - epoch_start, 3)
        record["best_top1"] = run.best_top1
        logger.log(record)
        summary = record
        D.barrier()
    checksums = D.all_gather_object(param_checksum(bare))
    summary = {"event": "end", "epochs_completed": num_epochs, "best_top1": run.best_top1,
               "best_ema_top1": run.best_ema_top1, "last": summary,
               "param_checksums": checksums, "run_time_s": round(time.perf_counter() - run_start, 3)}
    logger.log(summary)
    if env.is_main:
        (output / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _evaluate(model, loader, env: D.DistEnv, amp, tcfg) -> dict:
    steps = min(len(loader), tcfg["limit_val_steps"] or len(loader))
    progress = Progress(steps, "eval", tcfg["progress"], tcfg["log_every"], enabled=env.is_main)
    try:
        return evaluate(model, loader, device=env.device, amp=amp, channels_last=tcfg["channels_last"],
                        max_steps=tcfg["limit_val_steps"], progress=progress,
                        world_size=env.world_size)
    finally:
        progress.close()


def _save_epoch(cfg, bare, parts, run: RunState, epoch, classes, rngs, record, ckpts) -> None:
    """best.pth / ema_best.pth on improvement, then last.pth (the resume point) last."""
    meta = {"epoch": epoch, "arch": cfg["model"]["name"], "classes": list(classes), "config": cfg}
    if "val_top1" in record and record["val_top1"] > run.best_top1:
        run.best_top1 = record["val_top1"]
        ckpts.save_best(bare.state_dict(), {**meta, "max_accuracy": run.best_top1})
    if "ema_val_top1" in record and record["ema_val_top1"] > run.best_ema_top1:
        run.best_ema_top1 = record["ema_val_top1"]
        ckpts.save_best(parts.ema.module.state_dict(), {**meta, "max_accuracy": run.best_ema_top1},
                        ema=True)
    ckpts.save_last(_checkpoint_state(cfg, bare, parts, run, epoch, classes, rngs))
