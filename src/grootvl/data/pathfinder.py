"""A long-range image task in the spirit of the Long Range Arena's Pathfinder.

Each image shows curves on a black background and two bright square markers, each at the end
of a curve. Label 1 ("connected"): one curve joins the two markers. Label 0 ("disconnected"):
the markers sit on two different curves. Deciding needs information to travel along a curve
from one marker to the other, however far apart they are: the task a scan topology that
follows image structure should help with.

Construction (see ``_pathfinder_numba``): four arms leave the corners of a small square
and wander outwards as curves (chains of equal steps whose heading turns by at most
``max_turn`` per step); two opposite sides of the square are drawn, so the arms form two
curves facing each other like ``)(``. The markers go on the outer ends of two neighbouring
arms: of one curve (label 1) or of the two curves (label 0). Which sides are drawn is random
and all arms grow alike, so marker distance, ink and the curve direction at each marker
have one distribution for both labels: the label is only readable by following the arms
back to the square (tests check that such statistics do not predict it). Different curves
never touch, not even diagonally: a positive image has one 8-connected component holding
both markers, a negative none.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["CLASS_NAMES", "DIFFICULTY_DEFAULTS", "pathfinder", "write_pathfinder_folder"]

CLASS_NAMES = ("0_disconnected", "1_connected")
STAMP = "pathfinder.json"

#: Default difficulty; see :func:`pathfinder` for the meaning of each knob.
DIFFICULTY_DEFAULTS = {
    "arm_segments": 5,
    "segment_length": 2.0,
    "max_turn": 25.0,
    "tilt": 45.0,
    "num_distractors": 2,
    "distractor_segments": 3,
    "line_width": 2.0,
    "marker_size": 4,
    "spacing": 2,
    "dash_length": 2.0,
    "dash_gap": 0.0,
    "path_intensity": 170,
    "marker_intensity": 255,
    "min_marker_distance": 4.0,
}
_MAX_ATTEMPTS = 2000  # scenes tried per image before the difficulty is declared impossible


def _check_number(name: str, value, low: float, high: float | None = None,
                  integer: bool = False, fix: str = "") -> None:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or (integer and not isinstance(value, (int, np.integer))):
        raise TypeError(f"pathfinder: {name} must be {kind}, got {value!r}")
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        limits = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"pathfinder: {name} must be {limits}, got {value!r}{fix}")


def _difficulty(size: int, difficulty: dict) -> dict:
    unknown = sorted(set(difficulty) - set(DIFFICULTY_DEFAULTS))
    if unknown:
        raise TypeError(f"pathfinder: unknown difficulty knob(s) {', '.join(unknown)}; "
                        f"known: {', '.join(DIFFICULTY_DEFAULTS)}")
    d = {**DIFFICULTY_DEFAULTS, **difficulty}
    _check_number("size", size, 16, 1024, integer=True)
    _check_number("arm_segments", d["arm_segments"], 1, 1000, integer=True)
    _check_number("segment_length", d["segment_length"], 1.0, size / 2)
    _check_number("max_turn", d["max_turn"], 0.0, 90.0)
    _check_number("tilt", d["tilt"], 0.0, 45.0)
    _check_number("num_distractors", d["num_distractors"], 0, 1000, integer=True)
    _check_number("distractor_segments", d["distractor_segments"], 1, 1000, integer=True)
    _check_number("line_width", d["line_width"], 1.0, size / 4)
    _check_number("marker_size", d["marker_size"], 1, size // 4, integer=True)
    _check_number("spacing", d["spacing"], 1, size // 4, integer=True,
                  fix=" (curves closer than 1 empty pixel would touch)")
    _check_number("dash_length", d["dash_length"], 0.5, float(size))
    _check_number("dash_gap", d["dash_gap"], 0.0, float(size))
    _check_number("path_intensity", d["path_intensity"], 1, 255, integer=True)
    _check_number("marker_intensity", d["marker_intensity"], 1, 255, integer=True)
    _check_number("min_marker_distance", d["min_marker_distance"], 0.0, float(size))
    return d


def pathfinder(num_images: int, size: int = 32, seed: int = 0, *, start: int = 0,
               **difficulty) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``num_images`` Pathfinder images and their labels.

    Args:
        num_images: how many images (>= 0).
        size: image side in pixels (16..1024).
        seed: random seed (>= 0). Image ``i`` depends only on ``(seed, start + i)`` and the
            difficulty, not on ``num_images``, the thread count or the machine.
        start: index of the first image in the seed's stream, so that
            ``pathfinder(n, seed=s, start=k)`` is images ``k..k+n-1`` of ``pathfinder(k+n,
            seed=s)``; disjoint ranges of one seed give disjoint train/validation sets.
        **difficulty: the knobs below (defaults in ``DIFFICULTY_DEFAULTS``).

    Difficulty knobs:
        arm_segments (5): steps of each of the four arms; each curve is arm, square side,
            arm, so a marker-to-marker path is about ``2 * arm_segments * segment_length``
            pixels long.
        segment_length (2.0): pixels per step.
        max_turn (25.0): largest change of heading between two steps, in degrees (smaller:
            smoother, straighter curves).
        tilt (45.0): largest random rotation of the central square, in degrees (45: any
            orientation).
        num_distractors (2): extra unmarked curves of ``distractor_segments`` steps.
        distractor_segments (3): steps of each distractor curve.
        line_width (2.0): stroke width in pixels (a pixel is lit when its centre lies within
            ``max(0.5, line_width / 2)`` of the curve).
        marker_size (4): side of the square markers, in pixels.
        spacing (2): empty pixels kept between different curves (and between a curve and
            its own earlier, non-adjacent part).
        dash_length (2.0), dash_gap (0.0): with ``dash_gap > 0`` curves are drawn as dashes
            of ``dash_length`` pixels separated by ``dash_gap`` pixels of arc length (the
            geometry is the same as undashed, so the label keeps its meaning).
        path_intensity (170), marker_intensity (255): grey values of curves and markers.
        min_marker_distance (4.0): smallest distance between the two marker centres, pixels.

    Compared with the Long Range Arena's Pathfinder-32 (32x32 images from Linsley et al.'s
    generator; its "hard" level draws paths of 14 dashed paddles with 5 short distractor
    snakes, thin anti-aliased strokes), the defaults are easier: solid 2-pixel strokes,
    2-pixel gaps between curves, arms of 5 steps of 2 pixels and two distractors of 3 steps. They
    are calibrated so that a small GrootV learns the task on a CPU within
    ``grootvl ablate``'s budget (thinner, longer or dashed curves left every small model we
    tried at chance within that budget). The knobs reach LRA-like settings
    (``arm_segments=7, segment_length=2, line_width=1, spacing=1, dash_gap=1,
    num_distractors=5``).

    Returns:
        ``(images, labels)``: a ``torch.uint8`` tensor ``(num_images, size, size)`` (grey,
        0 = background) and a ``torch.int64`` tensor ``(num_images,)`` of 0/1. Every aligned
        pair of images (``start + i`` even and odd) holds one image of each class, so any
        even count starting at an even ``start`` is exactly balanced.

    Raises:
        TypeError / ValueError: a bad argument, named in the message.
        RuntimeError: the curves do not fit in the image (too many, too long, too thick).
    """
    images, labels, _ = _generate(num_images, size, seed, start, difficulty)
    return torch.from_numpy(images), torch.from_numpy(labels)


def _generate(num_images: int, size: int, seed: int, start: int, difficulty: dict
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pathfinder`` as NumPy arrays, plus each scene's frame (N, 3): the centre (x, y) of
    the square the arms leave from and the heading of arm 0 in radians."""
    from . import _pathfinder_numba as kernels  # numba import is slow: pay it on first use

    _check_number("num_images", num_images, 0, None, integer=True)
    _check_number("seed", seed, 0, 2**62, integer=True)
    _check_number("start", start, 0, 2**62, integer=True)
    d = _difficulty(size, difficulty)
    labels = kernels.pair_labels(int(seed), int(start), int(num_images))
    images = np.zeros((num_images, size, size), np.uint8)
    frames = np.zeros((num_images, 3))
    status = kernels.generate(
        images, labels, int(seed), int(start), int(d["arm_segments"]),
        int(d["num_distractors"]), int(d["distractor_segments"]), float(d["segment_length"]),
        math.radians(float(d["max_turn"])), math.radians(float(d["tilt"])),
        float(d["line_width"]), int(d["marker_size"]), int(d["spacing"]),
        float(d["dash_length"]), float(d["dash_gap"]), int(d["path_intensity"]),
        int(d["marker_intensity"]), float(d["min_marker_distance"]), _MAX_ATTEMPTS, frames)
    if status != kernels.OK:
        raise RuntimeError(
            f"pathfinder: no image fitted in {_MAX_ATTEMPTS} attempts with size={size} and "
            f"{_describe(d)}: the curves do not fit; use a larger size or fewer/shorter/"
            "thinner curves (arm_segments, segment_length, num_distractors, "
            "distractor_segments, line_width, spacing)")
    return images, labels, frames


def _describe(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def write_pathfinder_folder(root: str | Path, num_train: int, num_val: int, size: int = 32,
                            seed: int = 0, **difficulty) -> Path:
    """Write Pathfinder images as an image folder for ``grootvl train``; returns ``root``.

    Layout: ``root/train/<class>/<index>.png`` and ``root/val/<class>/<index>.png`` with
    classes ``0_disconnected`` and ``1_connected`` (grey PNGs). The training images are
    ``pathfinder(num_train, size, seed)``; the validation images the next ``num_val`` images
    of the same stream (``start=num_train``), so they never repeat a training image. Skips
    the work when ``root`` already holds the same preparation (a stamp file records the
    parameters); a folder with other contents is refused rather than mixed.
    """
    _check_number("num_train", num_train, 2, None, integer=True)
    _check_number("num_val", num_val, 2, None, integer=True)
    root = Path(root)
    params = {"num_train": num_train, "num_val": num_val, "size": size, "seed": seed,
              "difficulty": _difficulty(size, difficulty)}
    stamp = root / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()).get("params") == params:
        return root
    for split in ("train", "val"):
        if (root / split).exists():
            raise FileExistsError(f"{root / split} already exists and {stamp} does not record "
                                  "these parameters; give an empty or new folder")
    for split, count, first in (("train", num_train, 0), ("val", num_val, num_train)):
        images, labels = pathfinder(count, size, seed, start=first, **difficulty)
        for name in CLASS_NAMES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(images.numpy(), labels.tolist())):
            Image.fromarray(img, mode="L").save(root / split / CLASS_NAMES[label]
                                                / f"{first + i:07d}.png")
    stamp.write_text(json.dumps({"params": params}, indent=1))
    return root
