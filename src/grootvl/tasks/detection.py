"""COCO instance segmentation with GrootV Mask R-CNN: the task and ``grootvl det-eval``."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from ..data import CocoInstances, collate_detection
from ..engine import distributed as D
from ..engine.amp import resolve_amp
from ..engine.evaluation import evaluate
from ..engine.sampling import eval_loader
from ..engine.task import Batch, drop_replaced
from ..errors import UserError
from ..models.dense import maskrcnn_grootv
from .common import check_same_model, load_snapshot_weights, read_task_snapshot
from .config import RunConfig, config_from_snapshot
from .metrics import coco_evaluate, detections_to_coco

__all__ = ["DetectionTask", "coco_paths", "evaluate_checkpoint"]


def coco_paths(which: str, root, split: str, images=None, ann=None) -> tuple[Path, Path]:
    """(image folder, annotation file) of split ``which`` ("train" | "val").

    Explicit ``images`` / ``ann`` win; otherwise COCO's layout under ``root``:
    ``ROOT/<split>`` and ``ROOT/annotations/instances_<split>.json``.
    """
    if (images is None or ann is None) and not root:
        raise UserError(f"no {which} data given: pass --data ROOT (COCO layout: "
                        f"ROOT/{split}/ and ROOT/annotations/instances_{split}.json) or "
                        f"--{which}-images DIR and --{which}-ann FILE")
    images = Path(images) if images else Path(root) / split
    ann = Path(ann) if ann else Path(root) / "annotations" / f"instances_{split}.json"
    return images, ann


class CocoEvaluator:
    """COCO box and mask AP (percent): each process detects on its share of the images;
    process 0 gathers the detections, runs COCOeval and shares the result."""

    def __init__(self, dataset: CocoInstances, category_ids: list[int]):
        self.dataset = dataset
        self.category_ids = category_ids
        self.results: list[dict] = []
        self.skipped = 0

    def update(self, model: nn.Module, batch: Batch) -> None:
        self.skipped += batch.skipped
        if batch.size == 0:  # every image of the batch was unreadable
            return
        for output, target in zip(model(batch.inputs), batch.targets):
            self.results.extend(detections_to_coco(output, target["image_id"], self.category_ids))

    def compute(self) -> dict:
        gathered = [r for part in D.all_gather_object(self.results) for r in part]
        skipped = sum(D.all_gather_object(self.skipped))
        metrics = None
        if D.is_main_process():
            metrics = coco_evaluate(self.dataset.coco, gathered, self.dataset.ids)
            metrics["skipped_images"] = skipped  # unreadable: no detections, counted as misses
        return D.broadcast_object(metrics)


class DetectionTask:
    """Mask R-CNN on COCO-format data for :func:`grootvl.engine.run_training`; reads the
    ``model``, ``data`` and ``detection`` sections."""

    name = "detection"
    primary_metric = "bbox.AP"
    collate_fn = staticmethod(collate_detection)

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.eval_batch_size = cfg.detection.eval_batch_size
        self.category_ids: list[int] = []
        self.category_names: dict[int, str] = {}
        self.val_set: CocoInstances | None = None

    def datasets(self):
        data, det = self.cfg.data, self.cfg.detection
        train_images, train_ann = coco_paths("train", data.path, data.train_split,
                                             det.train_images, det.train_ann)
        val_images, val_ann = coco_paths("val", data.path, data.val_split, det.val_images,
                                         det.val_ann)
        train = CocoInstances(train_images, train_ann, train=True,
                              image_argument="--train-images", ann_argument="--train-ann")
        val = CocoInstances(val_images, val_ann, train=False, category_ids=train.category_ids,
                            image_argument="--val-images", ann_argument="--val-ann")
        self.category_ids = train.category_ids
        self.category_names = train.category_names
        self.val_set = val
        return train, val

    def model_options(self) -> dict:
        """What the detector is built from (besides its initial weights)."""
        model, det = self.cfg.model, self.cfg.detection
        return {"variant": model.name, "num_classes": len(self.category_ids),
                "drop_path_rate": model.drop_path_rate, "fpn_channels": det.fpn_channels,
                "box_head_dim": det.box_head_dim, "mask_head_channels": det.mask_head_channels,
                "backbone_kwargs": dict(model.kwargs), "min_size": det.min_size,
                "max_size": det.max_size, **det.detector_kwargs}

    def build_model(self, log: bool = True, pretrained: bool = True) -> nn.Module:
        init = self.cfg.model.init_checkpoint if pretrained else None
        return maskrcnn_grootv(**self.model_options(), pretrained_backbone=init)

    def prepare_batch(self, batch, device: torch.device, training: bool) -> Batch:
        images, targets, replaced = drop_replaced(*batch, training)
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                    for k, v in t.items()} for t in targets]
        return Batch(images, targets, size=len(images), skipped=replaced)

    def losses(self, model: nn.Module, batch: Batch) -> dict:
        return model(batch.inputs, batch.targets)

    def evaluator(self, device: torch.device) -> CocoEvaluator:
        return CocoEvaluator(self.val_set, self.category_ids)

    def snapshot_meta(self) -> dict:
        return {"categories": [{"id": c, "name": self.category_names.get(c, str(c))}
                               for c in self.category_ids]}

    def check_resume(self, snapshot: dict, path: Path) -> None:
        saved = DetectionTask(config_from_snapshot(snapshot, path))
        saved.category_ids = [c["id"] for c in snapshot.get("categories", [])]
        check_same_model(self.name, saved.model_options(), self.model_options(), path)

    def describe(self) -> dict:
        return {"model": self.cfg.model.name, "classes": len(self.category_ids)}


def evaluate_checkpoint(checkpoint: str | os.PathLike, data: str | os.PathLike | None = None,
                        split: str = "val2017", images: str | os.PathLike | None = None,
                        ann: str | os.PathLike | None = None, batch_size: int = 1,
                        workers: int = 2, device: str = "auto", amp: str = "auto",
                        progress: str = "auto") -> dict:
    """COCO box/mask AP (percent) of a ``det-train`` snapshot on one split of COCO-format data
    (``data`` in COCO's layout, or explicit ``images`` and ``ann``).

    The data is checked first (cheap), then the model is rebuilt from the snapshot's config.
    Works under torchrun; every process returns the metrics.
    """
    images, ann = coco_paths("val", data, split, images, ann)
    dataset = CocoInstances(images, ann, image_argument="--val-images", ann_argument="--val-ann")
    snapshot, cfg = read_task_snapshot(checkpoint, "detection", "det-train", flags={
        "detection.eval_batch_size": (batch_size, "--batch-size"),
        "data.num_workers": (workers, "--workers"), "train.device": (device, "--device"),
        "train.amp": (amp, "--amp"), "train.progress": (progress, "--progress")})
    task = DetectionTask(cfg)
    categories = snapshot.get("categories")
    if not isinstance(categories, list) or not all(
            isinstance(c, dict) and "id" in c for c in categories):
        raise UserError(f"--checkpoint {checkpoint}: its 'categories' entry is not a list of "
                        "{id, name} objects; the snapshot is damaged")
    task.category_ids = [c["id"] for c in categories]
    dataset.use_categories(task.category_ids)
    task.val_set = dataset
    model = load_snapshot_weights(task.build_model(pretrained=False), snapshot, checkpoint)
    env = D.init_distributed(cfg.train.device)
    try:
        model.to(env.device)
        loader = eval_loader(dataset, cfg.detection.eval_batch_size, env, cfg.data.num_workers,
                             collate_fn=collate_detection)
        metrics = evaluate(task, model, loader, env, resolve_amp(cfg.train.amp, env.device),
                           progress_mode=cfg.train.progress)
    finally:
        D.teardown_distributed()
    return {"checkpoint": str(checkpoint), "annotations": str(ann), **metrics}
