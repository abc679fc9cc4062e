"""Reading the files users hand us: checkpoints and images.

Every command reads checkpoints (evaluation, resumption, initial weights, dense backbones,
export) and images (every task's data sets, ``grootvl visualize``) through the functions
here, so that each failure becomes one :class:`~grootvl.errors.UserError` line naming the
file and the cause, whatever library the file defeated:

* :func:`read_checkpoint`: torch (zip or legacy pickle) and safetensors files, with torch's
  safe unpickler only (a file that pickles code is refused, nothing in it runs);
* :func:`check_finite`: weights that are NaN or infinite (a diverged run's snapshot);
* :func:`open_image` / :func:`decode_image`: images, with decompression bombs refused before
  they are decoded and 16-bit images scaled (not clipped) to 8 bits.

This module sits just above :mod:`grootvl.errors` (docs/design.md, "Package layers").
"""
from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

from .errors import DataError, UserError

__all__ = ["CheckpointError", "UnreadableImage", "check_finite", "decode_image", "first_line",
           "nonfinite_tensors", "open_image", "read_checkpoint"]

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or holds no usable weights; the message names the
    file and the cause. Also a ``ValueError``, for code that catches those."""


class UnreadableImage(DataError):
    """An image file that cannot be decoded (or refuses to be: a decompression bomb);
    ``path`` and ``cause`` are the two halves of the message."""

    def __init__(self, path, cause: str):
        self.path, self.cause = str(path), cause
        super().__init__(f"image {path}: {cause}")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """``ExcType: first line of its message`` (libraries' messages run over many lines)."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------- checkpoints

def read_checkpoint(path: str | os.PathLike, map_location="cpu", weights_only: bool = True,
                    what: str = "checkpoint") -> Any:
    """The content of a checkpoint file: a ``torch.save`` file (``.pth``, ``.pt``, ``.bin``)
    or a ``.safetensors`` file (its dict of tensors).

    With ``weights_only`` (the default) torch's safe unpickler reads the file; classes it
    does not know (e.g. the config object of the original GrootV release) are replaced by
    inert placeholders, and a file that pickles callables is refused. Pass False only for
    files you trust. Any failure raises :class:`CheckpointError`: ``"{what} PATH: cause"``.
    """
    path = Path(path)
    where = f"{what} {path}"
    if not path.exists():
        raise CheckpointError(f"{where}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{where} is a folder; pass the checkpoint file in it")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise CheckpointError(f"{where} cannot be opened ({first_line(exc)})") from None
    if not head:
        raise CheckpointError(f"{where} is empty (0 bytes): an interrupted copy or download?")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, map_location, where)
    try:
        return _torch_load(path, map_location, weights_only)
    except _UnsafeContent as exc:
        raise CheckpointError(f"{where} pickles objects other than tensors ({exc}) and was "
                              "refused without running them; if you trust the file, load it "
                              "with torch.load(weights_only=False) and save its state dict")
    except Exception as exc:  # torch raises many types for files it cannot read
        raise CheckpointError(f"{where} {_torch_failure(head)} ({first_line(exc)})") from None


def _read_safetensors(path: Path, map_location, where: str) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(map_location))
    except Exception as exc:  # SafetensorError, OSError...
        raise CheckpointError(f"{where} is not a readable safetensors file, truncated or "
                              f"corrupt ({first_line(exc)})") from None


def _torch_failure(head: bytes) -> str:
    """What a file torch could not load looks like, from its first bytes."""
    if head.startswith(_ZIP_MAGIC):
        return "is a torch.save archive that is truncated or corrupt"
    if head[0] == _PICKLE_PROTO:
        return "is a pickle torch cannot read as a checkpoint"
    return "is not a checkpoint (neither a torch.save file nor safetensors)"


class _UnsafeContent(Exception):
    """The file pickles globals the safe unpickler refuses even with placeholders."""


class _Placeholder:
    """Inert stand-in for a class the safe unpickler does not know (e.g. a yacs config)."""

    _as_dict = False

    def __new__(cls, *args, **kwargs):
        if cls._as_dict:
            return OrderedDict()  # dict subclasses are filled by SETITEMS, which wants a dict
        return object.__new__(cls)

    def __setstate__(self, state) -> None:
        pass


def _torch_load(path: Path, map_location, weights_only: bool) -> Any:
    import torch

    if not weights_only:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        if not names:
            raise
    placeholders = {n: type("Placeholder_" + re.sub(r"\W", "_", n), (_Placeholder,), {})
                    for n in names}
    for _ in range(len(names) + 1):
        try:
            with torch.serialization.safe_globals([(cls, n) for n, cls in placeholders.items()]):
                return torch.load(path, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, TypeError) as err:
            # A placeholder that received dict items must become a dict: find which.
            flip = [cls for cls in placeholders.values()
                    if cls.__name__ in str(err) and not cls._as_dict]
            if not flip:
                break
            flip[0]._as_dict = True
    raise _UnsafeContent(", ".join(names))


def nonfinite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Keys of the floating-point tensors in ``state`` holding a NaN or an infinity."""
    import torch

    return [key for key, value in state.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point()
            and not bool(torch.isfinite(value).all())]


def check_finite(state: Mapping[str, Any], where: str) -> None:
    """A :class:`CheckpointError` naming ``where`` if a weight of ``state`` is NaN or infinite
    (the snapshot of a run that diverged): such weights make every prediction NaN."""
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(f"{where} holds NaN or infinite weights in {len(bad)} of "
                              f"{len(state)} tensors (e.g. {bad[0]}): the run it comes from "
                              "diverged; use an earlier checkpoint")


# --------------------------------------------------------------------------------- images

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def open_image(path: str | os.PathLike):
    """The decoded image at ``path`` in its own mode (e.g. a label map's raw values).

    Raises :class:`UnreadableImage` for a missing, truncated or unidentifiable file, and for
    a decompression bomb: a header claiming more pixels than Pillow's safety limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, twice over) is refused before any pixel is decoded.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise UnreadableImage(path, "no such file" if not path.exists() else "not a file")
    img = None
    try:
        img = Image.open(path)
        img.load()  # decodes the pixels and closes the file (a single-frame image)
        return img
    except Image.DecompressionBombError as exc:
        raise UnreadableImage(path, "its header claims too many pixels to decode safely, a "
                              f"decompression bomb ({first_line(exc)})") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error, zlib.error...
        if img is not None:
            img.close()
        raise UnreadableImage(path, f"not a readable image ({first_line(exc)})") from None


def decode_image(path: str | os.PathLike, mode: str = "RGB"):
    """The image at ``path`` converted to ``mode`` ("RGB", "L"...); 16-bit images are scaled
    to 8 bits (0..65535 -> 0..255) instead of being clipped at 255. Errors as
    :func:`open_image`."""
    from PIL import Image

    img = open_image(path)
    if img.mode in _SIXTEEN_BIT_MODES and mode != img.mode:
        import numpy as np

        values = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return img if img.mode == mode else img.convert(mode)
