"""Image classification on image folders, any timm model: the task and ``grootvl eval``.

Data: ``DIR/<split>/<class>/<image>`` (ImageNet's layout). Training uses timm's transforms,
mixup/cutmix and soft-target or label-smoothing cross-entropy; evaluation reports top-1,
top-5 (percent) and cross-entropy.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ..data import ImageFolderDataset, build_transform
from ..engine import distributed as D
from ..engine.amp import resolve_amp
from ..engine.evaluation import evaluate
from ..engine.sampling import eval_loader
from ..engine.snapshots import snapshot_meta
from ..engine.task import Batch, drop_replaced
from ..errors import UserError, shown
from ..files import CheckpointError, read_checkpoint
from ..models.factory import create_model
from ..models.weights import fit_weights, load_weights
from .config import ModelConfig, RunConfig, load_config
from .metrics import topk_correct

__all__ = ["ClassificationTask", "build_classifier", "eval_model_spec", "evaluate_checkpoint"]
_log = logging.getLogger(__name__)


def build_mixup(aug, num_classes: int) -> Mixup | None:
    """timm Mixup/CutMix (with label smoothing folded into the soft targets), or None."""
    if aug.mixup <= 0 and aug.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, prob=aug.mixup_prob,
                 switch_prob=aug.mixup_switch_prob, mode=aug.mixup_mode,
                 label_smoothing=aug.label_smoothing, num_classes=num_classes)


def build_train_criterion(aug, mixup_active: bool) -> nn.Module:
    """Soft-target CE after mixup, label-smoothing CE without it, plain CE when both off."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if aug.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=aug.label_smoothing)
    return nn.CrossEntropyLoss()


def build_classifier(model: ModelConfig, num_classes: int, in_chans: int = 3,
                     log: bool = True) -> nn.Module:
    """The ``model`` section's model, initialised from ``model.init_checkpoint`` if set.

    The initial checkpoint (ours or an original release) must fit strictly, except its
    classifier: one for another number of classes is dropped, with a log line, and the
    model's own freshly initialised classifier is trained instead.
    """
    net = create_model(model.name, num_classes, in_chans, model.drop_path_rate, **model.kwargs)
    if model.init_checkpoint:
        dropped = load_weights(net, model.init_checkpoint, model_name=model.name,
                               new_classifier=True, what="model.init_checkpoint")
        if dropped and log:
            _log.info("model.init_checkpoint %s: its classifier does not fit %d classes; dropped "
                      "%s and re-initialised the model's classifier", model.init_checkpoint,
                      num_classes, ", ".join(dropped))
    return net


class TopKEvaluator:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy, summed over processes."""

    def __init__(self, device: torch.device):
        self.device = device
        self.criterion = nn.CrossEntropyLoss(reduction="sum")
        self.totals = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0.0, "skipped": 0.0}

    def update(self, model: nn.Module, batch: Batch) -> None:
        self.totals["skipped"] += batch.skipped
        if batch.size == 0:
            return
        logits = model(batch.inputs).float()
        top1, top5 = topk_correct(logits, batch.targets, (1, 5))
        self.totals["loss"] += float(self.criterion(logits, batch.targets))
        self.totals["top1"] += top1
        self.totals["top5"] += top5
        self.totals["count"] += batch.targets.shape[0]

    def compute(self) -> dict:
        totals = D.all_reduce_sum(self.totals, self.device)
        n = max(totals["count"], 1.0)
        return {"loss": totals["loss"] / n, "top1": 100.0 * totals["top1"] / n,
                "top5": 100.0 * totals["top5"] / n, "count": int(totals["count"]),
                "skipped_images": int(totals["skipped"])}


class ClassificationTask:
    """Image classification for :func:`grootvl.engine.run_training` (see
    :class:`grootvl.engine.Task`); reads the ``model``, ``data`` and ``aug`` sections."""

    name = "classification"
    primary_metric = "top1"
    collate_fn = None

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.eval_batch_size = cfg.train.batch_size
        self.channels_last = cfg.train.channels_last
        self.classes: list[str] = []
        self.mixup: Mixup | None = None
        self.criterion: nn.Module | None = None

    def datasets(self):
        data, aug = self.cfg.data, self.cfg.aug
        if not data.path:
            raise UserError("no data folder given: pass --data DIR (DIR/train and DIR/val hold "
                            "one sub-folder of images per class)")
        root = Path(data.path)
        if not root.is_dir():
            raise UserError(f"--data {root}: folder does not exist")
        mode = "L" if data.in_chans == 1 else "RGB"
        train = ImageFolderDataset(root / data.train_split, mode=mode,
                                   what="training folder (data.train_split)",
                                   transform=build_transform(data, aug, is_training=True))
        val = ImageFolderDataset(root / data.val_split, classes=train.classes, mode=mode,
                                 what="validation folder (data.val_split)",
                                 transform=build_transform(data, aug, is_training=False))
        self.classes = train.classes
        self.mixup = build_mixup(aug, len(self.classes))
        if self.mixup is not None and self.cfg.train.batch_size % 2:
            raise UserError(f"mixup/cutmix needs an even --batch-size (got "
                            f"{self.cfg.train.batch_size}); or disable them with --set "
                            "aug.mixup=0 --set aug.cutmix=0")
        self.criterion = build_train_criterion(aug, self.mixup is not None)
        return train, val

    def build_model(self, log: bool = True) -> nn.Module:
        return build_classifier(self.cfg.model, len(self.classes), self.cfg.data.in_chans, log)

    def prepare_batch(self, batch, device: torch.device, training: bool) -> Batch:
        images, targets, skipped = batch
        images, targets, replaced = drop_replaced(images, targets, skipped, training)
        images = images.to(device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        if training and self.mixup is not None:
            images, targets = self.mixup(images, targets)
        return Batch(images, targets, size=images.shape[0], skipped=replaced)

    def losses(self, model: nn.Module, batch: Batch) -> dict:
        return {"loss_ce": self.criterion(model(batch.inputs), batch.targets)}

    def evaluator(self, device: torch.device) -> TopKEvaluator:
        return TopKEvaluator(device)

    def snapshot_meta(self) -> dict:
        return {"arch": self.cfg.model.name, "classes": list(self.classes)}

    def check_resume(self, snapshot: dict, path: Path) -> None:
        if snapshot.get("arch") != self.cfg.model.name:
            raise UserError(f"--resume {path}: checkpoint is for model {snapshot.get('arch')!r}, "
                            f"this run trains {self.cfg.model.name!r}; use another --output or "
                            "--model")
        config = snapshot.get("config") or {}
        saved_model = config.get("model") if isinstance(config, dict) else None
        saved = saved_model.get("kwargs") if isinstance(saved_model, dict) else None
        if saved is not None and saved != self.cfg.model.kwargs:
            raise UserError(f"--resume {path}: the snapshot was trained with model.kwargs "
                            f"{shown(saved)}, this run has {shown(self.cfg.model.kwargs)}; "
                            "resume with the same model options or use another --output")
        classes = saved_classes(snapshot, f"--resume {path}")
        if classes is None or classes == self.classes:
            return
        if len(classes) != len(self.classes):
            raise UserError(f"--resume {path}: the snapshot was trained on {len(classes)} "
                            f"classes, the data has {len(self.classes)}; resume on the same "
                            "data or use another --output")
        renamed = [f"{a} -> {b}" for a, b in zip(classes, self.classes) if a != b]
        _log.warning("warning: the class folders of the data differ from the classes %s was "
                     "trained on (%d renamed: %s); class i of the data continues class i of "
                     "the snapshot", path, len(renamed), ", ".join(renamed[:5]))

    def describe(self) -> dict:
        return {"model": self.cfg.model.name, "classes": len(self.classes)}


# ------------------------------------------------------------------------------ grootvl eval

def saved_classes(meta: dict, where: str) -> list[str] | None:
    """A snapshot's ``classes`` (the class folder of each output, in order), checked."""
    classes = meta.get("classes")
    if classes is None:
        return None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{where}: its 'classes' entry is a {type(classes).__name__}, expected a "
                        "list of class names; the snapshot is damaged")
    return classes


def eval_model_spec(meta: dict, model: str | None, checkpoint) -> tuple[str, dict]:
    """``(model name, model kwargs)`` to rebuild the model a checkpoint was trained as.

    ``meta`` is :func:`~grootvl.engine.snapshots.snapshot_meta`'s result. A snapshot of
    ``grootvl train`` carries its config: its ``model.name`` and ``model.kwargs`` are used
    (``model`` naming another architecture gets that architecture's defaults). One without a
    config (an original release, a bare state dict) is ``model`` or grootv_tiny, with defaults.
    """
    config = meta.get("config")
    if config is None:
        return model or "grootv_tiny", {}
    saved = config.get("model") if isinstance(config, dict) else None
    complete = (isinstance(saved, dict) and saved.get("name")
                and isinstance(saved.get("kwargs", {}), (dict, type(None))))
    if not complete:
        if model:
            return model, {}
        what = ("lacks model.name / model.kwargs" if isinstance(config, dict)
                else f"is a {type(config).__name__}, not a mapping")
        raise UserError(f"--checkpoint {checkpoint}: its saved config {what}, so the model it "
                        "was trained as cannot be rebuilt; pass --model NAME to evaluate it as "
                        "NAME with default options")
    if model and model != saved["name"]:
        return model, {}
    return saved["name"], dict(saved.get("kwargs") or {})


def _eval_folder(data: Path, split: str | None) -> Path:
    """The folder of class folders: ``data/split`` (``split`` None: ``data/val`` if there, else
    ``data`` itself)."""
    if not data.is_dir():
        raise UserError(f"--data {data}: {'not a folder' if data.exists() else 'no such folder'}")
    if split is None:
        return data / "val" if (data / "val").is_dir() else data
    if not (data / split).is_dir():
        found = sorted(p.name for p in data.iterdir() if p.is_dir())
        raise UserError(f"--split {split}: {data} has no sub-folder {split!r} (it has "
                        f"{', '.join(found[:8]) or 'none'}); name one of them, or pass the "
                        "folder of class folders as --data")
    return data / split


def evaluate_checkpoint(checkpoint: str | os.PathLike, data: str | os.PathLike,
                        split: str | None = None, model: str | None = None,
                        use_ema: bool = False, batch_size: int = 64, img_size: int | None = None,
                        crop_pct: float | None = None, in_chans: int | None = None,
                        workers: int = 4, device: str = "auto", amp: str = "auto",
                        progress: str = "auto") -> dict:
    """Top-1, top-5 and loss of a checkpoint (a ``grootvl train`` snapshot or an original
    release file) on an image folder: ``data/<class>/<image>``, or ``data/split/...``
    (``split`` None: ``data/val`` when it exists).

    The model is rebuilt as the snapshot's config says (see :func:`eval_model_spec`); image
    size, crop and channels default to that config (224, 0.875, 3 for release files). Every
    option is checked by the run config's schema. Works under torchrun (each process
    evaluates its share); every process returns the result.
    """
    where = f"checkpoint {checkpoint}"
    ckpt = read_checkpoint(checkpoint)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{where} holds a {type(ckpt).__name__}, not a state dict or a "
                              "training snapshot")
    meta = snapshot_meta(ckpt)
    name, model_kwargs = eval_model_spec(meta, model, checkpoint)
    saved = meta.get("config") if isinstance(meta.get("config"), dict) else None
    cfg = load_config(base=saved, base_origin=where, flags={
        "data.img_size": (img_size, "--img-size"), "data.crop_pct": (crop_pct, "--crop-pct"),
        "data.in_chans": (in_chans, "--in-chans"), "train.batch_size": (batch_size, "--batch-size"),
        "data.num_workers": (workers, "--workers"), "train.device": (device, "--device"),
        "train.amp": (amp, "--amp"), "train.progress": (progress, "--progress")})
    classes = saved_classes(meta, where)
    root = _eval_folder(Path(data), split)
    task = ClassificationTask(cfg)
    env = D.init_distributed(cfg.train.device)
    try:
        transform = build_transform(cfg.data, cfg.aug, is_training=False)
        dataset = ImageFolderDataset(root, mode="L" if cfg.data.in_chans == 1 else "RGB",
                                     what="evaluation folder", transform=transform)
        if classes:  # use the class indices the model was trained with
            dataset.remap_classes(classes)
        net = create_model(name, len(dataset.classes), cfg.data.in_chans, **model_kwargs)
        fit_weights(net, ckpt, where, use_ema=use_ema, model_name=name)
        del ckpt
        net.to(env.device)
        if task.channels_last:
            net.to(memory_format=torch.channels_last)
        loader = eval_loader(dataset, cfg.train.batch_size, env, cfg.data.num_workers)
        metrics = evaluate(task, net, loader, env, resolve_amp(cfg.train.amp, env.device),
                           progress_mode=cfg.train.progress)
    finally:
        D.teardown_distributed()
    return {"checkpoint": str(checkpoint), "model": name, "model_kwargs": model_kwargs,
            "ema": use_ema, "data": str(root), **metrics}
