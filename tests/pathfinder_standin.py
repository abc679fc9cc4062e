"""A stand-in for ``grootvl.data.pathfinder`` with its signature and output contract (uint8
(N, size, size) images, balanced int64 labels, image i a function of (seed, start + i)), for
tests of code that consumes it. It draws a bright line for label 1; it is no Pathfinder."""
from __future__ import annotations

import types

import torch

CLASS_NAMES = ("0_disconnected", "1_connected")


def pathfinder(num_images: int, size: int = 32, seed: int = 0, *, start: int = 0, **difficulty):
    images = torch.zeros(num_images, size, size, dtype=torch.uint8)
    labels = torch.tensor([(start + i) % 2 for i in range(num_images)], dtype=torch.int64)
    for i in range(num_images):
        g = torch.Generator().manual_seed(seed * 1_000_003 + start + i)
        images[i] = torch.randint(0, 60, (size, size), generator=g, dtype=torch.uint8)
        row = int(torch.randint(2, size - 2, (1,), generator=g))
        if labels[i]:
            images[i, row, 2:-2] = 200
    return images, labels


def module() -> types.ModuleType:
    mod = types.ModuleType("grootvl.data.pathfinder")
    mod.CLASS_NAMES, mod.pathfinder = CLASS_NAMES, pathfinder
    return mod
