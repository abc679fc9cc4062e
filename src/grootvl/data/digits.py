"""scikit-learn's handwritten digits written out as a small image-folder dataset.

``load_digits`` ships with scikit-learn (1797 grey 8x8 images, values 0..16), so the demo
needs no download. We upsample to ``size`` pixels (bicubic), store RGB PNGs and split
train/val stratified by class with a fixed seed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from ..files import first_line

STAMP = "digits.json"


def prepare_digits_folder(root: str | Path, size: int = 32, val_fraction: float = 0.2,
                          seed: int = 0) -> Path:
    """Write ``root/train/<digit>/*.png`` and ``root/val/<digit>/*.png``; returns ``root``.

    Skips the work when ``root`` already holds the same preparation (a stamp file records
    the parameters).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

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
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    idx_train, idx_val = train_test_split(np.arange(len(images)), test_size=val_fraction,
                                          random_state=seed, stratify=digits.target)
    try:
        for split, indices in (("train", idx_train), ("val", idx_val)):
            for i in indices:
                folder = root / split / str(int(digits.target[i]))
                folder.mkdir(parents=True, exist_ok=True)
                img = Image.fromarray(images[i], mode="L").resize((size, size), Image.BICUBIC)
                img.convert("RGB").save(folder / f"{i:04d}.png")
        stamp.write_text(json.dumps({"params": params, "train": len(idx_train),
                                     "val": len(idx_val)}))
    except OSError as exc:
        raise DataError(f"digits folder {root} (--data-dir): cannot write the images "
                        f"({first_line(exc)})") from None
    return root
