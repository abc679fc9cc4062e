"""Classification data sets generated in memory: scikit-learn's digits and Pathfinder.

:func:`generated_datasets` returns a training and a validation set of grey uint8 images held
as tensors, served as ``(image, class index, files skipped = 0)`` samples like
:class:`~grootvl.data.ImageFolderDataset`'s, so the classification task trains on them
through the same loaders. The pixels are those the matching folder writers store
(:func:`~grootvl.data.prepare_digits_folder`, ``write_pathfinder_folder``), so a checkpoint
trained in memory evaluates on the written folder to the same accuracy.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import torch

from ..errors import UserError
from .digits import digits_arrays

__all__ = ["GENERATED", "ArrayImageDataset", "check_generated", "generated_datasets"]

GENERATED = ("digits", "pathfinder")
DIGITS_CLASSES = tuple(str(d) for d in range(10))
MAX_DIGITS_SIZE = 512


class ArrayImageDataset(torch.utils.data.Dataset):
    """Grey uint8 images ``(N, H, W)`` and int64 labels as normalised float samples.

    A sample is ``(image (in_chans, H, W), label, 0)``; the grey value is repeated over
    ``in_chans`` channels, then each channel is normalised with ``mean``/``std`` (one value
    for all channels, or one per channel), as ``ToTensor`` + ``Normalize`` would.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                 std: Sequence[float], in_chans: int = 1):
        if images.dtype != torch.uint8 or images.dim() != 3:
            raise ValueError(f"images must be a uint8 (N, H, W) tensor, got {images.dtype} "
                             f"{tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({images.shape[0]},), got "
                             f"{tuple(labels.shape)}")
        for name, values in (("data.mean", mean), ("data.std", std)):
            if len(values) not in (1, in_chans):
                raise UserError(f"{name} = {list(values)}: give 1 or data.in_chans = {in_chans} "
                                "values for generated grey images")
        self.images = images
        self.labels = labels.long()
        self.in_chans = in_chans
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        image = self.images[index].float().div_(255.0).expand(self.in_chans, -1, -1)
        return (image - self.mean) / self.std, int(self.labels[index]), 0


def _digits_counts() -> tuple[int, int]:
    """(training, validation) images of :func:`digits_arrays`' default split."""
    from sklearn.datasets import load_digits

    total = len(load_digits().target)
    val = math.ceil(0.2 * total)  # train_test_split's rounding of test_size=0.2
    return total - val, val


def _check_digits(size, train_images, val_images, seed, options) -> None:
    if size > MAX_DIGITS_SIZE:  # 1797 images of size x size bytes, twice
        raise UserError(f"data.img_size = {size}: the digits are 8x8 images, upsampled to at "
                        f"most {MAX_DIGITS_SIZE} pixels; use a smaller size (e.g. 32)")
    if options:
        raise UserError(f"generated.options = {options}: the digits take no options; set "
                        "generated.options={}")
    for key, wanted, available in zip(("generated.train_images", "generated.val_images"),
                                      (train_images, val_images), _digits_counts()):
        if wanted is not None and wanted > available:
            raise UserError(f"{key} = {wanted}: the digits have {available} such images; use "
                            f"at most {available} or null (all)")


def _digits(size, train_images, val_images, seed, options) -> tuple:
    train_x, train_y, val_x, val_y = digits_arrays(size, seed=seed)
    train_n, val_n = train_images or len(train_x), val_images or len(val_x)
    return train_x[:train_n], train_y[:train_n], val_x[:val_n], val_y[:val_n], DIGITS_CLASSES


def _check_pathfinder(size, train_images, val_images, seed, options) -> None:
    for key, value in (("generated.train_images", train_images),
                       ("generated.val_images", val_images)):
        if value is None:
            raise UserError(f"{key} is null: pathfinder images are generated, say how many "
                            f"(e.g. --set {key}=2000)")
    needed, memory = (train_images + val_images) * size * size, _physical_memory()
    if memory and needed > memory // 2:
        raise UserError(f"generated.train_images + generated.val_images = "
                        f"{train_images + val_images} images of {size}x{size} pixels need "
                        f"{needed / 2**30:.1f} GiB in memory, more than half of this machine's "
                        f"{memory / 2**30:.1f} GiB; generate fewer or smaller images")
    _pathfinder(size, 0, 0, seed, options)  # no image: checks every argument


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: no check
        return None


def _pathfinder(size, train_images, val_images, seed, options) -> tuple:
    from .pathfinder import CLASS_NAMES, pathfinder

    try:  # validation images continue the training images' stream: never a repeat
        train_x, train_y = pathfinder(train_images, size, seed, **options)
        val_x, val_y = pathfinder(val_images, size, seed, start=train_images, **options)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"generated.options = {options} with data.img_size = {size}: "
                        f"{exc}") from exc
    return train_x, train_y, val_x, val_y, tuple(CLASS_NAMES)


_GENERATORS = {"digits": (_check_digits, _digits), "pathfinder": (_check_pathfinder, _pathfinder)}


def check_generated(name: str, size: int, train_images: int | None = None,
                    val_images: int | None = None, seed: int = 0,
                    options: dict[str, Any] | None = None) -> None:
    """Raise the :class:`UserError` :func:`generated_datasets` would raise for these
    settings, without generating the images."""
    if name not in _GENERATORS:
        raise UserError(f"generated.name = {name!r}: not a generated data set; use one of "
                        f"{', '.join(GENERATED)}")
    _GENERATORS[name][0](size, train_images, val_images, seed, dict(options or {}))


def generated_datasets(name: str, size: int, train_images: int | None = None,
                       val_images: int | None = None, seed: int = 0,
                       options: dict[str, Any] | None = None, mean: Sequence[float] = (0.5,),
                       std: Sequence[float] = (0.5,), in_chans: int = 1
                       ) -> tuple[ArrayImageDataset, ArrayImageDataset, list[str]]:
    """``(train, val, classes)`` of the generated data set ``name`` at ``size`` pixels.

    ``digits``: scikit-learn's digits upsampled to ``size`` (1437 / 360 images; ``None``
    counts take all, smaller counts the first ones). ``pathfinder``: ``train_images``
    images of ``grootvl.data.pathfinder(size=size, seed=seed, **options)`` and the next
    ``val_images`` of the same stream. Bad values raise :class:`UserError` naming the config
    key (``generated.*``).
    """
    check_generated(name, size, train_images, val_images, seed, options)
    train_x, train_y, val_x, val_y, classes = _GENERATORS[name][1](
        size, train_images, val_images, seed, dict(options or {}))
    return (ArrayImageDataset(train_x, train_y, mean, std, in_chans),
            ArrayImageDataset(val_x, val_y, mean, std, in_chans), list(classes))
