"""The parts GrootV is built from (docs/design.md, "GrootV"): stem, downsampling, the
residual block around a Tree SSM and an MLP, and a stage of blocks. They use timm's
DropPath and gradient checkpointing, which is why they are here and not in
``grootvl.layers`` (kept free of timm).

Module and parameter names reproduce the released checkpoints (see ``grootvl.models.grootv``),
which is why a few norms sit inside one-element ``nn.Sequential`` containers next to
parameter-free ``Permute`` modules. Feature maps are channels-last (B, H, W, C) between the
stem and the head.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from timm.layers import DropPath, drop_path
from timm.models import checkpoint

from ..layers import GeluMlp, Trees, TreeSSM
from ..layers.inplace import may_overwrite_outputs

__all__ = ["Downsample", "GrootVBlock", "GrootVStage", "Permute", "Stem", "layer_norm"]


class Permute(nn.Module):
    """Permute dimensions (channels-first <-> channels-last); no parameters."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.dims)


def layer_norm(dim: int) -> nn.LayerNorm:
    """LayerNorm over the last dimension with the released models' eps (1e-6)."""
    return nn.LayerNorm(dim, eps=1e-6)


class Stem(nn.Module):
    """Two stride-2 3x3 convolutions (with bias) to C channels at 1/4 resolution.

    NCHW input, channels-last (B, H/4, W/4, C) output. The norms are LayerNorms over
    channels (the released checkpoints hold LayerNorm weights here, not BatchNorm).
    """

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans // 2, 3, stride=2, padding=1)
        self.norm1 = nn.Sequential(Permute(0, 2, 3, 1), layer_norm(out_chans // 2), Permute(0, 3, 1, 2))
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_chans // 2, out_chans, 3, stride=2, padding=1)
        self.norm2 = nn.Sequential(Permute(0, 2, 3, 1), layer_norm(out_chans))

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, Tensor):  # not a torch.fx Proxy: symbolic tracing cannot branch on it
            self._check_images(x)
        # channels-last convolutions: the LayerNorms then see contiguous (B, H, W, C) views
        # instead of copying the (large, full-resolution) activations into that layout
        x = x.contiguous(memory_format=torch.channels_last)
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))

    def _check_images(self, x: Tensor) -> None:
        in_chans = self.conv1.in_channels
        if x.dim() != 4 or x.shape[1] != in_chans or x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"GrootV expects images of shape (B, C, H, W) with C = in_chans = "
                             f"{in_chans} channels and H, W >= 1, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"GrootV expects a floating-point image tensor, got {x.dtype}; "
                            "convert it with x.float()")


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (no bias) doubling the channels, then LayerNorm; NHWC in/out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False)
        self.norm = nn.Sequential(Permute(0, 2, 3, 1), layer_norm(2 * channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)))


class GrootVBlock(nn.Module):
    """Pre-norm residual block: x + DropPath(TreeSSM(LN(x))); x + DropPath(MLP(LN(x)))."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 **ssm_kwargs) -> None:
        super().__init__()
        self.norm1 = nn.Sequential(layer_norm(channels))
        self.TreeSSM = TreeSSM(channels, **ssm_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.Sequential(layer_norm(channels))
        self.mlp = GeluMlp(channels, int(channels * mlp_ratio))

    def forward(self, x: Tensor, tree: Trees | None = None) -> tuple[Tensor, Trees]:
        """(B, H, W, C) -> ((B, H, W, C), tree(s) used); ``tree`` None builds this block's own."""
        y, tree = self.TreeSSM(self.norm1(x), tree)
        x = self._residual(x, y, self.TreeSSM)
        return self._residual(x, self.mlp(self.norm2(x)), self.mlp), tree

    def _residual(self, x: Tensor, branch: Tensor, module: nn.Module) -> Tensor:
        """x + drop_path(branch)."""
        drop = self.drop_path
        if isinstance(drop, DropPath) and drop.training and drop.drop_prob > 0.0:
            # timm's drop_path draws the per-sample scale (applied to ones: the same random
            # numbers as DropPath(branch)); it is applied in the sum, one pass and one
            # (B, H, W, C) temporary fewer than scaling the branch and then adding
            scale = drop_path(branch.new_ones((branch.shape[0], 1, 1, 1)), drop.drop_prob,
                              True, drop.scale_by_keep)
            return torch.addcmul(x, branch, scale)
        branch = drop(branch)
        # Without autograd the sum goes into the branch's fresh output (same numbers, one
        # allocation fewer; see grootvl.layers.inplace); never into x, which the caller owns.
        if (isinstance(branch, Tensor) and branch is not x and branch.dtype == x.dtype
                and branch.shape == x.shape
                and may_overwrite_outputs(module, self.drop_path)):
            return branch.add_(x)
        return x + branch


class GrootVStage(nn.Module):
    """Blocks at one resolution, a final LayerNorm, and the downsampling to the next stage.

    ``forward`` returns the normalised stage output (the feature map taken for dense
    prediction); the model applies ``downsample`` separately.
    """

    def __init__(self, channels: int, depth: int, drop_path: Sequence[float], downsample: bool,
                 mlp_ratio: float = 4.0, tree_sharing: str = "block", **ssm_kwargs) -> None:
        super().__init__()
        self.tree_sharing = tree_sharing
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(
            GrootVBlock(channels, mlp_ratio, drop_path[i], **ssm_kwargs) for i in range(depth))
        self.norm = nn.Sequential(layer_norm(channels))
        self.downsample = Downsample(channels) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        tree = None
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, block_tree = checkpoint(block, x, tree)
            else:
                x, block_tree = block(x, tree)
            if self.tree_sharing == "stage":
                tree = block_tree  # later blocks reuse the tree of the stage's first block
        return self.norm(x)
