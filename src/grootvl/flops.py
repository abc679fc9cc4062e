"""Parameter and FLOP counts of GrootV models, counted the way the paper did.

The paper's figures (29.96/51.33/90.60 M parameters, 4.78/8.52/15.09 GFLOPs at 224) come
from fvcore's ``flop_count`` with its default handles run on the original model: one FLOP
per multiply-add of convolutions, linear layers, matrix products and einsums, plus
normalisations (LayerNorm 5/element, BatchNorm in eval 2/element) and adaptive average
pooling (1/element); element-wise ops (GELU, SiLU, softplus, exp, additions) are not counted.
The original's tree construction and scan are custom autograd functions that fvcore skips;
ours are ``torch.library`` custom ops that fvcore skips likewise (they show up in
``unsupported_ops``). One op differs by design: the original computes y = C·h as a
per-position (D x 1)(1 x 1) ``matmul`` (counted 1 FLOP per element), ours fuses it with the
skip term into ``addcmul``, which is given the same count here. ``count_flops_params``
reports that total and, separately, an estimate of the tree work from the shapes each Tree
SSM layer saw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["FlopReport", "count_flops_params", "tree_work"]


@dataclass
class FlopReport:
    """Result of ``count_flops_params``.

    Attributes:
        params: number of parameters (buffers excluded).
        gflops: fvcore default count in GFLOPs (multiply-add = 1), tree operations excluded.
        by_operator: fvcore GFLOPs per operator type (conv, linear, layer_norm, ...).
        tree_gflops: estimated tree work in GFLOPs: ``cost`` (cosine similarities of the
            4-neighbour edges: 3 multiply-adds per channel and edge), ``scan`` (full scan:
            1 multiply-add per vertex and channel up, 3 multiplies down).
        mst_comparisons: estimated comparisons of the spanning-tree construction, E·log2(E)
            per layer (sorting-based bound; Borůvka does about as many).
        unsupported_ops: operators fvcore skipped, with call counts.
        input_size: (C, H, W) counted, batch size 1.
    """

    params: int
    gflops: float
    by_operator: dict[str, float]
    tree_gflops: dict[str, float]
    mst_comparisons: float
    unsupported_ops: dict[str, int]
    input_size: tuple[int, int, int]
    layer_shapes: list[tuple[int, int, int, int]] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        tree = ", ".join(f"{k} {v:.3f}" for k, v in self.tree_gflops.items())
        c, h, w = self.input_size
        return (f"params: {self.params / 1e6:.2f} M\n"
                f"GFLOPs @ {c}x{h}x{w}: {self.gflops:.2f} (fvcore default handles; tree ops excluded)\n"
                f"tree work, not included above: GFLOPs {tree}; MST ~{self.mst_comparisons / 1e6:.1f} M "
                f"comparisons over {len(self.layer_shapes)} Tree SSM layers")


def tree_work(batch: int, height: int, width: int, channels: int) -> tuple[float, float, float]:
    """(cost FLOPs, MST comparisons, scan FLOPs) of one Tree SSM layer on (B, H, W, D)."""
    vertices = height * width
    edges = (height - 1) * width + height * (width - 1)
    cost = 3.0 * channels * edges * batch
    mst = batch * edges * math.log2(edges) if edges > 1 else 0.0
    scan = 4.0 * channels * max(vertices - 1, 0) * batch
    return cost, mst, scan


def count_flops_params(model_or_name: nn.Module | str,
                       input_size: tuple[int, int, int] = (3, 224, 224)) -> FlopReport:
    """Parameters and FLOPs of a model for one image of ``input_size`` (C, H, W).

    Args:
        model_or_name: an ``nn.Module`` or a timm model name (e.g. ``"grootv_tiny"``).
        input_size: (channels, height, width).

    Runs one forward pass under ``torch.no_grad`` in eval mode (fvcore traces it) on the
    model's device; the model's training mode is restored afterwards.
    """
    from fvcore.nn import FlopCountAnalysis

    if isinstance(model_or_name, str):
        import timm

        from . import models  # noqa: F401  (registers the grootv_* names)

        model = timm.create_model(model_or_name)
    elif isinstance(model_or_name, nn.Module):
        model = model_or_name
    else:
        raise TypeError(f"model_or_name must be an nn.Module or a timm model name, got "
                        f"{type(model_or_name).__name__}")
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (channels, height, width), got {input_size}")
    params = sum(p.numel() for p in model.parameters())
    ref = next(model.parameters(), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None else torch.float32
    image = torch.randn(1, *input_size, device=device, dtype=dtype)

    from .layers import TreeSSM

    ssm_layers = [m for m in model.modules() if isinstance(m, TreeSSM)]
    shapes: list[tuple[int, int, int, int]] = []
    handles = [m.register_forward_pre_hook(_with_placeholder_tree(shapes)) for m in ssm_layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, image)
            analysis.set_op_handle("aten::addcmul", _addcmul_as_matmul,
                                   "aten::addcmul_", _addcmul_as_matmul)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            total = analysis.total()
            by_operator = {k: v / 1e9 for k, v in analysis.by_operator().items()}
            unsupported = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    cost = mst = scan = 0.0
    for b, h, w, d in shapes:
        c, m_, s = tree_work(b, h, w, d)
        cost, mst, scan = cost + c, mst + m_, scan + s
    return FlopReport(params, total / 1e9, by_operator, {"cost": cost / 1e9, "scan": scan / 1e9},
                      mst, unsupported, tuple(input_size), shapes)


def _addcmul_as_matmul(inputs, outputs) -> int:
    """y = C·h + D·x (TreeSSM): counted as the original's C·h matmul, 1 per output element."""
    from fvcore.nn.jit_handles import get_shape

    return math.prod(get_shape(outputs[0]))


def _with_placeholder_tree(shapes: list):
    """Forward pre-hook for Tree SSM layers while fvcore traces the model.

    fvcore's counts do not depend on which spanning tree the scan runs over (the scan and
    the tree construction are not counted; the tree work is estimated from shapes), so each
    layer gets a fixed "comb" spanning tree of its grid instead of building the MST. That
    keeps tree construction out of the ``torch.jit.trace`` graph, where the original's
    was invisible too (a custom autograd function), and records the layer's shape.
    """
    def hook(module, args):
        x = args[0]
        batch, height, width = (int(s) for s in x.shape[:3])
        shapes.append((batch, height, width, module.d_inner))
        tree = _comb_tree(batch, height, width, x.device)
        # topology "cross" scans two chains and takes them as a pair
        return (x, (tree, tree) if getattr(module, "topology", "tree") == "cross" else tree)
    return hook


def _comb_tree(batch: int, height: int, width: int, device):
    """Spanning tree of an H x W grid: every row hangs from column 0, column 0 is a chain."""
    import numpy as np

    from .ops import Tree

    rows, cols = np.divmod(np.arange(height * width), width)
    parent = np.where(cols > 0, np.arange(height * width) - 1, np.arange(height * width) - width)
    parent[0] = -1
    depth = rows + cols
    order = np.argsort(depth, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(depth))])
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(np.broadcast_to(  # noqa: E731
        a.astype(np.int64), (batch, a.size)))).to(device)
    return Tree(as_tensor(order), as_tensor(parent), as_tensor(offsets))
