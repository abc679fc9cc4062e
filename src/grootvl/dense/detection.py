"""COCO instance segmentation with GrootV Mask R-CNN: the training task and the evaluation."""
from __future__ import annotations

from pathlib import Path

import torch

from grootvl.data import ShardSampler
from grootvl.engine import distributed as D
from grootvl.engine.amp import autocast
from grootvl.engine.progress import Progress

from .builders import maskrcnn_grootv
from .coco import CocoInstances, collate_detection
from .errors import DenseInputError
from .metrics import coco_evaluate, detections_to_coco
from .training import LrSchedule

__all__ = ["DetectionTask", "coco_paths", "evaluate_detection", "maskrcnn_from_checkpoint"]


def coco_paths(args, which: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of split ``which`` ("train" | "val") from the args.

    Explicit ``--{which}-images`` / ``--{which}-ann`` win; otherwise COCO's layout under
    ``--data``: ``DATA/<split>`` and ``DATA/annotations/instances_<split>.json``.
    """
    images, ann = getattr(args, f"{which}_images"), getattr(args, f"{which}_ann")
    split = getattr(args, f"{which}_split")
    if (images is None or ann is None) and not args.data:
        raise DenseInputError(f"no {which} data given: pass --data ROOT (COCO layout: "
                              f"ROOT/{split}/ and ROOT/annotations/instances_{split}.json) or "
                              f"--{which}-images DIR and --{which}-ann FILE")
    root = Path(args.data) if args.data else None
    images = Path(images) if images else root / split
    ann = Path(ann) if ann else root / "annotations" / f"instances_{split}.json"
    return images, ann


def _to_device(images, targets, device):
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in t.items()} for t in targets]
    return images, targets


@torch.no_grad()
def evaluate_detection(model, dataset: CocoInstances, env: D.DistEnv, amp, batch_size: int = 1,
                       workers: int = 2, progress_mode: str = "auto",
                       category_ids=None) -> dict:
    """COCO box and mask AP (percent) of ``model`` on ``dataset``, on every rank.

    Each rank runs its share of the images; rank 0 gathers the detections and runs COCOeval.
    """
    model.eval()
    category_ids = list(category_ids or dataset.category_ids)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, collate_fn=collate_detection, num_workers=workers,
        sampler=ShardSampler(len(dataset), env.rank, env.world_size))
    progress = Progress(len(loader), "det eval", progress_mode, enabled=env.is_main)
    results = []
    try:
        for images, targets in loader:
            images = [image.to(env.device, non_blocking=True) for image in images]
            with autocast(amp):
                outputs = model(images)
            for output, target in zip(outputs, targets):
                results.extend(detections_to_coco(output, target["image_id"], category_ids))
            progress.update(len(images) * env.world_size)
    finally:
        progress.close()
    gathered = [r for part in D.all_gather_object(results) for r in part]
    metrics = None
    if env.is_main:
        metrics = coco_evaluate(dataset.coco, gathered, dataset.ids)
    return D.broadcast_object(metrics)


def maskrcnn_from_checkpoint(checkpoint: dict, **overrides):
    """A Mask R-CNN rebuilt from a ``det-train`` checkpoint's ``model_args`` and weights."""
    if checkpoint.get("task") != "det" or "model_args" not in checkpoint:
        raise DenseInputError("--checkpoint is not a det-train checkpoint (no detection "
                              "'model_args'); pass last.pth or best.pth of a det-train run")
    model = maskrcnn_grootv(**{**checkpoint["model_args"], **overrides})
    model.load_state_dict(checkpoint["model"])
    return model


class DetectionTask:
    """Mask R-CNN on a COCO-format data set, for :func:`run_dense_training`."""

    kind = "det"
    primary_metric = ("bbox", "AP")

    def __init__(self, args):
        self.args = args
        self.category_ids: list[int] | None = None
        self.category_names: dict[int, str] = {}

    def datasets(self):
        args = self.args
        train_images, train_ann = coco_paths(args, "train")
        val_images, val_ann = coco_paths(args, "val")
        train = CocoInstances(train_images, train_ann, train=True,
                              image_argument="--train-images", ann_argument="--train-ann")
        val = CocoInstances(val_images, val_ann, train=False, category_ids=train.category_ids,
                            image_argument="--val-images", ann_argument="--val-ann")
        self.category_ids = train.category_ids
        self.category_names = train.category_names
        return train, val

    collate = staticmethod(collate_detection)

    def model_args(self) -> dict:
        args = self.args
        return {"variant": args.model, "num_classes": len(self.category_ids),
                "drop_path_rate": args.drop_path, "fpn_channels": args.fpn_channels,
                "box_head_dim": args.box_head_dim, "mask_head_channels": args.mask_head_channels,
                "backbone_kwargs": args.backbone_kwargs, "min_size": args.min_size,
                "max_size": args.max_size, **(args.detector_kwargs or {})}

    def build_model(self):
        return maskrcnn_grootv(**self.model_args(), pretrained_backbone=self.args.pretrained_backbone)

    def checkpoint_meta(self) -> dict:
        return {"categories": [{"id": c, "name": self.category_names.get(c, str(c))}
                               for c in self.category_ids]}

    def schedule(self, steps_per_epoch: int) -> LrSchedule:
        args = self.args
        return LrSchedule(base_lr=args.lr, total_iters=args.epochs * steps_per_epoch,
                          warmup_iters=args.warmup_iters, warmup_ratio=args.warmup_ratio,
                          kind="step", milestones=tuple(e * steps_per_epoch for e in args.lr_steps))

    @staticmethod
    def losses(model, batch, device) -> dict:
        images, targets = _to_device(*batch, device)
        return model(images, targets)

    def evaluate(self, model, val_ds, env, amp, args) -> dict:
        return evaluate_detection(model, val_ds, env, amp, args.eval_batch_size, args.workers,
                                  args.progress, self.category_ids)
