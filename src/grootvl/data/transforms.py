"""timm train/eval transforms built from the ``data`` and ``aug`` config sections
(``grootvl.tasks.config``: any objects with those attributes will do)."""
from __future__ import annotations

from PIL import Image
from timm.data import auto_augment, create_transform


def _none_if_off(value):
    return None if value in (None, "", "none", False) else value


def build_transform(data, aug, is_training: bool):
    """RandAugment, colour jitter, random resized crop, flip and random erasing for training;
    resize + centre crop (``crop_pct``) for evaluation; both normalise with mean/std."""
    common = dict(
        input_size=(data.in_chans, data.img_size, data.img_size),
        interpolation=data.interpolation,
        mean=tuple(data.mean),
        std=tuple(data.std),
        crop_pct=data.crop_pct,
    )
    if not is_training:
        return create_transform(is_training=False, **common)
    transform = create_transform(
        is_training=True,
        scale=tuple(aug.scale),
        hflip=aug.hflip,
        color_jitter=aug.color_jitter or 0.0,
        auto_augment=_none_if_off(aug.auto_augment),
        re_prob=aug.reprob,
        re_mode=aug.remode,
        re_count=aug.recount,
        **common,
    )
    _guard_posterize(transform)
    return transform


def posterize_keep_zero_bits(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize, also for 0 bits.

    RandAugment's ``PosterizeIncreasing`` asks for 0 bits when the sampled magnitude reaches
    10 (with rand-m9-mstd0.5 about 2% of the time). Pillow < 13 returned a black image; Pillow
    13 raises ValueError, which would kill an ImageNet run after a few hundred images. Keep the
    old (and timm-intended) result.
    """
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


def _guard_posterize(transform) -> None:
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):  # RandAugment / AutoAugment ops
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = posterize_keep_zero_bits
