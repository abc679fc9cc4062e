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
objects; files are read by :func:`grootvl.files.read_checkpoint`, which keeps the safe loader
and stands an inert placeholder in for each foreign class (nothing from the file is
executed), since only the weights are used, and turns every unreadable file into one error
naming it.
"""
from __future__ import annotations

import re
import warnings
from os import PathLike
from typing import Any, Mapping, NamedTuple

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..files import CheckpointError, check_finite, read_checkpoint

__all__ = ["LoadResult", "WeightsMismatch", "checkpoint_filter_fn", "fit_weights",
           "load_checkpoint", "load_weights", "read_state_dict", "state_dict_of",
           "unfitting_classifier_keys"]

_MODEL_KEYS = ("model", "state_dict", "module")
_EMA_KEYS = ("model_ema", "state_dict_ema", "ema")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
_SHOWN = 8  # keys listed per category in messages


class LoadResult(NamedTuple):
    """What ``load_checkpoint`` did: keys absent from the checkpoint (left at their initial
    values), keys ignored, which entry of the checkpoint file the weights came from (``""``
    for a bare state dict), and keys present in both but shaped otherwise (left at their
    initial values too; only ``strict=False`` gets that far)."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    source: str
    mismatched_keys: list[str] = []


class WeightsMismatch(RuntimeError):
    """``load_checkpoint(strict=True)``: the weights do not fit the model. ``problems`` says
    why, one readable item each (missing keys, unexpected keys, shapes, the architecture)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the checkpoint does not fit the model:\n  " + "\n  ".join(problems))


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
    if isinstance(path_or_state, Mapping):
        return state_dict_of(path_or_state, use_ema, "the checkpoint")
    ckpt = read_checkpoint(path_or_state, map_location, weights_only)
    return state_dict_of(ckpt, use_ema, f"checkpoint {path_or_state}")


def state_dict_of(ckpt: Any, use_ema: bool = False, where: str = "the checkpoint"
                  ) -> tuple[dict[str, Tensor], str]:
    """``(state_dict, source_key)`` of a checkpoint's content (see :func:`read_state_dict`);
    a :class:`~grootvl.files.CheckpointError` naming ``where`` if it holds none."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{where} holds a {type(ckpt).__name__}, not a state dict (a dict "
                              "of tensors) or a training snapshot (a dict with 'model')")
    keys = _EMA_KEYS if use_ema else _MODEL_KEYS
    source = next((k for k in keys if isinstance(ckpt.get(k), Mapping)), "")
    if source:
        state = ckpt[source]
    elif use_ema:
        raise CheckpointError(f"{where} has no EMA weights (none of {_EMA_KEYS}; its top-level "
                              f"keys are {_preview(list(ckpt))}); evaluate it without EMA")
    elif ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        state = ckpt
    else:
        raise CheckpointError(f"{where} holds no state dict: expected one of {_MODEL_KEYS} "
                              f"holding a dict of tensors, or a dict of tensors; its top-level "
                              f"keys are {_preview(list(ckpt))}")
    return _strip_wrappers(dict(state), where), source


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
        problems = _mismatch_problems(model, state, missing, unexpected, mismatched, classifier)
        if strict:
            raise WeightsMismatch(problems)
        warnings.warn("the checkpoint does not fit the model:\n  " + "\n  ".join(problems),
                      stacklevel=2)
    skip = {k for k, _, _ in mismatched} | set(unexpected)
    model.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=False)
    return LoadResult(missing, unexpected, source, [k for k, _, _ in mismatched])


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
                 model_name: str = "the model", new_classifier: bool = False,
                 what: str = "checkpoint") -> list[str]:
    """:func:`load_checkpoint` (strict, safe unpickling) for command-line tools: every problem
    is one :class:`~grootvl.errors.UserError` line naming the file: it cannot be read, holds
    no weights, holds NaN weights, or does not fit ``model`` (naming the architecture it was
    saved from, when the file records it as training snapshots do, in ``arch``).

    With ``new_classifier``, a classifier whose keys or shapes do not fit ``model`` (e.g. a
    1000-class release fine-tuned on 10 classes) is dropped and ``model`` keeps its own freshly
    initialised one; every other key stays strict. Returns the dropped checkpoint keys.
    ``what`` names the file in messages (e.g. the option that gave it).
    """
    return fit_weights(model, read_checkpoint(path, what=what), f"{what} {path}", use_ema,
                       model_name, new_classifier)


def fit_weights(model: nn.Module, ckpt: Any, where: str, use_ema: bool = False,
                model_name: str = "the model", new_classifier: bool = False) -> list[str]:
    """:func:`load_weights` for a checkpoint already read (``ckpt``, the content of the file
    ``where`` names)."""
    arch = ckpt.get("arch") if isinstance(ckpt, Mapping) else None
    state, _ = state_dict_of(ckpt, use_ema, where)
    check_finite(state, where)
    dropped = unfitting_classifier_keys(model, state) if new_classifier else []
    try:
        load_checkpoint(model, state, reset_classifier=bool(dropped))
    except WeightsMismatch as exc:
        made_for = f" (it was saved from {arch})" if isinstance(arch, str) else ""
        raise UserError(f"{where} does not fit {model_name}{made_for}: "
                        f"{'; '.join(exc.problems)}; pick the matching --model (and number of "
                        "classes), or another checkpoint") from None
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

def _strip_wrappers(state: dict[str, Any], where: str) -> dict[str, Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, Tensor) or not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"{where}: its state dict holds non-tensor entries "
                              f"{_preview(bad)}; is this a state dict?")
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


def _mismatch_problems(model, state, missing, unexpected, mismatched, classifier) -> list[str]:
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint ({len(missing)}): {_preview(missing)}")
    if unexpected:
        problems.append(f"not in the model ({len(unexpected)}): {_preview(unexpected)}")
    if mismatched:
        shown = [f"{k}: checkpoint {a} vs model {b}" for k, a, b in mismatched]
        problems.append(f"shape mismatches ({len(mismatched)}): {_preview(shown, 4)}")
    head_only = all(k.startswith(classifier) for k in missing + unexpected + [k for k, _, _ in mismatched])
    if head_only:
        problems.append(f"only the classifier ({classifier}*) differs: pass reset_classifier=True "
                        "to keep the model's own classifier (e.g. for another number of classes)")
    else:
        found, wanted = describe_grootv(state), describe_grootv(model.state_dict())
        if found is None:
            problems.append("this is not a GrootV checkpoint (no patch_embed.conv2.weight)")
        elif found != wanted:
            problems.append(f"it is a checkpoint of another architecture: GrootV with {found}, "
                            f"but the model is GrootV with {wanted} (grootv_tiny: channels=80, "
                            "depths=(2, 2, 9, 2); grootv_small: 96, (2, 2, 13, 2); grootv_base: "
                            "128, (2, 2, 13, 2))")
    return problems
