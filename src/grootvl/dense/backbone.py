"""GrootV (or any timm model) as a four-level feature pyramid, and an FPN on top of it.

The pyramid is a timm ``features_only`` model: GrootV registers with timm on
``import grootvl``, so ``grootv_tiny`` etc. are created exactly like a timm backbone, with
``drop_path_rate`` and other constructor arguments passed through.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import timm
import torch
import torch.nn as nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .errors import DenseInputError

__all__ = ["VARIANTS", "resolve_variant", "TimmPyramid", "FPNBackbone", "load_backbone_weights"]

VARIANTS = {"tiny": "grootv_tiny", "small": "grootv_small", "base": "grootv_base",
            "t": "grootv_tiny", "s": "grootv_small", "b": "grootv_base"}
PYRAMID_STRIDES = (4, 8, 16, 32)


def resolve_variant(variant: str) -> str:
    """``"tiny"``/``"t"``/``"grootv_tiny"`` -> ``"grootv_tiny"``; other timm names unchanged."""
    import grootvl.models  # noqa: F401  (registers grootv_* with timm)

    name = VARIANTS.get(variant.lower(), variant)
    if not timm.is_model(name):
        raise DenseInputError(
            f"unknown backbone variant {variant!r}: use tiny, small or base (or grootv_tiny, "
            "grootv_small, grootv_base, or the name of a timm model with feature maps)")
    return name


def _pyramid_indices(name: str) -> tuple[int, ...]:
    """Indices of the features at strides 4, 8, 16, 32 of timm model ``name``."""
    try:
        with torch.device("meta"):  # cheap: no memory, no init
            probe = timm.create_model(name, features_only=True)
    except Exception:
        probe = timm.create_model(name, features_only=True)
    reductions = list(probe.feature_info.reduction())
    if not all(s in reductions for s in PYRAMID_STRIDES):
        raise DenseInputError(f"backbone {name} has feature strides {reductions}; a feature "
                              f"pyramid needs strides {list(PYRAMID_STRIDES)}")
    return tuple(reductions.index(s) for s in PYRAMID_STRIDES)


class TimmPyramid(nn.Module):
    """Feature maps at strides 4, 8, 16, 32 (NCHW) of timm model ``name``.

    Args:
        name: a timm model name (``grootv_tiny`` ...), see :func:`resolve_variant`.
        **timm_kwargs: passed to ``timm.create_model`` (``drop_path_rate``, ``depths``...).
    """

    def __init__(self, name: str, **timm_kwargs):
        super().__init__()
        out_indices = (0, 1, 2, 3) if name.startswith("grootv_") else _pyramid_indices(name)
        self.name = name
        self.body = timm.create_model(name, features_only=True, out_indices=out_indices,
                                      **timm_kwargs)
        self.channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        self.channels_last = getattr(self.body, "output_fmt", "NCHW") == "NHWC"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.body(x)
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return list(features)


class FPNBackbone(nn.Module):
    """Pyramid + FPN: an OrderedDict of maps '0'..'3' (strides 4..32) and 'pool' (64).

    This is the backbone interface torchvision's detectors expect (``out_channels``).
    """

    def __init__(self, pyramid: TimmPyramid, out_channels: int = 256):
        super().__init__()
        self.body = pyramid
        self.fpn = FeaturePyramidNetwork(pyramid.channels, out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def _normalised_key(key: str) -> str:
    # timm's feature wrappers rename modules ("levels.0" -> "levels_0") or nest them under
    # "model."; comparing keys with '.' and '_' unified matches them to the original names.
    if key.startswith("model."):
        key = key[len("model."):]
    return key.replace("_", ".")


def load_backbone_weights(backbone: nn.Module, name: str, path, timm_kwargs=None,
                          argument: str = "pretrained_backbone") -> dict:
    """Loads a classification checkpoint of timm model ``name`` into ``backbone``.

    ``backbone`` is the timm ``features_only`` model (``TimmPyramid.body`` or smp's
    ``encoder.model``). The checkpoint is first loaded into the full classifier (GrootV
    checkpoints in the original release format go through :func:`grootvl.load_checkpoint`),
    then copied over by parameter name; the classifier head is left out.

    Returns ``{"loaded": n, "skipped": [classifier keys not used]}``. Raises DenseInputError
    if the file is missing or a backbone parameter has no counterpart in the checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise DenseInputError(f"{argument} {path}: no such file; pass the path of a GrootV "
                              "ImageNet classification checkpoint (.pth)")
    full = timm.create_model(name, **(timm_kwargs or {}))
    try:
        if name.startswith("grootv_"):
            import grootvl

            # the classifier may have any number of classes: only the trunk is used
            grootvl.load_checkpoint(full, path, reset_classifier=True)
        else:
            timm.models.load_checkpoint(full, str(path), strict=False)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise DenseInputError(f"{argument} {path} does not fit backbone {name}: {exc}. Pass a "
                              f"checkpoint of the same variant (and backbone options)") from None
    source = {_normalised_key(k): v for k, v in full.state_dict().items()}
    target = backbone.state_dict()
    missing = [k for k in target if _normalised_key(k) not in source]
    if missing:
        raise DenseInputError(
            f"{argument} {path}: the checkpoint has no weights for {len(missing)} backbone "
            f"tensors (e.g. {missing[0]}); was it saved from a different variant than {name}?")
    state = {k: source[_normalised_key(k)] for k in target}
    backbone.load_state_dict(state, strict=True)
    used = {_normalised_key(k) for k in target}
    return {"loaded": len(state), "skipped": sorted(k for k in source if k not in used)}
