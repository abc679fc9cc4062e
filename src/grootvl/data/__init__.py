"""Datasets for the command-line tools: validated image folders, the digits demo data and the
Pathfinder long-range task."""
from .digits import prepare_digits_folder
from .folder import IMAGE_EXTENSIONS, ImageFolderDataset, ShardSampler, find_classes
from .pathfinder import pathfinder, write_pathfinder_folder
from .transforms import build_transform

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "ShardSampler",
    "build_transform",
    "find_classes",
    "pathfinder",
    "prepare_digits_folder",
    "write_pathfinder_folder",
]
