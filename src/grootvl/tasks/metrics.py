"""The tasks' metrics: top-k accuracy, COCO box/mask AP (pycocotools COCOeval), and mIoU /
pixel accuracy from a confusion matrix.

All figures are reported in percent, as the paper does (83.4 top-1, 47.0 box AP, 48.5 mIoU).
"""
from __future__ import annotations

import contextlib
import io
import sys

import numpy as np
import torch

__all__ = ["COCO_STAT_NAMES", "SegmentationConfusion", "coco_evaluate", "detections_to_coco",
           "topk_correct"]

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                   "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@torch.no_grad()
def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k.

    k larger than the number of classes counts every sample as correct.
    """
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(target.view(-1, 1))
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


def detections_to_coco(output: dict, image_id: int, category_ids: list[int],
                       mask_threshold: float = 0.5) -> list[dict]:
    """torchvision detections of one image -> COCO result dicts (bbox xywh + RLE mask)."""
    import pycocotools.mask as mask_util

    boxes = output["boxes"].detach().float().cpu()
    if len(boxes) == 0:
        return []
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    results = []
    masks = None
    if "masks" in output:
        binary = (output["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
        masks = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    for i, (box, score, label) in enumerate(zip(xywh, scores, labels)):
        result = {"image_id": int(image_id), "category_id": int(category_ids[label - 1]),
                  "bbox": [round(v, 2) for v in box], "score": float(score)}
        if masks is not None:
            rle = masks[i]
            result["segmentation"] = {"size": list(rle["size"]),
                                      "counts": rle["counts"].decode("ascii")}
        results.append(result)
    return results


def coco_evaluate(coco_gt, results: list[dict], image_ids, iou_types=("bbox", "segm"),
                  verbose: bool = True) -> dict:
    """COCOeval for each IoU type over ``image_ids``.

    Returns ``{"bbox": {"AP": ..., "AP50": ...}, "segm": {...}, "num_detections": n}``
    in percent. With no detections at all every figure is 0.
    """
    from pycocotools.cocoeval import COCOeval

    metrics: dict = {"num_detections": len(results), "num_images": len(image_ids)}
    if not results:
        for iou_type in iou_types:
            metrics[iou_type] = {name: 0.0 for name in COCO_STAT_NAMES}
        return metrics
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):  # pycocotools prints as it goes
        coco_dt = coco_gt.loadRes(results)
    for iou_type in iou_types:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
            evaluator.params.imgIds = sorted(image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        if verbose:
            print(f"COCO {iou_type}:\n" + "\n".join(
                line for line in buffer.getvalue().splitlines() if line.startswith(" Average")),
                file=sys.stderr)  # stdout stays machine-readable (det-eval prints JSON)
        # COCOeval writes -1 where a figure is undefined (no ground truth of that size)
        metrics[iou_type] = {name: round(float(v) * 100, 3) if v >= 0 else -1.0
                             for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}
    return metrics


class SegmentationConfusion:
    """Accumulates a K x K confusion matrix (rows: truth, columns: prediction).

    Pixels labelled ``ignore_index`` are skipped. ``metrics()`` gives mIoU, mean class
    accuracy and overall pixel accuracy in percent; classes absent from both the truth and
    the predictions do not count towards the means (as in the ADE20K benchmark code).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device="cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """``prediction`` and ``target``: integer class maps of the same shape."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target "
                             f"{tuple(target.shape)} must have the same shape")
        valid = target != self.ignore_index
        k = self.num_classes
        index = target[valid].long() * k + prediction[valid].long().to(target.device)
        counts = torch.bincount(index, minlength=k * k).reshape(k, k)
        self.matrix += counts.to(self.matrix)

    def all_reduce(self) -> None:
        """Sums the matrices of all ranks (no-op outside torch.distributed)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def metrics(self, class_names=None) -> dict:
        m = self.matrix.cpu().double()
        intersection = m.diag()
        truth = m.sum(1)
        union = truth + m.sum(0) - intersection
        iou = intersection / union  # nan where the class is absent everywhere
        accuracy = intersection / truth
        names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]

        def pct(v):
            return round(float(v) * 100, 3) if torch.isfinite(v) else None

        return {
            "mIoU": pct(torch.nanmean(iou)) if torch.isfinite(iou).any() else 0.0,
            "mAcc": pct(torch.nanmean(accuracy)) if torch.isfinite(accuracy).any() else 0.0,
            "aAcc": pct(intersection.sum() / truth.sum()) if truth.sum() > 0 else 0.0,
            "per_class_IoU": {n: pct(v) for n, v in zip(names, iou)},
            "num_pixels": int(truth.sum()),
        }
