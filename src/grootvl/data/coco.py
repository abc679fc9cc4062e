"""COCO-format instance segmentation data (an images folder plus an instances JSON).

The annotation file is checked when the data set is built, so a bad file fails at once with
a message that names the file, the annotation and the fix, instead of deep inside training.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..files import decode_image, first_line
from .folder import read_skipping

__all__ = ["CocoInstances", "load_coco_json", "collate_detection"]


def load_coco_json(ann_file, require_masks: bool = True, argument: str = "--ann") -> dict:
    """Reads and validates a COCO instances JSON; raises DataError on any problem.

    Checks: the file exists and parses; ``images``/``annotations``/``categories`` are lists;
    every annotation's ``image_id`` and ``category_id`` exist in the file; boxes have four
    numbers; with ``require_masks``, every annotation has a polygon or RLE mask, and RLE
    masks have the size of their image.
    """
    path = Path(ann_file)
    if not path.is_file():
        raise DataError(
            f"annotation file {path} not found ({argument}): pass the path of a COCO "
            f"instances JSON such as annotations/instances_val2017.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, OSError) as e:  # JSONDecodeError, UnicodeDecodeError, unreadable
        raise DataError(f"annotation file {path} ({argument}) is not readable JSON "
                        f"({first_line(e)}); pass a COCO instances JSON") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DataError(f"annotation file {path} has no '{key}' list; a COCO instances "
                                  "JSON needs 'images', 'annotations' and 'categories'")
    if not data["categories"]:
        raise DataError(f"annotation file {path} lists no categories; add the object "
                              "classes to 'categories' as {\"id\": ..., \"name\": ...}")
    for key in ("images", "annotations", "categories"):
        bad = next((item for item in data[key] if not isinstance(item, dict)
                    or (key != "annotations" and "id" not in item)), None)
        if bad is not None:
            raise DataError(f"annotation file {path}: an entry of '{key}' is {bad!r:.80}; each "
                            "must be an object" + (" with an 'id'" if key != "annotations" else ""))
    images = {img["id"]: img for img in data["images"]}
    try:
        category_ids = sorted(c["id"] for c in data["categories"])
    except TypeError:
        ids = [c["id"] for c in data["categories"]][:10]
        raise DataError(f"annotation file {path}: the category ids {ids} are not all "
                        "numbers") from None
    problems: list[str] = []
    for ann in data["annotations"]:
        problem = _annotation_problem(ann, images, set(category_ids), require_masks)
        if problem:
            problems.append(problem)
    if problems:
        more = f" ({len(problems) - 1} more annotations have problems)" if len(problems) > 1 else ""
        raise DataError(f"annotation file {path}: {problems[0]}{more}. "
                              f"Its categories are {category_ids}.")
    return data


def _annotation_problem(ann, images, category_ids, require_masks) -> str | None:
    where = f"annotation {ann.get('id')} (image_id {ann.get('image_id')})"
    image = images.get(ann.get("image_id"))
    if image is None:
        return f"{where} refers to an image id absent from 'images'; add the image or drop it"
    if ann.get("category_id") not in category_ids:
        return (f"{where} has category_id {ann.get('category_id')}, which is not among the "
                "file's 'categories'; add that category or fix the annotation's category_id")
    bbox = ann.get("bbox")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
        return f"{where} has bbox {bbox!r}; COCO boxes are [x, y, width, height]"
    segm = ann.get("segmentation")
    # crowd regions need no mask for training, but COCOeval decodes any they carry
    if segm is None and (not require_masks or ann.get("iscrowd", 0)):
        return None
    if isinstance(segm, list) and segm and all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segm):
        return None
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        expected = [image.get("height"), image.get("width")]
        if list(segm["size"]) != expected:
            return (f"{where}: its RLE mask is {segm['size'][0]}x{segm['size'][1]} (height x "
                    f"width) but image '{image.get('file_name')}' is {expected[0]}x{expected[1]}; "
                    "encode masks at the size of their image")
        return None
    return (f"{where} has no usable mask ('segmentation' must be polygons [[x1, y1, x2, y2, "
            "...]] or an RLE {'size': [h, w], 'counts': ...}); Mask R-CNN needs a mask per object")


def collate_detection(batch):
    """``(images, targets, skipped)`` as lists: detection images differ in size; ``skipped``
    holds each item's count of unreadable files passed over."""
    images, targets, skipped = zip(*batch)
    return list(images), list(targets), list(skipped)


class CocoInstances(Dataset):
    """Images with boxes, labels and masks from a COCO instances JSON.

    Items are ``(image, target, skipped)``: ``image`` a float tensor (3, H, W) in [0, 1];
    ``target`` a dict with ``boxes`` (N, 4) xyxy in pixels, ``labels`` (N,) contiguous in
    1..K (``category_ids[label - 1]`` is the COCO id), ``masks`` (N, H, W) uint8 and
    ``image_id``; ``skipped`` counts unreadable image files passed over to reach this item
    (each is logged; the next image takes its place). Crowd annotations are left out of
    targets (COCOeval still uses them).

    Args:
        image_dir: folder with the image files named in the JSON.
        ann_file: the instances JSON.
        train: random horizontal flips, and images without any object are skipped.
        category_ids: the COCO category ids the model predicts, in label order (from the
            training set, stored in checkpoints); default: this file's, sorted.
    """

    def __init__(self, image_dir, ann_file, train: bool = False, category_ids=None,
                 image_argument: str = "--images", ann_argument: str = "--ann"):
        from pycocotools.coco import COCO

        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise DataError(f"image folder {self.image_dir} not found ({image_argument}); "
                                  "pass the folder holding the images named in the JSON")
        self.ann_file = os.fspath(ann_file)
        data = load_coco_json(ann_file, require_masks=True, argument=ann_argument)
        self.file_category_ids = sorted(c["id"] for c in data["categories"])
        self.category_names = {c["id"]: c.get("name", str(c["id"])) for c in data["categories"]}
        self.use_categories(category_ids)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()
        self.train = train
        ids = sorted(self.coco.imgs)
        if train:
            ids = [i for i in ids if any(self._usable(a) for a in self.coco.imgToAnns[i])]
        self.ids = ids
        if not self.ids:
            raise DataError(f"annotation file {ann_file} has no images"
                                  + (" with objects" if train else "")
                                  + "; pass a non-empty COCO instances JSON")

    def use_categories(self, category_ids=None) -> None:
        """Map COCO ids to labels as a model predicting ``category_ids`` (in label order) does.

        None: this file's categories, sorted by id. Raises if the file has categories the
        model does not predict.
        """
        self.category_ids = (list(category_ids) if category_ids is not None
                             else list(self.file_category_ids))
        missing = sorted(set(self.file_category_ids) - set(self.category_ids))
        if missing:
            raise DataError(
                f"annotation file {self.ann_file} has categories {missing} that the model was "
                f"not trained on (it predicts {self.category_ids}); evaluate on data with the "
                "training set's categories")
        self.label_of_category = {cid: i + 1 for i, cid in enumerate(self.category_ids)}

    @staticmethod
    def _usable(ann) -> bool:
        return not ann.get("iscrowd", 0) and ann["bbox"][2] >= 1 and ann["bbox"][3] >= 1

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        (image, target), skipped = read_skipping(self._item, index, len(self.ids), self.image_dir)
        return image, target, skipped

    def _item(self, index: int):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        img = decode_image(path, "RGB")
        height, width = info["height"], info["width"]
        if img.size != (width, height):
            raise DataError(
                f"image {path} is {img.height}x{img.width} (height x width) but {self.ann_file} "
                f"says {height}x{width}; fix the 'height'/'width' of image_id {image_id}")
        image = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div_(255)
        anns = [a for a in self.coco.imgToAnns[image_id] if self._usable(a)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        labels = torch.tensor([self.label_of_category[a["category_id"]] for a in anns],
                              dtype=torch.int64)
        if anns:
            masks = torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns]))
        else:
            masks = torch.zeros((0, height, width), dtype=torch.uint8)
        if self.train and torch.rand(()) < 0.5:
            image = image.flip(-1)
            masks = masks.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0],
                                 boxes[:, 3]], dim=1)
        target = {"boxes": boxes, "labels": labels, "masks": masks, "image_id": image_id}
        return image, target
