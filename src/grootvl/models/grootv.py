"""GrootV backbones (docs/design.md, "GrootV") and their timm registration.

Module and parameter names reproduce the released GrootV checkpoints exactly (e.g.
``patch_embed.norm1.1.weight``, ``levels.2.blocks.4.TreeSSM.A_logs``,
``conv_head.1.0.running_var``); the stem, downsampling, blocks and stages are in
``grootvl.models.blocks``.

Feature maps are channels-last (B, H, W, C) inside the network; ``forward_features`` and the
features returned by ``forward_intermediates`` / ``features_only`` are NCHW as timm expects.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_module, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import MATCH_PREV_GROUP

from ..layers import GeluMlp, TreeSSM
from .blocks import GrootVStage, Stem
from ..ops.arguments import check_int, check_real, is_int
from .weights import checkpoint_filter_fn, load_pretrained_into

__all__ = ["GrootV", "grootv_tiny", "grootv_small", "grootv_base"]

TREE_SHARING = ("block", "stage")

# torch.fx cannot trace a TreeSSM (its spanning tree depends on the data): FX tracers that
# use timm's registry (timm's and torchvision's feature extractors given timm's
# get_notrace_modules(), features_only with feature_cls="fx") keep it as one leaf call.
# The MLP too: traced, it would be its nn.Linear modules (torch's BLAS) and a plain GELU;
# as a leaf the graph runs what eager runs (grootvl's products, the lean op in training).
register_notrace_module(TreeSSM)
register_notrace_module(GeluMlp)


def _check_arguments(channels, depths, num_classes, in_chans, mlp_ratio, drop_rate,
                     drop_path_rate, head_scale) -> tuple[int, ...]:
    """ValueError naming the first unusable constructor argument; the depths as a tuple."""
    if not is_int(channels) or channels < 2 or channels % 2:
        raise ValueError(f"channels must be an even int >= 2 (the stages have C, 2C, 4C, 8C "
                         f"channels), got {channels!r}")
    if isinstance(depths, (str, bytes)) or not isinstance(depths, Sequence) or not depths \
            or not all(is_int(d) and d >= 1 for d in depths):
        raise ValueError(f"depths must be a non-empty sequence of ints >= 1 (blocks per stage, "
                         f"e.g. (2, 2, 9, 2)), got {depths!r}")
    check_int("num_classes", num_classes, 0, " (0: no classifier)")
    check_int("in_chans", in_chans, 1, " (input image channels)")
    check_real("mlp_ratio", mlp_ratio, 0, low_open=True)
    check_real("drop_rate", drop_rate, 0, 1, high_open=True)
    check_real("drop_path_rate", drop_path_rate, 0, 1, high_open=True)
    check_real("head_scale", head_scale, 0, low_open=True)
    if int(channels * mlp_ratio) < 1:
        raise ValueError(f"mlp_ratio={mlp_ratio!r} gives the MLP of the {channels}-channel "
                         "stage no hidden unit; use a larger mlp_ratio")
    if int(channels * 2 ** (len(depths) - 1) * head_scale) < 1:
        raise ValueError(f"head_scale={head_scale!r} gives the head convolution no output "
                         "channel; use a larger head_scale")
    return tuple(int(d) for d in depths)


class GrootV(nn.Module):
    """GrootV image backbone/classifier: tree-topology SSM blocks in four stages.

    Args:
        channels: C, channels of the first stage (stages have C, 2C, 4C, 8C).
        depths: blocks per stage.
        num_classes: classifier outputs; 0 for no classifier (``head`` is Identity).
        in_chans: input image channels.
        mlp_ratio: MLP hidden size / channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks.
        head_scale: the 1x1 head convolution widens 8C to ``int(head_scale * 8C)``.
        global_pool: ``"avg"`` or ``""`` (no pooling in ``forward_head``).
        tree_sharing: ``"block"`` (every block builds its own tree; the released
            checkpoints were trained this way) or ``"stage"`` (all blocks of a stage use the
            tree built from the first block's guide; faster, see docs/design.md, "GrootV").
            Works with every topology: for ``"random"`` the blocks of a stage share the
            stage's random tree, for ``"cross"`` its pair of chains.
        tree_cost: spanning-tree edge cost, ``"cosine"``, ``"l2"`` or ``"l1"``.
        scan_impl, tree_impl: ``grootvl.ops`` implementations (None: fastest for the device).
        topology: ``"tree"`` (default), ``"raster"``, ``"cross"`` or ``"random"``: the graph
            every TreeSSM layer scans over (see ``grootvl.layers.TreeSSM`` and
            docs/design.md, "Scan topologies").
        root: ``"all"`` (default; every pixel sees every other), ``"first"`` or ``"last"``
            (one root at the first / last pixel, each pixel aggregates its subtree).
    """

    def __init__(
        self,
        channels: int = 80,
        depths: Sequence[int] = (2, 2, 9, 2),
        num_classes: int = 1000,
        in_chans: int = 3,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        head_scale: float = 1.5,
        global_pool: str = "avg",
        tree_sharing: str = "block",
        tree_cost: str = "cosine",
        scan_impl: str | None = None,
        tree_impl: str | None = None,
        topology: str = "tree",
        root: str = "all",
    ) -> None:
        super().__init__()
        if tree_sharing not in TREE_SHARING:
            raise ValueError(f"tree_sharing must be one of {TREE_SHARING}, got {tree_sharing!r}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
        self.depths = _check_arguments(channels, depths, num_classes, in_chans, mlp_ratio,
                                       drop_rate, drop_path_rate, head_scale)
        self.channels = channels
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.tree_sharing = tree_sharing
        num_stages = len(self.depths)
        stage_chs = [channels * 2 ** i for i in range(num_stages)]
        self.head_hidden_size = self.num_features = int(stage_chs[-1] * head_scale)
        self.output_fmt = "NCHW"

        self.patch_embed = Stem(in_chans, channels)
        rates = torch.linspace(0, drop_path_rate, sum(self.depths), device="cpu").tolist()
        self.levels = nn.ModuleList()
        self.feature_info = []
        for i, depth in enumerate(self.depths):
            first = sum(self.depths[:i])
            self.levels.append(GrootVStage(
                stage_chs[i], depth, rates[first:first + depth], downsample=i < num_stages - 1,
                mlp_ratio=mlp_ratio, tree_sharing=tree_sharing, tree_cost=tree_cost,
                scan_impl=scan_impl, tree_impl=tree_impl, topology=topology, root=root))
            # the stage's norm: its output is the feature map (the downsampling that follows
            # is a child of the stage too, so "levels.{i}" would name its output for FX)
            self.feature_info.append(dict(num_chs=stage_chs[i], reduction=4 * 2 ** i, module=f"levels.{i}.norm"))
        self.conv_head = nn.Sequential(
            nn.Conv2d(stage_chs[-1], self.num_features, 1, bias=False),
            nn.Sequential(nn.BatchNorm2d(self.num_features)),
            nn.GELU(),
        )
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ timm interface
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Full names of A_logs and Ds (norm weights and biases are 1-D, timm skips those)."""
        return {name for name, _ in self.named_parameters() if name.endswith((".A_logs", ".Ds"))}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm (``param_groups_layer_decay``, ``group_parameters``).

        Fine grouping is the layer-wise lr decay rule of the original GrootV dense recipes:
        one layer per block, in order; the stem joins the first block; the norm and
        downsampling that end stage s join the first block of stage s + 1 (the last stage's
        norm, the head convolution and the classifier join the last block). With decay d,
        block i of N trains at d ** (N - 1 - i) of the learning rate.
        """
        if coarse:
            return dict(stem=r"^patch_embed", blocks=[(r"^levels\.(\d+)", None),
                                                       (r"^conv_head", MATCH_PREV_GROUP)])
        last = len(self.levels) - 1
        # a suffix ending in MATCH_PREV_GROUP puts a match into the layer sorted just before it
        join = MATCH_PREV_GROUP[0]
        return dict(blocks=[
            (r"^levels\.(\d+)\.blocks\.(\d+)\.", None),
            (r"^patch_embed\.", (0, 0, join)),
            *[(rf"^levels\.{s}\.(?:norm|downsample)\.", (s + 1, 0, join)) for s in range(last)],
            (rf"^levels\.{last}\.(?:norm|downsample)\.", (last, self.depths[last] - 1, join)),
            (r"^(?:conv_head|head)\.", (last, self.depths[last] - 1, join)),
        ])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for level in self.levels:
            level.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0: none)."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = next(self.parameters())
        self.head = (nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
                     if num_classes > 0 else nn.Identity())
        self.head.apply(self._init_weights)

    def load_pretrained(self, path: str) -> None:
        """timm ``custom_load`` hook: load a released checkpoint file (see ``grootvl.load_checkpoint``)."""
        load_pretrained_into(self, path)

    # ------------------------------------------------------------------ forward
    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs (after each stage's LayerNorm, before downsampling).

        Args:
            indices: take the last n stages if int, all if None, else these stage indices.
            norm: unused; stage outputs are already normalised.
            stop_early: stop after the last requested stage.
            output_fmt: ``"NCHW"`` or ``"NHWC"`` for the intermediates.
            intermediates_only: return only the list of intermediates.
        """
        output_fmt = str(getattr(output_fmt, "value", output_fmt))
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.levels), indices)
        levels = self.levels[:max_index + 1] if stop_early else self.levels
        intermediates = []
        x = self.patch_embed(x)
        for i, level in enumerate(levels):
            feature = level(x)
            if i in take_indices:
                intermediates.append(feature.permute(0, 3, 1, 2) if output_fmt == "NCHW" else feature)
            x = level.downsample(feature) if level.downsample is not None else feature
        if intermediates_only:
            return intermediates
        if len(levels) == len(self.levels):
            x = self.conv_head(x.permute(0, 3, 1, 2))
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the head if ``prune_head``)."""
        take_indices, max_index = feature_take_indices(len(self.levels), indices)
        self.levels = self.levels[:max_index + 1]
        self.levels[-1].downsample = None  # its output would feed a pruned stage
        if prune_head or max_index < len(self.feature_info) - 1:
            self.conv_head = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H/32, W/32) before pooling."""
        x = self.patch_embed(x)
        for level in self.levels:
            x = level(x)
            if level.downsample is not None:
                x = level.downsample(x)
        return self.conv_head(x.permute(0, 3, 1, 2))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool (as ``nn.AdaptiveAvgPool2d``, like the original) and classifier."""
        if self.global_pool == "avg":
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------- timm registration

def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.conv1",
        "classifier": "head",
        "license": "mit",
        "origin_url": "https://github.com/EasonXiao-888/MambaTree",
        "paper_ids": "arXiv:2406.02395",
        "paper_name": "GrootVL: Tree Topology is All You Need in State Space Model",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "grootv_tiny.in1k": _cfg(),
    "grootv_small.in1k": _cfg(),
    "grootv_base.in1k": _cfg(),
})


def _pretrained_source(variant: str, kwargs: dict) -> None:
    """Raise unless a weight source was given: the released weights are not downloadable."""
    cfg = kwargs.get("pretrained_cfg") or {}
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if not isinstance(cfg, dict):
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
    merged = {**cfg, **overlay}
    if not any(merged.get(k) for k in ("file", "url", "hf_hub_id", "state_dict")):
        raise RuntimeError(
            f"{variant}: no downloadable weights are registered (the original release is not "
            "hosted where timm can fetch it). Download the checkpoint (.pth from the GrootVL "
            "release, or a .safetensors) and pass it as "
            f"timm.create_model('{variant}', pretrained=True, "
            "pretrained_cfg_overlay=dict(file='/path/to/checkpoint.pth')), or use "
            "grootvl.load_checkpoint(model, path)."
        )
    if merged.get("file") and "custom_load" not in overlay:
        # Files go through GrootV.load_pretrained: it reads the original release format
        # (model/model_ema/config), which timm's generic loader would reject or misread.
        kwargs["pretrained_cfg_overlay"] = {**overlay, "custom_load": True}


def _create_grootv(variant: str, pretrained: bool = False, **kwargs) -> GrootV:
    if pretrained:
        _pretrained_source(variant, kwargs)
    feature_cfg = dict(out_indices=(0, 1, 2, 3), feature_cls="getter")
    if kwargs.get("feature_cls", "getter") != "getter":
        # hook/fx/list wrappers return the stages' own (channels-last) outputs: say so
        feature_cfg["output_fmt"] = "NHWC"
    return build_model_with_cfg(
        GrootV, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg,
        **kwargs,
    )


@register_model
def grootv_tiny(pretrained: bool = False, **kwargs) -> GrootV:
    """GrootV-T: C=80, depths 2-2-9-2, 29.96 M parameters, 4.78 GFLOPs at 224."""
    args = dict(channels=80, depths=(2, 2, 9, 2), drop_path_rate=0.1)
    return _create_grootv("grootv_tiny", pretrained, **dict(args, **kwargs))


@register_model
def grootv_small(pretrained: bool = False, **kwargs) -> GrootV:
    """GrootV-S: C=96, depths 2-2-13-2, 51.33 M parameters, 8.52 GFLOPs at 224."""
    args = dict(channels=96, depths=(2, 2, 13, 2), drop_path_rate=0.3)
    return _create_grootv("grootv_small", pretrained, **dict(args, **kwargs))


@register_model
def grootv_base(pretrained: bool = False, **kwargs) -> GrootV:
    """GrootV-B: C=128, depths 2-2-13-2, 90.60 M parameters, 15.09 GFLOPs at 224."""
    args = dict(channels=128, depths=(2, 2, 13, 2), drop_path_rate=0.5)
    return _create_grootv("grootv_base", pretrained, **dict(args, **kwargs))
