"""The options of the commands that do not train, as schemas of the same machinery as the run
config (``grootvl.engine.config``; the image sizes and channels are the run config's own
types), checked by each parser's ``validate`` hook (:func:`.common.options_validator`).

Field names are the argparse destinations; floats must be finite and a boolean is no number
(:class:`~grootvl.engine.config.ConfigSection`). Imported only when a command runs.
"""
from __future__ import annotations

from pydantic import (Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                      field_validator)

from ..engine.config import ConfigSection
from ..tasks.config import ImageChannels, ImageSize

# a classifier wider than this is no model anyone trains (ImageNet-21k: 21843 classes)
MAX_CLASSES = 1_000_000
# tokens per example: far beyond the context any Mamba checkpoint is trained with
MAX_TOKENS = 1_048_576


class ModelOptions(ConfigSection):
    """``--num-classes`` and ``--in-chans`` of the commands that build a model by name."""

    num_classes: int = Field(ge=0, le=MAX_CLASSES)
    in_chans: ImageChannels


class VisualizeOptions(ModelOptions):
    img_size: ImageSize
    stage: NonNegativeInt
    block: NonNegativeInt
    pixel: tuple[float, float] | None = None

    @field_validator("pixel")
    @classmethod
    def _fractions(cls, pixel):
        if pixel is not None and not all(0.0 <= f <= 1.0 for f in pixel):
            raise ValueError("give the row and column as fractions of height and width in [0, 1]")
        return pixel


class BenchmarkOptions(ModelOptions):
    batch_size: PositiveInt
    img_size: ImageSize
    warmup: NonNegativeInt
    iters: PositiveInt


class FlopsOptions(ModelOptions):
    img_size: ImageSize


class FinetuneOptions(ConfigSection):
    """``grootvl lm-finetune`` (Trainer flags after ``--`` are Hugging Face's to check)."""

    tree_scale: NonNegativeFloat
    max_length: int = Field(ge=1, le=MAX_TOKENS)
    lr: PositiveFloat
    warmup_steps: NonNegativeInt
    epochs: PositiveFloat
    batch_size: PositiveInt
    grad_accum: PositiveInt
    lora_r: PositiveInt
    lora_alpha: PositiveInt


class MergeOptions(ConfigSection):
    """``grootvl lm-merge`` (``tree_scale`` None: the adapter's own)."""

    tree_scale: NonNegativeFloat | None = None


class LmDemoOptions(ConfigSection):
    """``grootvl lm-demo`` (None: the demo's defaults)."""

    pretrain_steps: NonNegativeInt | None = None
    finetune_steps: PositiveInt | None = None
    tree_scale: NonNegativeFloat | None = None
    seed: NonNegativeInt
