"""Model weights from files: GrootV release checkpoints, plain state dicts, safetensors.

Everything that puts saved weights into a model goes through here: ``grootvl.load_checkpoint``,
timm's ``pretrained=True`` file loading for the ``grootv_*`` models (``checkpoint_filter_fn``,
``load_pretrained_into``), and :func:`load_weights`, the command-line flavour that turns every
mismatch into a :class:`~grootvl.errors.UserError`. The snapshots of grootvl's own training
engine (``grootvl.engine.snapshots``) keep their weights under ``model`` too, so they load here
like a release file.

The original release files are training snapshots, ``{"model": ..., "model_ema": ...,
"optimizer": ..., "lr_scheduler": ..., "epoch": ..., "max_accuracy": ..., "config": ...}``,
where ``config`` is a pickled yacs ``CfgNode``. ``torch.load(weights_only=True)`` refuses such
objects; ``read_state_dict`` keeps the safe loader and stands an inert placeholder in for each
foreign class (nothing from the file is executed), since only the weights are used.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from collections import OrderedDict
from os import PathLike
from typing import Any, Mapping, NamedTuple

import torch
from torch import Tensor, nn

from ..errors import UserError

__all__ = ["LoadResult", "checkpoint_filter_fn", "load_checkpoint", "load_weights", "read_state_dict",
           "unfitting_classifier_keys"]

_MODEL_KEYS = ("model", "state_dict", "module")
_EMA_KEYS = ("model_ema", "state_dict_ema", "ema")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
_SHOWN = 8  # keys listed per category in messages


class LoadResult(NamedTuple):
    """What ``load_checkpoint`` did: keys left at their initial values, keys ignored, and
    which entry of the checkpoint file the weights came from (``""`` for a bare state dict)."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    source: str


def read_state_dict(path_or_state: str | PathLike | Mapping[str, Any], use_ema: bool = False,
                    map_location: str | torch.device = "cpu",
                    weights_only: bool = True) -> tuple[dict[str, Tensor], str]:
    """The model weights in a checkpoint, as ``(state_dict, source_key)``.

    Args:
        path_or_state: a ``.pth``/``.pt``/``.bin`` file (torch.save), a ``.safetensors`` file,
            or an already loaded dict (release format or plain state dict).
        use_ema: take the EMA weights (``model_ema``/``state_dict_ema``) instead of ``model``;
            raises if the checkpoint has none.
        map_location: device for the loaded tensors.
        weights_only: keep torch's safe unpickler (default). Pass False only for files you
            trust, if a checkpoint holds objects the placeholders cannot stand in for.
    """
    ckpt = path_or_state if isinstance(path_or_state, Mapping) else \
        read_checkpoint_file(path_or_state, map_location, weights_only)
    if not isinstance(ckpt, Mapping):
        raise TypeError(f"a checkpoint must be a dict of tensors or a training snapshot dict, "
                        f"got {type(ckpt).__name__}")
    keys = _EMA_KEYS if use_ema else _MODEL_KEYS
    source = next((k for k in keys if isinstance(ckpt.get(k), Mapping)), "")
    if source:
        state = ckpt[source]
    elif use_ema:
        raise ValueError(f"use_ema=True but the checkpoint has no EMA weights (none of {_EMA_KEYS}); "
                         f"its top-level keys are {_preview(list(ckpt))}. Use use_ema=False.")
    elif ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        state = ckpt
    else:
        raise ValueError(f"no state dict found in the checkpoint: expected one of {_MODEL_KEYS} or a "
                         f"dict of tensors; its top-level keys are {_preview(list(ckpt))}")
    return _strip_wrappers(dict(state)), source


def read_checkpoint_file(path: str | PathLike, map_location: str | torch.device = "cpu",
                         weights_only: bool = True) -> Any:
    """The whole content of a checkpoint file (``.safetensors``: its dict of tensors)."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device=str(map_location))
    return _torch_load(path, map_location, weights_only)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module | None = None) -> dict[str, Tensor]:
    """timm ``pretrained_filter_fn``: unwrap the release format (``model`` entry) and
    DataParallel/compile prefixes; names are otherwise identical to the original."""
    return read_state_dict(state_dict)[0]


def load_checkpoint(
    model: nn.Module,
    path_or_state: str | PathLike | Mapping[str, Any],
    use_ema: bool = False,
    strict: bool = True,
    reset_classifier: bool = False,
    map_location: str | torch.device = "cpu",
    weights_only: bool = True,
) -> LoadResult:
    """Load GrootV weights into ``model``.

    Args:
        model: the model (e.g. ``grootvl.models.GrootV`` or ``timm.create_model("grootv_tiny")``).
        path_or_state: release checkpoint (dict with ``model``/``model_ema``/``optimizer``...),
            plain state dict, or a file holding either (``.pth``) or a ``.safetensors`` file.
        use_ema: load the EMA weights of a release checkpoint instead of ``model``.
        strict: raise (with readable lists) on missing, unexpected or mis-shaped keys;
            if False, warn and load the keys that fit.
        reset_classifier: ignore the checkpoint's classifier (``head.*``) and keep the model's
            own, e.g. to fine-tune with another number of classes.
        map_location, weights_only: see ``read_state_dict``.

    Returns:
        ``LoadResult(missing_keys, unexpected_keys, source)``.
    """
    state, source = read_state_dict(path_or_state, use_ema, map_location, weights_only)
    classifier = classifier_prefix(model)
    if reset_classifier:
        state = {k: v for k, v in state.items() if not k.startswith(classifier)}
    target = model.state_dict()
    missing = [k for k in target if k not in state
               and not k.endswith("num_batches_tracked")  # absent from old BatchNorm checkpoints
               and not (reset_classifier and k.startswith(classifier))]
    unexpected = [k for k in state if k not in target]
    mismatched = [(k, tuple(state[k].shape), tuple(target[k].shape)) for k in state
                  if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        message = _mismatch_message(model, state, missing, unexpected, mismatched, classifier)
        if strict:
            raise RuntimeError(message)
        warnings.warn(message, stacklevel=2)
    skip = {k for k, _, _ in mismatched} | set(unexpected)
    model.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=False)
    return LoadResult(missing, unexpected, source)


def load_pretrained_into(model: nn.Module, path: str | PathLike) -> None:
    """What ``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...))``
    runs: the ``model`` weights (not EMA, as the original evaluation), the classifier dropped
    when the model has another number of classes (as timm does), and the first convolution
    adapted when ``in_chans`` differs."""
    state, _ = read_state_dict(path)
    conv = "patch_embed.conv1.weight"
    in_chans = getattr(model, "in_chans", 3)
    if conv in state and state[conv].shape[1] != in_chans:
        from timm.models import adapt_input_conv

        state[conv] = adapt_input_conv(in_chans, state[conv])
    load_checkpoint(model, state, strict=True,
                    reset_classifier=bool(unfitting_classifier_keys(model, state)))


def load_weights(model: nn.Module, path: str | PathLike, use_ema: bool = False,
                 model_name: str = "the model", new_classifier: bool = False) -> list[str]:
    """:func:`load_checkpoint` (strict, safe unpickling) for command-line tools: any problem
    becomes a :class:`~grootvl.errors.UserError` naming the architecture the checkpoint was
    saved from, when the file records it (``arch``, as training snapshots do).

    With ``new_classifier``, a classifier whose keys or shapes do not fit ``model`` (e.g. a
    1000-class release fine-tuned on 10 classes) is dropped and ``model`` keeps its own freshly
    initialised one; every other key stays strict. Returns the dropped checkpoint keys.
    """
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist")
    arch = None
    try:
        ckpt = read_checkpoint_file(path)
        arch = ckpt.get("arch") if isinstance(ckpt, Mapping) else None
        state, _ = read_state_dict(ckpt, use_ema=use_ema)
        dropped = unfitting_classifier_keys(model, state) if new_classifier else []
        load_checkpoint(model, state, reset_classifier=bool(dropped))
    except (RuntimeError, ValueError, TypeError, KeyError, pickle.UnpicklingError, OSError) as exc:
        made_for = f" (it was saved from {arch})" if isinstance(arch, str) else ""
        raise UserError(f"checkpoint {path} does not fit {model_name}{made_for}: {exc}\n"
                        "Pick the matching --model (and number of classes), or another "
                        "checkpoint.") from exc
    return dropped


def classifier_prefix(model: nn.Module) -> str:
    """Name prefix of ``model``'s classifier: timm's ``pretrained_cfg["classifier"]`` + ``.``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("classifier", "head")) + "."


def unfitting_classifier_keys(model: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """All of ``state``'s classifier keys if any of them is absent from ``model`` or shaped
    otherwise (a classifier is replaced as a whole), else none."""
    prefix = classifier_prefix(model)
    target = model.state_dict()
    head = [k for k in state if k.startswith(prefix)]
    if any(k not in target or target[k].shape != state[k].shape for k in head):
        return head
    return []


# ---------------------------------------------------------------------- helpers

def _strip_wrappers(state: dict[str, Any]) -> dict[str, Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"the state dict holds non-tensor entries {_preview(bad)}; is this a state dict?")
    return state


def _preview(items: list, shown: int = _SHOWN) -> str:
    text = ", ".join(str(i) for i in items[:shown])
    return f"[{text}{f', ... ({len(items) - shown} more)' if len(items) > shown else ''}]"


def describe_grootv(state: Mapping[str, Any]) -> str | None:
    """'channels=80, depths=(2, 2, 9, 2)' for a GrootV state dict, None for anything else."""
    stem = state.get("patch_embed.conv2.weight")
    if stem is None:
        return None
    depths: dict[int, int] = {}
    for key in state:
        m = re.match(r"levels\.(\d+)\.blocks\.(\d+)\.", key)
        if m:
            level, block = int(m[1]), int(m[2])
            depths[level] = max(depths.get(level, 0), block + 1)
    shape = tuple(depths.get(i, 0) for i in range(max(depths, default=-1) + 1))
    return f"channels={stem.shape[0]}, depths={shape}"


def _mismatch_message(model, state, missing, unexpected, mismatched, classifier) -> str:
    lines = ["the checkpoint does not fit the model:"]
    if missing:
        lines.append(f"  missing from the checkpoint ({len(missing)}): {_preview(missing)}")
    if unexpected:
        lines.append(f"  not in the model ({len(unexpected)}): {_preview(unexpected)}")
    if mismatched:
        shown = [f"{k}: checkpoint {a} vs model {b}" for k, a, b in mismatched]
        lines.append(f"  shape mismatches ({len(mismatched)}): {_preview(shown, 4)}")
    head_only = all(k.startswith(classifier) for k in missing + unexpected + [k for k, _, _ in mismatched])
    if head_only:
        lines.append(f"  only the classifier ({classifier}*) differs: pass reset_classifier=True to keep "
                     "the model's own classifier (e.g. for another number of classes)")
    else:
        found, wanted = describe_grootv(state), describe_grootv(model.state_dict())
        if found is None:
            lines.append("  this is not a GrootV checkpoint (no patch_embed.conv2.weight)")
        elif found != wanted:
            lines.append(f"  it is a checkpoint of another architecture: GrootV with {found}, "
                         f"but the model is GrootV with {wanted} (grootv_tiny: channels=80, "
                         "depths=(2, 2, 9, 2); grootv_small: 96, (2, 2, 13, 2); grootv_base: 128, "
                         "(2, 2, 13, 2))")
    return "\n".join(lines)


class _Placeholder:
    """Inert stand-in for a class the safe unpickler does not know (e.g. a yacs config)."""

    def __new__(cls, *args, **kwargs):
        if cls._as_dict:
            return OrderedDict()  # dict subclasses are filled by SETITEMS, which wants a dict
        return object.__new__(cls)

    def __setstate__(self, state) -> None:
        pass


def _torch_load(path: str, map_location, weights_only: bool) -> Any:
    if not weights_only:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as first_error:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if not names:
            raise
        placeholders = {n: type("Placeholder_" + re.sub(r"\W", "_", n), (_Placeholder,), {"_as_dict": False})
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
        raise pickle.UnpicklingError(
            f"{path}: the checkpoint pickles objects other than tensors ({', '.join(names)}) that "
            "could not be read safely. If you trust the file, pass weights_only=False."
        ) from first_error
