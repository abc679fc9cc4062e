"""ADE20K-format semantic segmentation with GrootV UperNet: training task and evaluation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from grootvl.data import ShardSampler
from grootvl.engine import distributed as D
from grootvl.engine.amp import autocast
from grootvl.engine.progress import Progress

from .ade import IGNORE_INDEX, ADESegmentation
from .builders import upernet_grootv
from .errors import DenseInputError
from .metrics import SegmentationConfusion
from .training import LrSchedule

__all__ = ["SegmentationTask", "evaluate_segmentation", "predict_whole",
           "upernet_from_checkpoint", "segmentation_loss"]

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


@torch.no_grad()
def evaluate_segmentation(model, dataset: ADESegmentation, env: D.DistEnv, amp, workers: int = 2,
                          progress_mode: str = "auto") -> dict:
    """mIoU, mean class accuracy and pixel accuracy (percent) on every rank.

    Single-scale "whole image" inference: the image resized to fit the data set's scale,
    logits resized back to the label map's original size.
    """
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=workers,
                                         sampler=ShardSampler(len(dataset), env.rank,
                                                              env.world_size))
    confusion = SegmentationConfusion(dataset.num_classes, IGNORE_INDEX, device=env.device)
    progress = Progress(len(loader), "seg eval", progress_mode, enabled=env.is_main)
    try:
        for image, label, _ in loader:
            image, label = image.to(env.device), label.to(env.device)
            with autocast(amp):
                logits = predict_whole(model, image, tuple(label.shape[-2:]))
            confusion.update(logits.argmax(1), label)
            progress.update(env.world_size)
    finally:
        progress.close()
    confusion.all_reduce()
    # names are the label values in the PNGs (class k is stored as k + 1)
    return confusion.metrics([str(k + 1) for k in range(dataset.num_classes)])


def upernet_from_checkpoint(checkpoint: dict):
    """A UperNet rebuilt from a ``seg-train`` checkpoint's ``model_args`` and weights."""
    if checkpoint.get("task") != "seg" or "model_args" not in checkpoint:
        raise DenseInputError("--checkpoint is not a seg-train checkpoint (no segmentation "
                              "'model_args'); pass last.pth or best.pth of a seg-train run")
    model = upernet_grootv(**checkpoint["model_args"])
    model.load_state_dict(checkpoint["model"])
    return model


class SegmentationTask:
    """UperNet on an ADE20K-format data set, for :func:`run_dense_training`."""

    kind = "seg"
    primary_metric = ("mIoU",)
    collate = None  # default collation: training crops all have the same size

    def __init__(self, args):
        self.args = args

    def datasets(self):
        args = self.args
        train = ADESegmentation(args.data, args.train_split, args.num_classes, train=True,
                                scale=args.scale, crop_size=args.crop_size)
        val = ADESegmentation(args.data, args.val_split, args.num_classes, train=False,
                              scale=args.scale)
        if args.batch_size < 2 and not _torchrun():
            # (under torchrun on GPUs batch norm is synchronised over all processes)
            raise DenseInputError("--batch-size must be at least 2 for seg-train: UperNet's "
                                  "pyramid pooling applies batch norm to 1x1 maps")
        return train, val

    def model_args(self) -> dict:
        args = self.args
        return {"variant": args.model, "num_classes": args.num_classes,
                "drop_path_rate": args.drop_path, "decoder_channels": args.decoder_channels,
                "backbone_kwargs": args.backbone_kwargs}

    def build_model(self):
        return upernet_grootv(**self.model_args(), pretrained_backbone=self.args.pretrained_backbone)

    def checkpoint_meta(self) -> dict:
        return {"num_classes": self.args.num_classes}

    def schedule(self, steps_per_epoch: int) -> LrSchedule:
        args = self.args
        return LrSchedule(base_lr=args.lr, total_iters=args.epochs * steps_per_epoch,
                          warmup_iters=args.warmup_iters, warmup_ratio=args.warmup_ratio,
                          kind="poly", power=args.poly_power, min_lr=args.min_lr)

    @staticmethod
    def losses(model, batch, device) -> dict:
        images, labels = batch
        logits = model(images.to(device, non_blocking=True))
        return {"loss_ce": segmentation_loss(logits, labels.to(device, non_blocking=True))}

    def evaluate(self, model, val_ds, env, amp, args) -> dict:
        return evaluate_segmentation(model, val_ds, env, amp, args.workers, args.progress)


def _torchrun() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1
