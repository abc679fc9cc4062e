"""Autocast helpers for ops that fix their own compute dtypes."""
from __future__ import annotations

import contextlib

import torch

_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")


def autocast_disabled(device: torch.device):
    """A context that turns autocast off for ``device`` (a no-op where autocast never runs)."""
    if device.type in _AUTOCAST_DEVICES:
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast gives matrix products on ``device`` now, or None when it is off."""
    if device.type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None
