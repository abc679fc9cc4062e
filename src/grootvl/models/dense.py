"""Dense-prediction models on a GrootV feature pyramid: Mask R-CNN and UperNet.

The detectors and decoders come from maintained frameworks (torchvision's Mask R-CNN with an
FPN, segmentation-models-pytorch's UperNet); this module supplies the pyramid (the four stage
outputs of a timm ``features_only`` model, strides 4 to 32), loading of an ImageNet
classification checkpoint into it, and the two hooks timm's optimizer factory reads
(``no_weight_decay`` and ``group_matcher``), forwarded from the backbone, so that weight-decay
exclusions and layer-wise learning-rate decay are the backbone's own rules (see
``GrootV.group_matcher``); the heads train at the full learning rate.
"""
from __future__ import annotations

import types
from collections import OrderedDict

import timm
import torch
import torch.nn as nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..errors import UserError
from .factory import check_model_options, resolve_variant
from ..files import check_finite, read_checkpoint
from .weights import WeightsMismatch, load_checkpoint, state_dict_of

__all__ = ["FPNBackbone", "TimmPyramid", "detector_argument_names", "load_backbone_weights",
           "maskrcnn_grootv", "upernet_grootv"]

PYRAMID_STRIDES = (4, 8, 16, 32)


def _pyramid_indices(name: str) -> tuple[int, ...]:
    """Indices of the features at strides 4, 8, 16, 32 of timm model ``name``."""
    try:
        with torch.device("meta"):  # cheap: no memory, no init
            probe = timm.create_model(name, features_only=True)
    except Exception:
        probe = timm.create_model(name, features_only=True)
    reductions = list(probe.feature_info.reduction())
    if not all(s in reductions for s in PYRAMID_STRIDES):
        raise UserError(f"backbone {name} has feature strides {reductions}; a feature "
                        f"pyramid needs strides {list(PYRAMID_STRIDES)}")
    return tuple(reductions.index(s) for s in PYRAMID_STRIDES)


class TimmPyramid(nn.Module):
    """Feature maps at strides 4, 8, 16, 32 (NCHW) of timm model ``name``.

    Args:
        name: a timm model name (``grootv_tiny`` ...), see :func:`~.factory.resolve_variant`.
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
    checkpoints in the original release format go through :func:`~.weights.load_checkpoint`),
    then copied over by parameter name; the classifier head is left out.

    Returns ``{"loaded": n, "skipped": [classifier keys not used]}``. Raises UserError if the
    file cannot be read, holds NaN weights, or a backbone parameter has no counterpart in it.
    """
    where = f"{argument} {path}"
    state, _ = state_dict_of(read_checkpoint(path, what=argument), where=where)
    check_finite(state, where)
    full = timm.create_model(name, **(timm_kwargs or {}))
    # the classifier may have any number of classes (or be absent): only the trunk is used
    try:
        load_checkpoint(full, state, reset_classifier=True, strict=name.startswith("grootv_"))
    except WeightsMismatch as exc:
        raise UserError(f"{where} does not fit backbone {name}: {'; '.join(exc.problems)}; pass "
                        "a checkpoint of the same variant (and backbone options)") from None
    source = {_normalised_key(k): v for k, v in full.state_dict().items()}
    target = backbone.state_dict()
    missing = [k for k in target if _normalised_key(k) not in source]
    if missing:
        raise UserError(
            f"{argument} {path}: the checkpoint has no weights for {len(missing)} backbone "
            f"tensors (e.g. {missing[0]}); was it saved from a different variant than {name}?")
    state = {k: source[_normalised_key(k)] for k in target}
    backbone.load_state_dict(state, strict=True)
    used = {_normalised_key(k) for k in target}
    return {"loaded": len(state), "skipped": sorted(k for k in source if k not in used)}


# ------------------------------------------------------------- optimizer hooks of the backbone

def _grouped_body(model: nn.Module) -> tuple[str, nn.Module | None]:
    """(full name prefix, module) of the timm model inside ``model`` that defines
    ``group_matcher``: the model a features-only wrapper holds, or the wrapper itself."""
    body = model.get_submodule(model.backbone_prefix.rstrip("."))
    inner = getattr(body, "model", None)
    if isinstance(inner, nn.Module) and hasattr(inner, "group_matcher"):
        return model.backbone_prefix + "model.", inner
    return model.backbone_prefix, body if hasattr(body, "group_matcher") else None


def _no_weight_decay(self) -> set[str]:
    """The backbone's ``no_weight_decay()`` names, under their names in the whole model."""
    prefix, body = _grouped_body(self)
    names = body.no_weight_decay() if hasattr(body, "no_weight_decay") else ()
    return {prefix + n for n in names}


def _group_matcher(self, coarse: bool = False):
    """Layer id of each parameter for timm's layer-wise lr decay: the backbone's own grouping;
    everything outside the backbone (FPN, heads, decoder) joins the backbone's last layer,
    so it trains at the full learning rate."""
    from timm.models import group_parameters

    prefix, body = _grouped_body(self)
    layer_of = group_parameters(body, body.group_matcher(coarse), reverse=True) if body else {}
    last = max(layer_of.values(), default=0)

    def layer(name: str) -> int:
        return layer_of.get(name[len(prefix):], last) if name.startswith(prefix) else last

    return layer


def _expose_backbone_hooks(model: nn.Module, prefix: str, name: str) -> nn.Module:
    """Set ``backbone_prefix``/``backbone_name`` and bind the two optimizer hooks to ``model``
    (torchvision's and smp's classes are used as they are; ``copy.deepcopy``, e.g. for an
    EMA copy, rebinds the methods to the copy)."""
    model.backbone_prefix = prefix
    model.backbone_name = name
    model.no_weight_decay = types.MethodType(_no_weight_decay, model)
    model.group_matcher = types.MethodType(_group_matcher, model)
    return model


# ------------------------------------------------------------------------------ the models

def _timm_kwargs(name: str, drop_path_rate, backbone_kwargs) -> dict:
    """The backbone's ``timm.create_model`` options, checked before anything is built."""
    kwargs = dict(backbone_kwargs or {})
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    if kwargs:
        check_model_options(name, kwargs, "the backbone options: --backbone-kwargs / "
                            "model.kwargs, --drop-path")
    return kwargs


def detector_argument_names() -> set[str]:
    """The keyword arguments torchvision's ``MaskRCNN`` accepts besides those
    :func:`maskrcnn_grootv` sets itself (it passes unknown ones on, silently ignored)."""
    import inspect

    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.faster_rcnn import FasterRCNN
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    names = set()
    for cls in (MaskRCNN, FasterRCNN, GeneralizedRCNNTransform):
        names |= {n for n, p in inspect.signature(cls.__init__).parameters.items()
                  if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return names - {"self", "backbone", "num_classes", "box_head", "box_predictor", "mask_head",
                    "mask_predictor"}
def maskrcnn_grootv(variant: str = "tiny", num_classes: int = 80, pretrained_backbone=None,
                    drop_path_rate: float | None = None, fpn_channels: int = 256,
                    box_head_dim: int = 1024, mask_head_channels: int = 256,
                    backbone_kwargs: dict | None = None, **maskrcnn_kwargs) -> nn.Module:
    """Mask R-CNN with a GrootV feature pyramid and an FPN (torchvision's detector).

    The four GrootV stage outputs (strides 4-32) feed a ``FeaturePyramidNetwork`` with an
    extra max-pooled level, as in the paper's Mask R-CNN set-up.

    Args:
        variant: ``tiny`` / ``small`` / ``base`` (or a ``grootv_*`` or other timm name).
        num_classes: number of object categories, *without* background (80 for COCO);
            labels 1..num_classes, 0 is background.
        pretrained_backbone: path of a GrootV ImageNet classification checkpoint (original
            release format or ours); the classifier head is ignored.
        drop_path_rate: stochastic depth of the backbone (None: the variant's default).
        fpn_channels: FPN width (256 in the paper's set-up).
        box_head_dim: width of the box head's two fully connected layers (1024).
        mask_head_channels: width of the mask head's four convolutions (256).
        backbone_kwargs: extra ``timm.create_model`` arguments (e.g. reduced ``depths``).
        **maskrcnn_kwargs: passed to ``torchvision.models.detection.MaskRCNN``
            (``min_size`` 800 and ``max_size`` 1333 by default, ``box_detections_per_img``...).

    Returns:
        the model; ``model(images)`` gives detections in eval mode and a loss dict in
        train mode (``model(images, targets)``). ``model.backbone_prefix`` names the
        backbone's parameters; ``no_weight_decay()`` and ``group_matcher()`` are the
        backbone's, for timm's optimizer factory.
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    name = resolve_variant(variant)
    unknown = sorted(set(maskrcnn_kwargs) - detector_argument_names())
    if unknown:
        raise UserError(f"MaskRCNN takes no argument {', '.join(map(repr, unknown))} "
                        "(detection.detector_kwargs / --detector-kwargs); see "
                        "torchvision.models.detection.MaskRCNN")
    timm_kwargs = _timm_kwargs(name, drop_path_rate, backbone_kwargs)
    pyramid = TimmPyramid(name, **timm_kwargs)
    if pretrained_backbone is not None:
        load_backbone_weights(pyramid.body, name, pretrained_backbone, timm_kwargs)
    classes = num_classes + 1  # torchvision counts the background as class 0
    heads = {
        "box_head": TwoMLPHead(fpn_channels * 7 * 7, box_head_dim),  # 7x7 RoIAlign output
        "box_predictor": FastRCNNPredictor(box_head_dim, classes),
        "mask_head": MaskRCNNHeads(fpn_channels, [mask_head_channels] * 4, 1),
        "mask_predictor": MaskRCNNPredictor(mask_head_channels, mask_head_channels, classes),
    }
    model = MaskRCNN(FPNBackbone(pyramid, fpn_channels), **{**heads, **maskrcnn_kwargs})
    return _expose_backbone_hooks(model, "backbone.body.body.", name)


def upernet_grootv(variant: str = "tiny", num_classes: int = 150, pretrained_backbone=None,
                   drop_path_rate: float | None = None, decoder_channels: int = 512,
                   backbone_kwargs: dict | None = None) -> nn.Module:
    """UperNet (PPM + FPN fuse, segmentation-models-pytorch) on a GrootV feature pyramid.

    The backbone is smp's timm-universal encoder ``tu-grootv_*`` (the four stage outputs at
    strides 4-32); the decoder normalises each level, applies the pyramid pooling module to
    the last and fuses all levels at stride 4; logits are upsampled to the input size.

    Args:
        variant, pretrained_backbone, drop_path_rate, backbone_kwargs: as in
            :func:`maskrcnn_grootv`.
        num_classes: number of classes scored (150 for ADE20K; label 0 "other" is ignored).
        decoder_channels: UperNet width (512 in the usual ADE20K set-up).

    Returns:
        the model; ``model(images)`` gives logits ``(B, num_classes, H, W)``; H and W must
        be multiples of 32. ``backbone_prefix`` and the optimizer hooks as in
        :func:`maskrcnn_grootv`.
    """
    import segmentation_models_pytorch as smp

    name = resolve_variant(variant)
    timm_kwargs = _timm_kwargs(name, drop_path_rate, backbone_kwargs)
    model = smp.UPerNet(encoder_name=f"tu-{name}", encoder_weights=None, classes=num_classes,
                        decoder_channels=decoder_channels, **timm_kwargs)
    if pretrained_backbone is not None:
        load_backbone_weights(model.encoder.model, name, pretrained_backbone, timm_kwargs)
    return _expose_backbone_hooks(model, "encoder.model.", name)
