"""ADE20K-format semantic segmentation with GrootV UperNet: the task and ``grootvl seg-eval``."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import IGNORE_INDEX, ADESegmentation
from ..engine import distributed as D
from ..engine.amp import resolve_amp
from ..engine.evaluation import evaluate
from ..engine.sampling import eval_loader
from ..engine.task import Batch, drop_replaced
from ..errors import UserError
from ..models.dense import upernet_grootv
from .common import check_same_model, load_snapshot_weights, read_task_snapshot
from .config import RunConfig, config_from_snapshot
from .metrics import SegmentationConfusion

__all__ = ["SegmentationTask", "evaluate_checkpoint", "predict_whole", "segmentation_loss"]

SIZE_DIVISOR = 32  # the backbone's output stride


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pixel-wise cross-entropy over labelled pixels (0, not NaN, when none are labelled)."""
    losses = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return losses / (labels != IGNORE_INDEX).sum().clamp(min=1)


def predict_whole(model, image: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Logits (B, K, *out_size) for a whole image, padded to a multiple of 32 then cropped."""
    h, w = image.shape[-2:]
    pad_h, pad_w = -h % SIZE_DIVISOR, -w % SIZE_DIVISOR
    logits = model(F.pad(image, (0, pad_w, 0, pad_h)))[..., :h, :w]
    return F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=False)


class ConfusionEvaluator:
    """mIoU, mean class accuracy and pixel accuracy (percent), summed over processes.

    Single-scale "whole image" inference: the image resized to fit the data set's scale,
    logits resized back to the label map's original size.
    """

    def __init__(self, num_classes: int, device: torch.device):
        self.confusion = SegmentationConfusion(num_classes, IGNORE_INDEX, device=device)
        self.skipped = 0

    def update(self, model: nn.Module, batch: Batch) -> None:
        self.skipped += batch.skipped
        if batch.size == 0:  # the image was unreadable
            return
        logits = predict_whole(model, batch.inputs, tuple(batch.targets.shape[-2:]))
        self.confusion.update(logits.argmax(1), batch.targets)

    def compute(self) -> dict:
        self.confusion.all_reduce()
        skipped = sum(D.all_gather_object(self.skipped))
        # names are the label values in the PNGs (class k is stored as k + 1)
        metrics = self.confusion.metrics([str(k + 1) for k in range(self.confusion.num_classes)])
        return {**metrics, "skipped_images": skipped}


class SegmentationTask:
    """UperNet on ADE20K-format data for :func:`grootvl.engine.run_training`; reads the
    ``model``, ``data`` and ``segmentation`` sections."""

    name = "segmentation"
    primary_metric = "mIoU"
    collate_fn = None  # training crops all have the same size; evaluation is one image a batch
    eval_batch_size = 1

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    def datasets(self):
        data, seg = self.cfg.data, self.cfg.segmentation
        if not data.path:
            raise UserError("no data folder given: pass --data ROOT (ADE20K layout: "
                            "ROOT/images/<split>/*.jpg and ROOT/annotations/<split>/*.png)")
        train = ADESegmentation(data.path, data.train_split, seg.num_classes, train=True,
                                scale=seg.scale, crop_size=seg.crop_size)
        val = ADESegmentation(data.path, data.val_split, seg.num_classes, train=False,
                              scale=seg.scale)
        synchronised = self.cfg.train.sync_bn and D.launched_world_size() > 1
        if self.cfg.train.batch_size < 2 and not synchronised:
            raise UserError("--batch-size must be at least 2 for seg-train: UperNet's pyramid "
                            "pooling applies batch norm to 1x1 maps")
        return train, val

    def model_options(self) -> dict:
        """What the segmenter is built from (besides its initial weights)."""
        model, seg = self.cfg.model, self.cfg.segmentation
        return {"variant": model.name, "num_classes": seg.num_classes,
                "drop_path_rate": model.drop_path_rate,
                "decoder_channels": seg.decoder_channels, "backbone_kwargs": dict(model.kwargs)}

    def build_model(self, log: bool = True, pretrained: bool = True) -> nn.Module:
        init = self.cfg.model.init_checkpoint if pretrained else None
        return upernet_grootv(**self.model_options(), pretrained_backbone=init)

    def prepare_batch(self, batch, device: torch.device, training: bool) -> Batch:
        # evaluation items also carry the image name; the last entry counts skipped files
        images, labels, replaced = drop_replaced(batch[0], batch[1], batch[-1], training)
        images = images.to(device, non_blocking=True)
        return Batch(images, labels.to(device, non_blocking=True), size=images.shape[0],
                     skipped=replaced)

    def losses(self, model: nn.Module, batch: Batch) -> dict:
        return {"loss_ce": segmentation_loss(model(batch.inputs), batch.targets)}

    def evaluator(self, device: torch.device) -> ConfusionEvaluator:
        return ConfusionEvaluator(self.cfg.segmentation.num_classes, device)

    def snapshot_meta(self) -> dict:
        return {"num_classes": self.cfg.segmentation.num_classes}

    def check_resume(self, snapshot: dict, path: Path) -> None:
        saved = SegmentationTask(config_from_snapshot(snapshot, path))
        check_same_model(self.name, saved.model_options(), self.model_options(), path)

    def describe(self) -> dict:
        return {"model": self.cfg.model.name, "classes": self.cfg.segmentation.num_classes}


def evaluate_checkpoint(checkpoint: str | os.PathLike, data: str | os.PathLike,
                        split: str = "validation", scale: tuple[int, int] | None = None,
                        workers: int = 2, device: str = "auto", amp: str = "auto",
                        progress: str = "auto") -> dict:
    """mIoU, mAcc, aAcc and per-class IoU (percent) of a ``seg-train`` snapshot on one split
    of an ADE20K-format folder; ``scale`` defaults to the snapshot's config. Works under
    torchrun; every process returns the metrics."""
    snapshot, cfg = read_task_snapshot(checkpoint, "segmentation", "seg-train", flags={
        "segmentation.scale": (scale, "--scale"), "data.num_workers": (workers, "--workers"),
        "train.device": (device, "--device"), "train.amp": (amp, "--amp"),
        "train.progress": (progress, "--progress")})
    task = SegmentationTask(cfg)
    dataset = ADESegmentation(data, split, cfg.segmentation.num_classes,
                              scale=cfg.segmentation.scale)
    model = load_snapshot_weights(task.build_model(pretrained=False), snapshot, checkpoint)
    env = D.init_distributed(cfg.train.device)
    try:
        model.to(env.device)
        metrics = evaluate(task, model, eval_loader(dataset, 1, env, cfg.data.num_workers), env,
                           resolve_amp(cfg.train.amp, env.device),
                           progress_mode=cfg.train.progress)
    finally:
        D.teardown_distributed()
    return {"checkpoint": str(checkpoint), "data": str(data), **metrics}
