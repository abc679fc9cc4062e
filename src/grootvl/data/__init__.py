"""Data sets: validated image folders, COCO instances and ADE20K-format segmentation, the
generators of the small data sets the demos and tests use, and classification sets generated
in memory (no download anywhere), among them the Pathfinder long-range task.

Nothing here knows the training engine: every loader, sampler and device move is the
engine's (``grootvl.engine.sampling``) or a task's job.
"""
from .ade import IGNORE_INDEX, ADESegmentation
from .coco import CocoInstances, collate_detection, load_coco_json
from .digits import digits_arrays, prepare_digits_folder
from .folder import IMAGE_EXTENSIONS, ImageFolderDataset, find_classes
from .generated import GENERATED, ArrayImageDataset, check_generated, generated_datasets
from .pathfinder import pathfinder, write_pathfinder_folder
from .synthetic import SHAPE_NAMES, make_ade_shapes, make_coco_shapes
from .transforms import build_transform

__all__ = [
    "ADESegmentation",
    "ArrayImageDataset",
    "CocoInstances",
    "GENERATED",
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "SHAPE_NAMES",
    "build_transform",
    "check_generated",
    "collate_detection",
    "digits_arrays",
    "find_classes",
    "generated_datasets",
    "load_coco_json",
    "make_ade_shapes",
    "make_coco_shapes",
    "pathfinder",
    "prepare_digits_folder",
    "write_pathfinder_folder",
]
