"""The run config of every task: one schema, read from YAML, ``--set``, flags and snapshots.

Every key has its type, range, default and a description here; defaults are the GrootV-T
ImageNet-1K recipe (the packaged ``grootv_tiny`` config), the packaged ``maskrcnn_1x`` and
``upernet_ade`` configs set the detection and segmentation recipes. ``grootvl train
--print-config`` prints every key with its description.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                      field_validator)
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..engine.config import ConfigSection, build_config, config_from_dict
from ..engine.schema import EmaConfig, OptimConfig, SchedConfig, TrainConfig

__all__ = ["ImageChannels", "ImageSize", "MAX_IMAGE_SIZE", "MAX_WIDTH", "PACKAGED_CONFIGS",
           "RunConfig", "TASKS", "Width", "load_config", "config_from_snapshot"]

PACKAGED_CONFIGS = "grootvl.configs"
TASKS = ("classification", "detection", "segmentation")

# Upper bounds, so that no value (least of all one read back from a checkpoint) can make a
# process allocate without bound: image sides (pixels; ADE20K's training scale reaches
# 4096) and layer widths of the dense heads (channels; the recipes use 256-1024).
MAX_IMAGE_SIZE = 8192
MAX_WIDTH = 4096
ImageSize = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIZE)]
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
ImageChannels = Literal[1, 3]  # images are decoded as grey or RGB


class ModelConfig(ConfigSection):
    name: str = Field("grootv_tiny", description="timm model name (grootv_tiny, resnet50...); "
                      "detection/segmentation: the backbone, also tiny | small | base")
    drop_path_rate: float | None = Field(
        0.1, ge=0.0, lt=1.0, description="stochastic depth, rising linearly over the blocks; "
        "null: the model's default")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments for timm.create_model")
    init_checkpoint: str | None = Field(
        None, description="start from these weights (not a resume): the whole model for "
        "classification (a classifier of another size is re-initialised), the backbone for "
        "detection/segmentation (its classifier ignored)")


class DataConfig(ConfigSection):
    path: str | None = Field(None, description="data folder (classification: train/ and val/ "
                             "with one sub-folder per class; detection: COCO; segmentation: "
                             "ADE20K layout)")
    train_split: str = Field("train", description="training sub-folder / split name")
    val_split: str = Field("val", description="validation sub-folder / split name")
    img_size: ImageSize = Field(224, description=f"classification input size (at most "
                                f"{MAX_IMAGE_SIZE})")
    in_chans: ImageChannels = Field(3, description="image channels: 3 (RGB) or 1 (grey)")
    interpolation: Literal["bicubic", "bilinear", "nearest"] = Field("bicubic", description="resize")
    crop_pct: float = Field(0.875, gt=0.0, le=1.0,
                            description="eval: resize to img_size / crop_pct, centre crop img_size")
    mean: tuple[float, ...] = Field(tuple(IMAGENET_DEFAULT_MEAN), min_length=1,
                                    description="per-channel normalisation")
    std: tuple[PositiveFloat, ...] = Field(tuple(IMAGENET_DEFAULT_STD), min_length=1,
                                           description="per-channel normalisation")
    num_workers: NonNegativeInt = Field(8, description="data loader processes per process")
    pin_memory: bool = Field(True, description="page-locked batches (CUDA)")


class AugConfig(ConfigSection):
    auto_augment: str | None = Field("rand-m9-mstd0.5-inc1", description="RandAugment; null: off")
    color_jitter: NonNegativeFloat | None = Field(0.4, description="null or 0: off")
    scale: tuple[PositiveFloat, PositiveFloat] = Field(
        (0.08, 1.0), description="random resized crop area range (fractions of the image, "
        "smallest first)")
    hflip: float = Field(0.5, ge=0.0, le=1.0, description="horizontal flip probability")
    reprob: float = Field(0.25, ge=0.0, le=1.0, description="random erasing probability")
    remode: Literal["pixel", "rand", "const"] = Field("pixel", description="random erasing fill")
    recount: PositiveInt = Field(1, description="random erasing count")
    mixup: NonNegativeFloat = Field(0.8, description="mixup alpha (0: off)")
    cutmix: NonNegativeFloat = Field(1.0, description="cutmix alpha (0: off)")
    mixup_prob: float = Field(1.0, ge=0.0, le=1.0, description="chance a batch is mixed")
    mixup_switch_prob: float = Field(0.5, ge=0.0, le=1.0, description="cutmix instead of mixup")
    mixup_mode: Literal["batch", "pair", "elem"] = Field("batch", description="timm Mixup mode")
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0, description="0: off")

    @field_validator("auto_augment")
    @classmethod
    def _timm_policy(cls, spec: str | None) -> str | None:
        if spec is not None:
            check_auto_augment(spec)
        return spec

    @field_validator("scale")
    @classmethod
    def _area_range(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if not scale[0] <= scale[1] <= 1.0:
            raise ValueError("must be [smallest, largest] area fraction with 0 < smallest <= "
                             "largest <= 1, e.g. [0.08, 1.0]")
        return scale


# keys of timm's auto-augment specs ("rand-m9-mstd0.5-inc1"): POLICY-KEYvalue-KEYvalue...
_AUGMENT_KEYS = {"rand": ("mstd", "mmax", "inc", "m", "n", "p"),
                 "augmix": ("mstd", "m", "w", "d", "a", "b")}
_AUTO_POLICIES = ("original", "originalr", "v0", "v0r", "3a")


def check_auto_augment(spec: str) -> None:
    """A ValueError unless timm reads ``spec`` as an auto-augment policy; timm itself skips
    a section it does not understand (``rand-bogus`` would be plain RandAugment)."""
    policy, *sections = spec.split("-")
    keys = _AUGMENT_KEYS.get(policy, ("mstd",) if policy in _AUTO_POLICIES else None)
    if keys is None:
        raise ValueError(f"unknown policy {policy!r}: use rand-..., augmix-..., "
                         f"{', '.join(_AUTO_POLICIES)} (timm's auto_augment), or null")
    for section in sections:
        if policy == "rand" and section.startswith("t"):
            continue  # rand-tNAME: a transform list
        match = re.fullmatch(r"([a-z]+)(\d[\d.]*)", section)
        if not match or match[1] not in keys:
            raise ValueError(f"{section!r} is not a {policy} setting (KEY then a number, KEY one "
                             f"of {', '.join(keys)}), e.g. rand-m9-mstd0.5-inc1")


class DetectionConfig(ConfigSection):
    train_images: str | None = Field(None, description="null: DATA/train_split")
    train_ann: str | None = Field(
        None, description="null: DATA/annotations/instances_<train_split>.json")
    val_images: str | None = Field(None, description="null: DATA/val_split")
    val_ann: str | None = Field(None, description="null: DATA/annotations/instances_<val_split>.json")
    fpn_channels: Width = Field(256, description="FPN width")
    box_head_dim: Width = Field(1024, description="box head fully connected width")
    mask_head_channels: Width = Field(256, description="mask head convolution width")
    min_size: ImageSize = Field(800, description="shorter image side")
    max_size: ImageSize = Field(1333, description="longer image side at most")
    detector_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra torchvision MaskRCNN arguments")
    eval_batch_size: PositiveInt = Field(1, description="images per evaluation batch")

    @field_validator("detector_kwargs")
    @classmethod
    def _maskrcnn_arguments(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        if kwargs:
            import difflib

            from ..models.dense import detector_argument_names

            known = detector_argument_names()
            for key in kwargs:
                if key not in known:
                    close = difflib.get_close_matches(key, sorted(known), n=3)
                    raise ValueError(f"torchvision's MaskRCNN takes no argument {key!r}"
                                     + (f"; did you mean {' or '.join(close)}?" if close else ""))
        return kwargs


class SegmentationConfig(ConfigSection):
    num_classes: int = Field(150, ge=1, le=65535,
                             description="K: labels 1..K (0 = other, ignored)")
    crop_size: ImageSize = Field(512, description="training crop side")
    scale: tuple[ImageSize, ImageSize] = Field(
        (2048, 512), description="base image scale (long side, short side)")
    decoder_channels: Width = Field(512, description="UperNet width")


class RunConfig(ConfigSection):
    """Everything a run needs; sections the task does not use are ignored."""

    task: Literal[TASKS] = Field("classification", description=" | ".join(TASKS))
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    aug: AugConfig = Field(default_factory=AugConfig, description="classification only")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    sched: SchedConfig = Field(default_factory=SchedConfig)
    ema: EmaConfig = Field(default_factory=EmaConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    detection: DetectionConfig = Field(default_factory=DetectionConfig,
                                       description="detection only")
    segmentation: SegmentationConfig = Field(default_factory=SegmentationConfig,
                                             description="segmentation only")


def load_config(config: str | None = None, overrides=(), flags=None, base=None,
                base_origin: str = "") -> RunConfig:
    """A :class:`RunConfig`: schema defaults <- ``base`` <- ``config`` (a packaged name such
    as ``grootv_tiny`` or a YAML path) <- ``overrides`` (``"KEY=VALUE"``) <- ``flags``
    (``{dotted key: (value or None, flag name)}``). See :func:`grootvl.engine.build_config`."""
    return build_config(RunConfig, config, overrides, flags, package=PACKAGED_CONFIGS,
                        base=base, base_origin=base_origin)


def config_from_snapshot(snapshot: dict, path) -> RunConfig:
    """The config a snapshot was trained with, validated (``{}`` if it has none: defaults)."""
    return config_from_dict(RunConfig, snapshot.get("config") or {}, f"checkpoint {path}")
