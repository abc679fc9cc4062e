"""GrootV Mask R-CNN (torchvision) and GrootV UperNet (segmentation-models-pytorch)."""
from __future__ import annotations

import torch.nn as nn

from .backbone import FPNBackbone, TimmPyramid, load_backbone_weights, resolve_variant

__all__ = ["maskrcnn_grootv", "upernet_grootv"]


def _timm_kwargs(drop_path_rate, backbone_kwargs) -> dict:
    kwargs = dict(backbone_kwargs or {})
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    return kwargs


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
        backbone's parameters for :func:`param_groups_lrd`.
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    name = resolve_variant(variant)
    timm_kwargs = _timm_kwargs(drop_path_rate, backbone_kwargs)
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
    model.backbone_prefix = "backbone.body.body."
    model.backbone_name = name
    return model


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
        be multiples of 32. ``model.backbone_prefix`` is set for :func:`param_groups_lrd`.
    """
    import segmentation_models_pytorch as smp

    name = resolve_variant(variant)
    timm_kwargs = _timm_kwargs(drop_path_rate, backbone_kwargs)
    model = smp.UPerNet(encoder_name=f"tu-{name}", encoder_weights=None, classes=num_classes,
                        decoder_channels=decoder_channels, **timm_kwargs)
    if pretrained_backbone is not None:
        load_backbone_weights(model.encoder.model, name, pretrained_backbone, timm_kwargs)
    model.backbone_prefix = "encoder.model."
    model.backbone_name = name
    return model
