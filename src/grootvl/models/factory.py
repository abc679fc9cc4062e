"""Models by name: timm's registry (where ``grootv_*`` are registered) with clear errors."""
from __future__ import annotations

import difflib

import timm
import torch.nn as nn

from ..errors import UserError

__all__ = ["VARIANTS", "create_model", "resolve_variant"]

# short names the dense-prediction commands have always accepted for the GrootV sizes
VARIANTS = {"tiny": "grootv_tiny", "small": "grootv_small", "base": "grootv_base",
            "t": "grootv_tiny", "s": "grootv_small", "b": "grootv_base"}


def resolve_variant(name: str) -> str:
    """``"tiny"``/``"t"``/``"grootv_tiny"`` -> ``"grootv_tiny"``; other timm model names are
    returned unchanged; anything else is a :class:`UserError` with the closest names."""
    from . import grootv  # noqa: F401  (registers grootv_* with timm)

    resolved = VARIANTS.get(name.lower(), name)
    if not timm.is_model(resolved):
        close = difflib.get_close_matches(name, [*timm.list_models(), *VARIANTS], n=4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UserError(f"model {name!r} is not a timm model name.{hint} (GrootV: grootv_tiny, "
                        "grootv_small, grootv_base, or tiny / small / base)")
    return resolved


def create_model(name: str, num_classes: int, in_chans: int = 3,
                 drop_path_rate: float | None = None, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=False, ...)`` with a :class:`UserError` for an
    unknown name or arguments the model does not take. ``drop_path_rate`` None keeps the
    model's default."""
    name = resolve_variant(name)
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes,
                                 in_chans=in_chans, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"model {name} does not accept these options: {exc} "
                        "(check model.kwargs / model.drop_path_rate)") from exc
