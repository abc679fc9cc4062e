"""Image-folder classification datasets (``root/<class>/<image>``) with input validation.

The layout is torchvision's ``ImageFolder`` one, so ImageNet's ``train/`` and ``val/``
folders work as they are. Unlike ``ImageFolder`` this dataset:

* raises :class:`~grootvl.errors.DataError` with a fix-it message for a missing or empty
  folder and for train/val class mismatches;
* skips an unreadable image (warning on stderr) instead of killing the run: the sample is
  replaced by the next readable one and ``__getitem__`` reports how many files it skipped,
  so the training loop can count them across workers and ranks. Images are decoded by
  :func:`grootvl.files.decode_image` (decompression bombs refused, 16-bit images scaled);
* follows symbolic links to folders inside a class folder, but never one that leads back
  to the class folder or above it (a loop), and lists a file reached twice once.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from ..errors import DataError
from ..files import UnreadableImage, decode_image

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
    """``(path, class index)`` of every image file, sorted for reproducibility.

    Linked folders are followed unless they lead to a folder already on the way down from
    ``root`` (a symlink loop would list the data set again and again, under the wrong
    class); a file reached by two paths counts once, under the first.
    """
    samples = []
    seen_files: set[str] = set()
    top = os.path.realpath(root)
    for index, name in enumerate(classes):
        folder = root / name
        for dirpath, dirnames, files in _walk(folder, top):
            for fname in sorted(files):
                if not fname.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                path = os.path.join(dirpath, fname)
                real = os.path.realpath(path)
                if real not in seen_files:
                    seen_files.add(real)
                    samples.append((path, index))
    return samples


def _walk(folder: Path, top: str):
    """``os.walk(folder, followlinks=True)`` in sorted order, pruning every linked folder
    that resolves to ``top``, to a folder above it, or to a folder on the current path."""
    visited: set[str] = set()
    for dirpath, dirnames, files in os.walk(folder, followlinks=True):
        here = os.path.realpath(dirpath)
        visited.add(here)
        keep = []
        for name in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, name))
            loops = (real in visited or real == top or top.startswith(real + os.sep)
                     or here == real or here.startswith(real + os.sep))
            if not loops:
                keep.append(name)
        dirnames[:] = keep
        yield dirpath, dirnames, files


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
        return decode_image(path, self.mode)

    def __getitem__(self, index: int):
        def read(i):
            path, target = self.samples[i]
            img = self.load(path)
            return (self.transform(img) if self.transform is not None else img), target

        (img, target), skipped = read_skipping(read, index, len(self.samples), self.root)
        return img, target, skipped


def read_skipping(read, index: int, length: int, where) -> tuple:
    """``(read(i), files skipped)`` for the first ``i`` from ``index`` on (cyclically) whose
    files ``read`` can decode; each unreadable one is logged and skipped. A DataError if no
    item of the ``length`` in ``where`` is readable."""
    for attempt in range(length):
        try:
            return read((index + attempt) % length), attempt
        except UnreadableImage as exc:
            _log.warning("warning: skipping unreadable image %s (%s)", exc.path, exc.cause)
    raise DataError(f"no readable image in {where}: every file failed to decode")


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
