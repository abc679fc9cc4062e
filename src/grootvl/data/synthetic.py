"""Small synthetic data sets in the real COCO and ADE20K formats.

Shapes (rectangles, circles, triangles) on noisy backgrounds. Every mask is exact: the
pixels of a shape are painted *from* its mask, and the mask stored in the annotation file
decodes (with pycocotools) to exactly that mask. Shapes never overlap, so no visible pixel
belongs to two objects. Users can generate a data set to smoke-test a set-up; the tests use
the same generators.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

SHAPE_NAMES = ("rectangle", "circle", "triangle")

__all__ = ["SHAPE_NAMES", "make_coco_shapes", "make_ade_shapes"]


def _as_hw(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random colour gradient plus pixel noise, as float32 in [0, 255]."""
    corners = rng.uniform(40, 215, size=(2, 2, 3))
    ys = np.linspace(0.0, 1.0, height)[:, None, None]
    xs = np.linspace(0.0, 1.0, width)[None, :, None]
    top = corners[0, 0] * (1 - xs) + corners[0, 1] * xs
    bottom = corners[1, 0] * (1 - xs) + corners[1, 1] * xs
    image = top * (1 - ys) + bottom * ys
    image = image + rng.normal(0.0, 12.0, size=(height, width, 3))
    return image.astype(np.float32)


def _polygon_mask(polygon: list[float], height: int, width: int) -> np.ndarray:
    import pycocotools.mask as mask_util

    rle = mask_util.frPyObjects([polygon], height, width)
    return mask_util.decode(rle)[..., 0].astype(bool)


def _random_shape(rng, kind: str, box: tuple[int, int, int, int], height: int, width: int):
    """Returns (mask, polygon or None) of a shape of ``kind`` inside ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    if kind == "rectangle":
        polygon = [x0, y0, x1, y0, x1, y1, x0, y1]
        return _polygon_mask([float(v) for v in polygon], height, width), polygon
    if kind == "triangle":
        apex = float(rng.uniform(x0, x1))
        polygon = [apex, float(y0), float(x1), float(y1), float(x0), float(y1)]
        return _polygon_mask(polygon, height, width), polygon
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    radius = min(x1 - x0, y1 - y0) / 2.0
    yy, xx = np.mgrid[0:height, 0:width]
    mask = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= radius**2
    return mask, None


def _place_boxes(rng, n: int, height: int, width: int, min_side: int, max_side: int):
    """Up to ``n`` non-overlapping boxes (with a 2-pixel gap) by rejection sampling."""
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(50 * n):
        if len(boxes) == n:
            break
        w = int(rng.integers(min_side, max_side + 1))
        h = int(rng.integers(min_side, max_side + 1))
        x0 = int(rng.integers(1, max(2, width - w - 1)))
        y0 = int(rng.integers(1, max(2, height - h - 1)))
        box = (x0, y0, min(x0 + w, width - 1), min(y0 + h, height - 1))
        if all(box[2] + 2 <= b[0] or b[2] + 2 <= box[0] or box[3] + 2 <= b[1] or b[3] + 2 <= box[1]
               for b in boxes):
            boxes.append(box)
    return boxes


def _draw_scene(rng, height: int, width: int, max_shapes: int):
    """Returns (uint8 image, list of (kind index, bool mask, polygon or None))."""
    image = _background(rng, height, width)
    side = min(height, width)
    n = int(rng.integers(1, max_shapes + 1))
    shapes = []
    for box in _place_boxes(rng, n, height, width, max(6, side // 6), max(8, side // 2)):
        kind_index = int(rng.integers(0, len(SHAPE_NAMES)))
        mask, polygon = _random_shape(rng, SHAPE_NAMES[kind_index], box, height, width)
        if mask.sum() < 4:
            continue
        colour = rng.uniform(0, 255, size=3)
        # Shift the colour away from the local background so every shape is visible.
        local = image[mask].mean(axis=0)
        colour = np.where(np.abs(colour - local) < 60, (local + 128) % 256, colour)
        image[mask] = colour + rng.normal(0.0, 6.0, size=(int(mask.sum()), 3))
        shapes.append((kind_index, mask, polygon))
    return np.clip(image, 0, 255).astype(np.uint8), shapes


def make_coco_shapes(root, n_images: int = 8, size=128, split: str = "train2017",
                     seed: int = 0, max_shapes: int = 3) -> dict[str, str]:
    """Writes a COCO-format instance segmentation data set of shapes.

    Layout (as COCO's): ``root/<split>/<id>.png`` and
    ``root/annotations/instances_<split>.json`` with categories rectangle (1), circle (2),
    triangle (3). Rectangles and triangles are stored as polygons, circles as compressed
    RLE, so both mask encodings are exercised.

    Args:
        root: output folder (created).
        n_images: number of images.
        size: image size, an int or (height, width).
        split: split name, used for the image folder and the annotation file name.
        seed: random seed; the same seed gives the same files.
        max_shapes: at most this many shapes per image (at least one).

    Returns:
        ``{"images": <image folder>, "annotations": <json path>}``.
    """
    import pycocotools.mask as mask_util

    height, width = _as_hw(size)
    rng = np.random.default_rng(seed)
    root = Path(root)
    image_dir = root / split
    ann_dir = root / "annotations"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, n_images + 1):
        pixels, shapes = _draw_scene(rng, height, width, max_shapes)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(image_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for kind_index, mask, polygon in shapes:
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            if polygon is not None:
                segmentation = [[float(v) for v in polygon]]
            else:
                segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": kind_index + 1,
                "segmentation": segmentation,
                "area": float(mask_util.area(rle)),
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "iscrowd": 0,
            })
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"}
                  for i, name in enumerate(SHAPE_NAMES)]
    ann_file = ann_dir / f"instances_{split}.json"
    with open(ann_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return {"images": os.fspath(image_dir), "annotations": os.fspath(ann_file)}


def make_ade_shapes(root, n_train: int = 8, n_val: int = 4, size=128, seed: int = 0,
                    max_shapes: int = 3) -> dict[str, object]:
    """Writes an ADE20K-format (ADEChallengeData2016 layout) semantic segmentation data set.

    Layout: ``root/images/{training,validation}/*.jpg`` and
    ``root/annotations/{training,validation}/*.png`` (single-channel label maps). Labels:
    0 = other/ignore (a small clutter blob in some images), 1 = background,
    2 = rectangle, 3 = circle, 4 = triangle; so ``num_classes`` is 4.

    Returns:
        ``{"root": <root>, "num_classes": 4, "class_names": [...]}``.
    """
    height, width = _as_hw(size)
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, count in (("training", n_train), ("validation", n_val)):
        image_dir = root / "images" / split
        label_dir = root / "annotations" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            pixels, shapes = _draw_scene(rng, height, width, max_shapes)
            label = np.ones((height, width), dtype=np.uint8)
            for kind_index, mask, _ in shapes:
                label[mask] = kind_index + 2
            if rng.random() < 0.5:  # unlabelled clutter, as ADE's class 0 "other"
                cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
                r = max(2, min(height, width) // 16)
                clutter = np.zeros_like(label, dtype=bool)
                clutter[max(0, cy - r):cy + r, max(0, cx - r):cx + r] = True
                label[clutter] = 0
                pixels[clutter] = rng.integers(0, 255, size=(int(clutter.sum()), 3))
            stem = f"ADE_{split[:5]}_{index + 1:08d}"
            Image.fromarray(pixels).save(image_dir / f"{stem}.jpg", quality=95)
            Image.fromarray(label, mode="L").save(label_dir / f"{stem}.png")
    return {"root": os.fspath(root), "num_classes": 4,
            "class_names": ["background", *SHAPE_NAMES]}
