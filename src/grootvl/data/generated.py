"""Classification data sets generated in memory: scikit-learn's digits and Pathfinder.

:func:`generated_datasets` returns a training and a validation set of grey uint8 images held
as tensors, served as ``(image, class index, files skipped = 0)`` samples like
:class:`~grootvl.data.ImageFolderDataset`'s, so the classification task trains on them
through the same loaders. The pixels are those the matching folder writers store
(:func:`~grootvl.data.prepare_digits_folder`, ``write_pathfinder_folder``), so a checkpoint
trained in memory evaluates on the written folder to the same accuracy.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import UserError
from .digits import digits_arrays

__all__ = ["GENERATED", "ArrayImageDataset", "generated_datasets"]

GENERATED = ("digits", "pathfinder")
DIGITS_CLASSES = tuple(str(d) for d in range(10))


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


def _digits(size: int, train_images: int | None, val_images: int | None, seed: int,
            options: dict) -> tuple:
    if options:
        raise UserError(f"generated.options = {options}: the digits take no options; set "
                        "generated.options={{}}")
    train_x, train_y, val_x, val_y = digits_arrays(size, seed=seed)
    for key, wanted, available in (("generated.train_images", train_images, len(train_x)),
                                   ("generated.val_images", val_images, len(val_x))):
        if wanted is not None and wanted > available:
            raise UserError(f"{key} = {wanted}: the digits have {available} such images; use "
                            f"at most {available} or null (all)")
    train_n = train_images or len(train_x)
    val_n = val_images or len(val_x)
    return train_x[:train_n], train_y[:train_n], val_x[:val_n], val_y[:val_n], DIGITS_CLASSES


def _pathfinder(size: int, train_images: int | None, val_images: int | None, seed: int,
                options: dict) -> tuple:
    from .pathfinder import CLASS_NAMES, pathfinder

    for key, value in (("generated.train_images", train_images),
                       ("generated.val_images", val_images)):
        if value is None:
            raise UserError(f"{key} is null: pathfinder images are generated, say how many "
                            f"(e.g. --set {key}=2000)")
    try:  # validation images continue the training images' stream: never a repeat
        train_x, train_y = pathfinder(train_images, size, seed, **options)
        val_x, val_y = pathfinder(val_images, size, seed, start=train_images, **options)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"generated.options = {options} with data.img_size = {size}: "
                        f"{exc}") from exc
    return train_x, train_y, val_x, val_y, tuple(CLASS_NAMES)


_GENERATORS = {"digits": _digits, "pathfinder": _pathfinder}


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
    if name not in _GENERATORS:
        raise UserError(f"generated.name = {name!r}: not a generated data set; use one of "
                        f"{', '.join(GENERATED)}")
    train_x, train_y, val_x, val_y, classes = _GENERATORS[name](
        size, train_images, val_images, seed, dict(options or {}))
    return (ArrayImageDataset(train_x, train_y, mean, std, in_chans),
            ArrayImageDataset(val_x, val_y, mean, std, in_chans), list(classes))
