"""Dense prediction with GrootV feature pyramids: Mask R-CNN (COCO) and UperNet (ADE20K).

The detectors and decoders come from maintained frameworks (torchvision's Mask R-CNN with
an FPN, segmentation-models-pytorch's UperNet); this package supplies the GrootV feature
pyramid, checkpoint loading, layer-wise lr decay, COCO/ADE20K-format data, metrics and the
training / evaluation loops behind ``grootvl det-train|det-eval|seg-train|seg-eval``.

Public API:

* :func:`maskrcnn_grootv`, :func:`upernet_grootv` -- model builders
* :func:`param_groups_lrd` -- optimizer groups with layer-wise lr decay
* :class:`CocoInstances`, :class:`ADESegmentation` -- data sets in the real formats
* :func:`make_coco_shapes`, :func:`make_ade_shapes` -- small synthetic data sets
* :func:`coco_evaluate`, :class:`SegmentationConfusion` -- COCO AP, mIoU
* :class:`DenseInputError` -- bad input (a :class:`grootvl.engine.UserError`)
"""
from .ade import ADESegmentation
from .backbone import FPNBackbone, TimmPyramid, load_backbone_weights
from .builders import maskrcnn_grootv, upernet_grootv
from .coco import CocoInstances, load_coco_json
from .errors import DenseInputError
from .lr_decay import param_groups_lrd
from .metrics import SegmentationConfusion, coco_evaluate, detections_to_coco
from .synthetic import make_ade_shapes, make_coco_shapes

__all__ = [
    "ADESegmentation",
    "CocoInstances",
    "DenseInputError",
    "FPNBackbone",
    "SegmentationConfusion",
    "TimmPyramid",
    "coco_evaluate",
    "detections_to_coco",
    "load_backbone_weights",
    "load_coco_json",
    "make_ade_shapes",
    "make_coco_shapes",
    "maskrcnn_grootv",
    "param_groups_lrd",
    "upernet_grootv",
]
