"""ADE20K-format semantic segmentation data (the ADEChallengeData2016 layout).

``root/images/{training,validation}/<name>.jpg`` with ``root/annotations/<split>/<name>.png``
single-channel label maps: 0 = other (ignored), classes 1..K. Labels are shifted to 0..K-1
with 0 mapped to ``IGNORE_INDEX`` ("reduce zero label"), as in the ADE20K benchmark.
Augmentation follows the usual UperNet recipe: keep-ratio rescale of a base scale by a random
ratio, random crop that avoids crops dominated by one class, horizontal flip, photometric
jitter, pad to the crop size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from ..errors import DataError
from ..files import decode_image, open_image
from .folder import read_skipping

__all__ = ["ADESegmentation", "IGNORE_INDEX"]

IGNORE_INDEX = 255
# the images stay in 0..255 until normalised
_MEAN_255 = np.array(IMAGENET_DEFAULT_MEAN, dtype=np.float32) * 255
_STD_255 = np.array(IMAGENET_DEFAULT_STD, dtype=np.float32) * 255
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def keep_ratio_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """Size that fits (height, width) into ``scale`` = (long side, short side) keeping ratio."""
    long_side, short_side = max(scale), min(scale)
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


class ADESegmentation(Dataset):
    """Images and label maps of one split of an ADE20K-format folder.

    Training items are ``(image (3, crop, crop) normalised, label (crop, crop) int64,
    skipped)``. Evaluation items are ``(image (3, h, w) resized to fit ``scale``, label at the
    original size, image name, skipped)``; predictions are resized back to the label size
    before scoring. ``skipped`` counts the unreadable image or label files passed over to
    reach the item (each is logged; the next pair takes its place).

    Args:
        root: data set root (holds ``images/`` and ``annotations/``).
        split: ``"training"`` or ``"validation"`` (the sub-folder names).
        num_classes: K; label values above K are an error.
        train: apply the training augmentation.
        scale: base (long side, short side) for resizing; ADE20K uses (2048, 512).
        crop_size: training crop side.
        ratio_range: random rescale ratios for training.
    """

    def __init__(self, root, split: str, num_classes: int, train: bool = False,
                 scale=(2048, 512), crop_size: int = 512, ratio_range=(0.5, 2.0),
                 cat_max_ratio: float = 0.75):
        self.root = Path(root)
        image_dir = self.root / "images" / split
        label_dir = self.root / "annotations" / split
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise DataError(
                    f"folder {folder} not found (--data {root}): an ADE20K-format root holds "
                    f"images/{split}/*.jpg and annotations/{split}/*.png, like "
                    "ADEChallengeData2016")
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"no images (.jpg/.png) in {image_dir}; check --data")
        self.items = [(p, label_dir / f"{p.stem}.png") for p in images]
        missing = [lab for _, lab in self.items if not lab.is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(images)} images in {image_dir} have no label map, e.g. "
                f"{missing[0]} is missing; every image needs annotations/{split}/<name>.png")
        if num_classes < 1:
            raise DataError(f"--num-classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.train = train
        self.scale = tuple(scale)
        self.crop_size = crop_size
        self.ratio_range = ratio_range
        self.cat_max_ratio = cat_max_ratio

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int):
        image_path, label_path = self.items[index]
        image = np.asarray(decode_image(image_path, "RGB"))
        lab = open_image(label_path)  # raw values: the classes
        if lab.mode not in ("L", "P", "I", "I;16"):
            raise DataError(
                f"label map {label_path} has mode {lab.mode}; ADE20K label maps are "
                "single-channel PNGs whose pixel values are class indices (0 = other)")
        label = np.asarray(lab).astype(np.int64)
        if label.shape != image.shape[:2]:
            raise DataError(
                f"label map {label_path} is {label.shape[0]}x{label.shape[1]} (height x width) "
                f"but image {image_path} is {image.shape[0]}x{image.shape[1]}; label maps must "
                "have the size of their image")
        top = int(label.max())
        if top > self.num_classes:
            raise DataError(
                f"label map {label_path} contains class {top} but --num-classes is "
                f"{self.num_classes}; pass the data set's number of classes (150 for ADE20K)")
        # reduce zero label: 0 (other) -> ignore, 1..K -> 0..K-1
        label = np.where(label == 0, IGNORE_INDEX, label - 1)
        return image, label

    def __getitem__(self, index: int):
        (image, label, name), skipped = read_skipping(
            lambda i: (*self._load(i), self.items[i][0].name), index, len(self.items),
            self.root)
        if self.train:
            image, label = self._augment(image, label)
            return _normalise(image), torch.from_numpy(label), skipped
        h, w = keep_ratio_size(*image.shape[:2], self.scale)
        resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        return _normalise(resized), torch.from_numpy(label), name, skipped

    def _augment(self, image: np.ndarray, label: np.ndarray):
        ratio = np.random.uniform(*self.ratio_range)
        scale = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        h, w = keep_ratio_size(*image.shape[:2], scale)
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        # int32 (PIL mode "I") so that more than 255 classes survive the resize
        label = np.asarray(Image.fromarray(label.astype(np.int32)).resize((w, h), Image.NEAREST))
        image, label = self._random_crop(image, label.astype(np.int64))
        if np.random.rand() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        image = _photometric_jitter(image.astype(np.float32))
        pad_h, pad_w = self.crop_size - image.shape[0], self.crop_size - image.shape[1]
        if pad_h > 0 or pad_w > 0:
            image = np.pad(image, ((0, max(pad_h, 0)), (0, max(pad_w, 0)), (0, 0)))
            label = np.pad(label, ((0, max(pad_h, 0)), (0, max(pad_w, 0))),
                           constant_values=IGNORE_INDEX)
        return image, np.ascontiguousarray(label)

    def _random_crop(self, image, label):
        crop = self.crop_size
        h, w = label.shape
        for _ in range(10):  # avoid crops where one class covers > cat_max_ratio
            y = np.random.randint(0, max(h - crop, 0) + 1)
            x = np.random.randint(0, max(w - crop, 0) + 1)
            window = label[y:y + crop, x:x + crop]
            _, counts = np.unique(window[window != IGNORE_INDEX], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return image[y:y + crop, x:x + crop], label[y:y + crop, x:x + crop]


def _photometric_jitter(image: np.ndarray) -> np.ndarray:
    """Random brightness, contrast and saturation, each applied with probability 1/2."""
    if np.random.rand() < 0.5:
        image = image + np.random.uniform(-32, 32)
    if np.random.rand() < 0.5:
        image = image * np.random.uniform(0.5, 1.5)
    if np.random.rand() < 0.5:
        grey = image.mean(axis=2, keepdims=True)
        image = grey + (image - grey) * np.random.uniform(0.5, 1.5)
    return np.clip(image, 0, 255)


def _normalise(image: np.ndarray) -> torch.Tensor:
    image = (np.asarray(image, dtype=np.float32) - _MEAN_255) / _STD_255
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
