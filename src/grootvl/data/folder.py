"""Image-folder classification datasets (``root/<class>/<image>``) with input validation.

The layout is torchvision's ``ImageFolder`` one, so ImageNet's ``train/`` and ``val/``
folders work as they are. Unlike ``ImageFolder`` this dataset:

* raises :class:`~grootvl.errors.DataError` with a fix-it message for a missing or empty
  folder and for train/val class mismatches;
* skips an unreadable image (warning on stderr) instead of killing the run: the sample is
  replaced by the next readable one and ``__getitem__`` reports how many files it skipped,
  so the training loop can count them across workers and ranks.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from ..errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_log = logging.getLogger(__name__)


def find_classes(root: str | os.PathLike, what: str = "data folder") -> list[str]:
    """Sorted class folder names under ``root``; clear errors for a missing/empty folder."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{what} {root} does not exist (expected {root}/<class>/<image files>)")
    if not root.is_dir():
        raise DataError(f"{what} {root} is not a folder")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{what} {root} has no class folders "
                        f"(expected one sub-folder per class: {root}/<class>/<image files>)")
    return classes


def scan_images(root: Path, classes: list[str]) -> list[tuple[str, int]]:
    """``(path, class index)`` of every image file, sorted for reproducibility."""
    samples = []
    for index, name in enumerate(classes):
        folder = root / name
        for dirpath, _, files in sorted(os.walk(folder, followlinks=True)):
            for fname in sorted(files):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    samples.append((os.path.join(dirpath, fname), index))
    return samples


class ImageFolderDataset(torch.utils.data.Dataset):
    """``root/<class>/<image>`` samples as ``(image, class index, files skipped)``.

    ``classes`` fixes the class list (and order); give the training set's classes to the
    validation set so indices agree. Missing class folders under ``root`` are an error.
    ``mode`` is the PIL mode images are converted to ("RGB" or "L").
    """

    def __init__(self, root: str | os.PathLike, classes: list[str] | None = None,
                 transform: Callable | None = None, mode: str = "RGB", what: str = "data folder"):
        self.root = Path(root)
        found = find_classes(self.root, what)
        if classes is None:
            classes = found
        else:
            check_same_classes(classes, found, self.root, what)
        self.classes = list(classes)
        self.samples = scan_images(self.root, self.classes)
        if not self.samples:
            raise DataError(f"{what} {self.root} has class folders but no image files "
                            f"(extensions: {', '.join(IMAGE_EXTENSIONS)})")
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def remap_classes(self, classes: list[str]) -> None:
        """Use ``classes`` (e.g. a checkpoint's training classes) as the class index order.

        The folder may hold a subset of them; a folder class outside ``classes`` is an error.
        """
        unknown = sorted(set(self.classes) - set(classes))
        if unknown:
            raise DataError(f"folder {self.root} has class folder(s) the model was not trained "
                            f"on: {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}")
        index = {name: i for i, name in enumerate(classes)}
        self.samples = [(path, index[self.classes[t]]) for path, t in self.samples]
        self.classes = list(classes)

    def load(self, path: str) -> Image.Image:
        with Image.open(path) as img:
            return img.convert(self.mode)

    def __getitem__(self, index: int):
        skipped = 0
        for attempt in range(len(self.samples)):
            path, target = self.samples[(index + attempt) % len(self.samples)]
            try:
                img = self.load(path)
            except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for bad files
                skipped += 1
                _log.warning("warning: skipping unreadable image %s (%s)", path, exc)
                continue
            if self.transform is not None:
                img = self.transform(img)
            return img, target, skipped
        raise DataError(f"no readable image in {self.root}")


def check_same_classes(expected: list[str], found: list[str], root: Path, what: str) -> None:
    """Error naming the classes one split has and the other lacks."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if not missing and not extra:
        return
    parts = []
    if missing:
        parts.append(f"lacks {len(missing)} class folder(s) of the training set: "
                     f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    if extra:
        parts.append(f"has {len(extra)} class folder(s) the training set lacks: "
                     f"{', '.join(extra[:10])}{' ...' if len(extra) > 10 else ''}")
    raise DataError(f"{what} {root} {' and '.join(parts)}; train and val must have the same "
                    "class folders")
