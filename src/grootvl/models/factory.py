"""Models by name: timm's registry (where ``grootv_*`` are registered) with clear errors."""
from __future__ import annotations

import difflib

import timm
import torch
import torch.nn as nn

from ..errors import UserError, shown
from ..files import first_line

__all__ = ["MAX_PARAMETERS", "VARIANTS", "check_model_options", "create_model", "resolve_variant"]

# The largest model a configuration may ask for: 2**32 parameters (16 GiB of float32), far
# above any GrootV (90.6 M for grootv_base) or timm model. Options that come from files
# (a snapshot's saved model.kwargs) must not make the process allocate without bound.
MAX_PARAMETERS = 2**32

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


def check_model_options(name: str, options: dict, what: str = "model.kwargs") -> None:
    """Build timm model ``name`` with ``options`` on the meta device (no memory, no compute):
    a :class:`UserError` naming ``what`` if the model refuses an option, or if it would have
    more than :data:`MAX_PARAMETERS` parameters. Run before building a model whose options
    come from a user or a file."""
    try:
        with torch.device("meta"):
            probe = timm.create_model(name, pretrained=False, **options)
    except (TypeError, ValueError) as exc:
        raise UserError(f"model {name} does not accept the options {shown(options)} ({what}): "
                        f"{first_line(exc)}") from None
    except Exception:  # noqa: BLE001 - a model that cannot be built on the meta device
        return         # is built for real by the caller, which reports its own errors
    count = sum(p.numel() for p in probe.parameters())
    if count > MAX_PARAMETERS:
        raise UserError(f"model {name} with the options {shown(options)} ({what}) would have "
                        f"{count:.3g} parameters ({count * 4 / 2**30:.3g} GiB of float32), more "
                        f"than {MAX_PARAMETERS:.3g}; check {what}")


def create_model(name: str, num_classes: int, in_chans: int = 3,
                 drop_path_rate: float | None = None, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=False, ...)`` with a :class:`UserError` for an
    unknown name or arguments the model does not take (``kwargs`` are checked first by
    :func:`check_model_options`). ``drop_path_rate`` None keeps the model's default."""
    name = resolve_variant(name)
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    options = dict(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if kwargs:
        check_model_options(name, options, "model.kwargs / model.drop_path_rate")
    try:
        return timm.create_model(name, pretrained=False, **options)
    except (TypeError, ValueError) as exc:
        raise UserError(f"model {name} does not accept these options: {first_line(exc)} "
                        "(check model.kwargs / model.drop_path_rate)") from exc
