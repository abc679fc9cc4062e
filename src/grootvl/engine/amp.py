"""Mixed precision: which dtype, the autocast context and the loss scaler."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..errors import UserError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class AmpSettings:
    """``dtype`` None means full float32."""

    device_type: str
    dtype: torch.dtype | None

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def needs_scaler(self) -> bool:
        """float16 gradients underflow without loss scaling; bfloat16 ones do not."""
        return self.dtype is torch.float16

    @property
    def name(self) -> str:
        return {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def resolve_amp(amp: str, device: torch.device) -> AmpSettings:
    """Map ``--amp`` (auto | none | bf16 | fp16) to settings for ``device``.

    ``auto`` is bf16 on CUDA GPUs that support it, fp16 on older GPUs and float32 on CPU
    (CPU bf16 autocast is only faster on CPUs with AMX; ask for it with ``--amp bf16``).
    """
    if amp == "auto":
        if device.type == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            amp = "none"
    if amp in ("none", "fp32", None):
        return AmpSettings(device.type, None)
    if amp not in _DTYPES:
        raise UserError(f"--amp must be auto, none, bf16 or fp16 (got {amp!r})")
    if amp == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device; on CPU use --amp bf16 or --amp none")
    return AmpSettings(device.type, _DTYPES[amp])


def autocast(settings: AmpSettings):
    """The autocast context for ``settings`` (a no-op context when AMP is off)."""
    if not settings.enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=settings.device_type, dtype=settings.dtype)


def make_grad_scaler(settings: AmpSettings) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16, None otherwise."""
    if not settings.needs_scaler:
        return None
    return torch.amp.GradScaler(settings.device_type)
