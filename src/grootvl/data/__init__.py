"""Datasets for the command-line tools: validated image folders and the digits demo data."""
from .digits import prepare_digits_folder
from .folder import IMAGE_EXTENSIONS, ImageFolderDataset, ShardSampler, find_classes
from .transforms import build_transform

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "ShardSampler",
    "build_transform",
    "find_classes",
    "prepare_digits_folder",
]
