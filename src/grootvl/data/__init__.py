"""Data sets: validated image folders, COCO instances and ADE20K-format segmentation, and the
generators of the small data sets the demos and tests use (no download anywhere).

Nothing here knows the training engine: every loader, sampler and device move is the
engine's (``grootvl.engine.sampling``) or a task's job.
"""
from .ade import IGNORE_INDEX, ADESegmentation
from .coco import CocoInstances, collate_detection, load_coco_json
from .digits import prepare_digits_folder
from .folder import IMAGE_EXTENSIONS, ImageFolderDataset, find_classes
from .synthetic import SHAPE_NAMES, make_ade_shapes, make_coco_shapes
from .transforms import build_transform

__all__ = [
    "ADESegmentation",
    "CocoInstances",
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "SHAPE_NAMES",
    "build_transform",
    "collate_detection",
    "find_classes",
    "load_coco_json",
    "make_ade_shapes",
    "make_coco_shapes",
    "prepare_digits_folder",
]
