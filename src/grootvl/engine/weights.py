"""Creating timm models by name and loading weights into them with clear errors."""
from __future__ import annotations

import difflib
import os
import pickle

import timm
import torch.nn as nn

from .checkpoint import read_checkpoint_meta
from .errors import UserError


def create_model(name: str, num_classes: int, in_chans: int = 3, drop_path_rate: float = 0.0,
                 **kwargs) -> nn.Module:
    """``timm.create_model`` with a helpful error for unknown names / arguments.

    GrootV models are registered with timm when :mod:`grootvl` is imported.
    """
    import grootvl  # noqa: F401  (registers grootv_* with timm)

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UserError(f"--model {name}: not a timm model name.{hint} "
                        "(GrootV: grootv_tiny, grootv_small, grootv_base)")
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes,
                                 in_chans=in_chans, drop_path_rate=drop_path_rate, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"--model {name} does not accept these options: {exc} "
                        "(check model.kwargs / model.drop_path_rate)") from exc


def load_weights(model: nn.Module, path: str | os.PathLike, use_ema: bool = False,
                 model_name: str = "the model", new_classifier: bool = False) -> list[str]:
    """Load a checkpoint's weights (ours or the original GrootV release format) into ``model``.

    Uses :func:`grootvl.load_checkpoint` (strict, safe unpickling); any mismatch becomes a
    :class:`UserError` naming the architecture the checkpoint was saved from, when known.
    With ``new_classifier``, a classifier whose keys or shapes do not fit ``model`` (e.g. a
    1000-class release fine-tuned on 10 classes) is dropped and ``model`` keeps its own freshly
    initialised one; every other key stays strict. Returns the dropped checkpoint keys.
    """
    from grootvl.checkpoint import load_checkpoint, read_state_dict

    try:
        state, _ = read_state_dict(str(path), use_ema=use_ema)
        dropped = _unfitting_classifier_keys(model, state) if new_classifier else []
        load_checkpoint(model, state, reset_classifier=bool(dropped))
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except (RuntimeError, ValueError, TypeError, KeyError, pickle.UnpicklingError, OSError) as exc:
        arch = read_checkpoint_meta(path).get("arch") if os.path.isfile(path) else None
        made_for = f" (it was saved from {arch})" if arch else ""
        raise UserError(f"checkpoint {path} does not fit {model_name}{made_for}: {exc}\n"
                        "Pick the matching --model (and number of classes), or another "
                        "checkpoint.") from exc
    return dropped


def _unfitting_classifier_keys(model: nn.Module, state: dict) -> list[str]:
    """All the checkpoint's classifier keys if any of them is absent from ``model`` or shaped
    otherwise (the classifier is replaced as a whole), else none."""
    prefix = str((getattr(model, "pretrained_cfg", None) or {}).get("classifier", "head")) + "."
    target = model.state_dict()
    head = [k for k in state if k.startswith(prefix)]
    if any(k not in target or target[k].shape != state[k].shape for k in head):
        return head
    return []
