"""Layer-wise learning-rate decay and weight-decay exclusions for a GrootV backbone.

Same rule as the original GrootV ``lr_decay_keywards``: blocks are counted from the last one
(index 0) to the first, and block ``i`` gets ``layer_decay ** i`` of the base learning rate;
the stem gets the ratio of the very first block; the downsampling layer and norm that end
stage ``s`` get the ratio of the first block of stage ``s + 1``. Parameters outside the
backbone (FPN, heads, decoders) get the full learning rate.
"""
from __future__ import annotations

import re

import torch.nn as nn

__all__ = ["param_groups_lrd", "backbone_layer_ratios", "no_weight_decay"]

_BLOCK = re.compile(r"(?:^|\.)(?:levels|stages|layers)[._](\d+)\.blocks\.(\d+)\.")
_STAGE_END = re.compile(r"(?:^|\.)(?:levels|stages|layers)[._](\d+)\.(?:downsample|norm)\b")
_STEM = re.compile(r"(?:^|\.)(?:patch_embed|stem)\b")
_NO_DECAY_NAMES = ("A_logs", "A_log", "Ds", "D")


def no_weight_decay(name: str, param) -> bool:
    """Biases, normalisation weights (all 1-D tensors) and the SSM's A_logs / Ds."""
    return param.ndim <= 1 or name.endswith(".bias") or name.rsplit(".", 1)[-1] in _NO_DECAY_NAMES


def backbone_layer_ratios(names: list[str], layer_decay: float) -> dict[str, float]:
    """Learning-rate ratio of each backbone parameter name (names relative to the backbone).

    Names that fit no pattern (e.g. output norms added for dense prediction) get ratio 1.
    """
    blocks = [(m.group(1), m.group(2)) for m in map(_BLOCK.search, names) if m]
    depths: dict[int, int] = {}
    for stage, block in blocks:
        depths[int(stage)] = max(depths.get(int(stage), 0), int(block) + 1)
    stages = sorted(depths)

    def from_last(stage: int, block: int) -> int:
        later = sum(depths[s] for s in stages if s > stage)
        return later + depths[stage] - 1 - block

    first_stage = stages[0] if stages else 0
    ratios = {}
    for name in names:
        block = _BLOCK.search(name)
        end = _STAGE_END.search(name)
        if block:
            depth = from_last(int(block.group(1)), int(block.group(2)))
        elif end and int(end.group(1)) + 1 in depths:
            depth = from_last(int(end.group(1)) + 1, 0)
        elif _STEM.search(name) and depths:
            depth = from_last(first_stage, 0)
        else:
            depth = 0
        ratios[name] = layer_decay ** depth
    return ratios


def param_groups_lrd(model: nn.Module, base_lr: float, weight_decay: float,
                     layer_decay: float = 1.0, backbone_prefix: str | None = None) -> list[dict]:
    """Optimizer parameter groups with layer-wise lr decay on the backbone.

    Args:
        model: the detector/segmenter (a DDP wrapper is fine).
        base_lr: learning rate of the heads and of the last backbone block.
        weight_decay: applied to weights, not to biases, norms, ``A_logs`` or ``Ds``.
        layer_decay: per-block lr factor (1.0 turns the decay off; the original uses 0.87).
        backbone_prefix: parameter-name prefix of the backbone; default
            ``model.backbone_prefix`` (set by the builders).

    Returns:
        groups with ``params``, ``lr``, ``lr_scale`` (ratio to ``base_lr``, for schedulers),
        ``weight_decay`` and a readable ``name``; frozen parameters are left out.
    """
    module = getattr(model, "module", model)
    prefix = backbone_prefix if backbone_prefix is not None else getattr(
        module, "backbone_prefix", None)
    if prefix is None:
        raise ValueError("param_groups_lrd: pass backbone_prefix (the name prefix of the "
                         "backbone's parameters) for a model not built by grootvl.dense")
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    backbone_names = [n[len(prefix):] for n, _ in named if n.startswith(prefix)]
    ratios = backbone_layer_ratios(backbone_names, layer_decay)
    groups: dict[tuple[float, bool], dict] = {}
    for name, param in named:
        ratio = ratios[name[len(prefix):]] if name.startswith(prefix) else 1.0
        decay = not no_weight_decay(name, param)
        key = (ratio, decay)
        if key not in groups:
            groups[key] = {"params": [], "lr": base_lr * ratio, "lr_scale": ratio,
                           "weight_decay": weight_decay if decay else 0.0,
                           "name": f"lr_x{ratio:.4g}_{'decay' if decay else 'no_decay'}",
                           "param_names": []}
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return sorted(groups.values(), key=lambda g: (g["lr_scale"], g["weight_decay"]))
