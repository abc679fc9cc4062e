"""scikit-learn's handwritten digits as images: in memory, or written as an image folder.

``load_digits`` ships with scikit-learn (1797 grey 8x8 images, values 0..16), so nothing is
downloaded. Images are scaled to 0..255, upsampled to ``size`` pixels (PIL bicubic) and split
train/val stratified by class with a fixed seed. :func:`digits_arrays` returns them as
tensors; :func:`prepare_digits_folder` writes the same pixels as RGB PNGs (an image folder
for ``grootvl train``/``eval``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from ..files import first_line

__all__ = ["digits_arrays", "prepare_digits_folder"]

STAMP = "digits.json"


def _digits_split(size: int, val_fraction: float, seed: int):
    """(grey uint8 images (N, size, size), labels (N,), train indices, val indices)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = (digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(img, mode="L").resize((size, size),
                                                                           Image.BICUBIC))
                       for img in small])
    idx_train, idx_val = train_test_split(np.arange(len(images)), test_size=val_fraction,
                                          random_state=seed, stratify=digits.target)
    return images, digits.target.astype(np.int64), idx_train, idx_val


def digits_arrays(size: int = 32, val_fraction: float = 0.2, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_images, train_labels, val_images, val_labels)``: uint8 ``(N, size, size)``
    grey images and int64 labels 0..9; the pixels and split of :func:`prepare_digits_folder`
    with the same arguments (1437 training and 360 validation images by default)."""
    images, labels, idx_train, idx_val = _digits_split(size, val_fraction, seed)
    return (torch.from_numpy(images[idx_train]), torch.from_numpy(labels[idx_train]),
            torch.from_numpy(images[idx_val]), torch.from_numpy(labels[idx_val]))


def prepare_digits_folder(root: str | Path, size: int = 32, val_fraction: float = 0.2,
                          seed: int = 0) -> Path:
    """Write ``root/train/<digit>/*.png`` and ``root/val/<digit>/*.png``; returns ``root``.

    Skips the work when ``root`` already holds the same preparation (a stamp file records
    the parameters).
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"digits folder {root} (--data-dir) is a file; pass a folder to write "
                        "the digits into")
    params = {"size": size, "val_fraction": val_fraction, "seed": seed}
    stamp = root / STAMP
    try:
        if json.loads(stamp.read_text()).get("params") == params:
            return root
    except (OSError, ValueError, AttributeError):  # no stamp yet, or a damaged one: rewrite
        pass
    images, labels, idx_train, idx_val = _digits_split(size, val_fraction, seed)
    try:
        for split, indices in (("train", idx_train), ("val", idx_val)):
            for i in indices:
                folder = root / split / str(int(labels[i]))
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i], mode="L").convert("RGB").save(folder / f"{i:04d}.png")
        stamp.write_text(json.dumps({"params": params, "train": len(idx_train),
                                     "val": len(idx_val)}))
    except OSError as exc:
        raise DataError(f"digits folder {root} (--data-dir): cannot write the images "
                        f"({first_line(exc)})") from None
    return root
