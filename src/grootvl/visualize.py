"""Pictures: what a GrootV block does (its minimum spanning tree and propagation weights), and
a run's training curve.

For one block's tree SSM we capture, with forward hooks, the guide features (the SSM input
after the depthwise convolution and SiLU; docs/design.md, "The TreeSSM layer") and the tree
the layer used. From the guide we also compute the block's per-channel decays λ = exp(Δ·A).
The propagation weight from a source pixel p to every pixel i is

    S(p, i) averaged over channels = mean_c  tree_scan(one_hot(p), λ_c)[i]

i.e. we run the full tree scan (docs/design.md, "Tree scan semantics") on an input that is 1
at p in every channel and 0 elsewhere; since S is symmetric, output i is S_c(i, p) = S_c(p, i),
the product of channel c's decays along the tree path between p and i. We average S over
channels (not the decays), so the map is the mean attention the block's state gives each
pixel from p.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .errors import UserError
from .files import UnreadableImage, decode_image


def load_images(paths: list[str]) -> list[tuple[str, Image.Image]]:
    """``(name, RGB image)`` for each path (16-bit images scaled to 8 bits); scikit-learn's
    sample images when ``paths`` is empty. An unreadable file is a UserError naming it."""
    if not paths:
        from sklearn.datasets import load_sample_images

        samples = load_sample_images()
        return [(Path(f).name, Image.fromarray(img)) for f, img in zip(samples.filenames, samples.images)]
    out = []
    for path in paths:
        try:
            out.append((Path(path).name, decode_image(path, "RGB")))
        except UnreadableImage as exc:
            raise UserError(f"--image {exc.path}: {exc.cause}") from None
    return out


def preprocess(image: Image.Image, size: int, in_chans: int = 3, mean=IMAGENET_DEFAULT_MEAN,
               std=IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """Resize (bicubic, no crop) and normalise to a (in_chans, size, size) tensor."""
    img = image.convert("L" if in_chans == 1 else "RGB").resize((size, size), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    arr = arr.unsqueeze(-1) if arr.dim() == 2 else arr
    m = torch.tensor(mean[:in_chans] if in_chans > 1 else mean[:1])
    s = torch.tensor(std[:in_chans] if in_chans > 1 else std[:1])
    return ((arr - m) / s).permute(2, 0, 1).contiguous()


@dataclass
class BlockCapture:
    """What one tree SSM block computed for one image."""

    guide: torch.Tensor      # (D, H, W) guide features
    decay: torch.Tensor      # (L, D) per-vertex, per-channel decay λ
    parent: torch.Tensor     # (L,) parent vertex of each vertex, -1 at the root
    tree: object             # grootvl.ops.Tree used by the block (batch of 1), or for the
                             # "cross" topology its (row-major, column-major) pair of chains
    height: int
    width: int
    layer: nn.Module         # the block's TreeSSM: its scan() propagates like the block

    @property
    def trees(self) -> tuple:
        """The block's tree(s) as a tuple (two chains for topology "cross")."""
        return self.tree if isinstance(self.tree, tuple) else (self.tree,)


def find_tree_ssm(model: nn.Module, stage: int, block: int) -> nn.Module:
    """The tree SSM layer of ``model.levels[stage].blocks[block]`` (GrootV's layout)."""
    levels = getattr(model, "levels", None)
    if levels is None:
        raise UserError(f"{type(model).__name__} is not a GrootV model (no tree SSM layers to "
                        "visualize); use --model grootv_tiny / grootv_small / grootv_base")
    if not 0 <= stage < len(levels):
        raise UserError(f"--stage {stage}: the model has stages 0..{len(levels) - 1}")
    blocks = levels[stage].blocks
    if not 0 <= block < len(blocks):
        raise UserError(f"--block {block}: stage {stage} has blocks 0..{len(blocks) - 1}")
    return blocks[block].TreeSSM


@torch.no_grad()
def capture_block(model: nn.Module, image: torch.Tensor, stage: int = 0, block: int = 0) -> BlockCapture:
    """Run ``model`` on one (C, H, W) image and capture block (stage, block)'s tree and decays."""
    layer = find_tree_ssm(model, stage, block)
    seen: dict = {}
    hooks = [
        layer.conv2d.register_forward_hook(lambda m, i, o: seen.__setitem__("conv", o)),
        layer.register_forward_hook(lambda m, i, o: seen.__setitem__("tree", o[1])),
    ]
    was_training = model.training
    model.eval()
    try:
        model(image.unsqueeze(0).to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    guide = F.silu(seen["conv"][0].float())            # (D, H, W)
    tree = seen["tree"]
    first = tree[0] if isinstance(tree, tuple) else tree
    d_inner, height, width = guide.shape
    decay = block_decay(layer, guide.reshape(d_inner, -1).t())
    return BlockCapture(guide=guide.cpu(), decay=decay.cpu(), parent=first.parent[0].cpu(),
                        tree=tree, height=height, width=width, layer=layer)


def block_decay(layer: nn.Module, xs: torch.Tensor) -> torch.Tensor:
    """λ = exp(Δ·A) for guide features ``xs`` (L, D), as the layer computes it (docs/design.md,
    "The TreeSSM layer")."""
    r = layer.dt_rank
    dt = xs @ layer.x_proj_weight[0, :r].float().t()                     # (L, R)
    delta = F.softplus(dt @ layer.dt_projs_weight[0].float().t() + layer.dt_projs_bias[0].float())
    a = -torch.exp(layer.A_logs.float()[:, 0])                           # (D,)
    return torch.exp(delta * a)


def propagation_weights(capture: BlockCapture, pixel: int) -> torch.Tensor:
    """Channel-mean S(p, .) over the block's tree(s), as an (H, W) map (1 at p itself).

    The block's own scan: its mode (subtree for root "first"/"last") and, for topology
    "cross", the sum over both chains.
    """
    length, d_inner = capture.decay.shape
    x = torch.zeros(1, length, d_inner, dtype=torch.float64)
    x[0, pixel] = 1.0
    cpu = torch.device("cpu")
    trees = tuple(t.to(cpu) for t in capture.trees)
    with torch.no_grad():
        s = capture.layer.scan(x, capture.decay.double().unsqueeze(0).contiguous(),
                               trees if isinstance(capture.tree, tuple) else trees[0])
    return s[0].mean(dim=1).view(capture.height, capture.width).float()


def tree_segments(parent: torch.Tensor, height: int, width: int, scale_y: float, scale_x: float):
    """Line segments (N, 2, 2) in image (x, y) coordinates for every tree edge."""
    child = torch.nonzero(parent >= 0).flatten()
    par = parent[child]
    cy, cx = (child // width).float(), (child % width).float()
    py, px = (par // width).float(), (par % width).float()
    start = torch.stack([(cx + 0.5) * scale_x, (cy + 0.5) * scale_y], dim=1)
    end = torch.stack([(px + 0.5) * scale_x, (py + 0.5) * scale_y], dim=1)
    return torch.stack([start, end], dim=1).numpy()


def render_tree_figure(model: nn.Module, image: torch.Tensor, display: Image.Image, path,
                       stage: int = 0, block: int = 0, pixel: tuple[float, float] | None = None,
                       title: str = "") -> Path:
    """PNG with three panels: the input, its spanning tree, and log10 S(p, .) from pixel p.

    ``image`` is the normalised model input (C, H, W); ``display`` the picture to draw on.
    ``pixel`` = (row, col) as fractions of the feature map (default: its centre).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    cap = capture_block(model, image, stage, block)
    frac = pixel if pixel is not None else (0.5, 0.5)
    if not all(0.0 <= f <= 1.0 for f in frac):
        raise UserError(f"--pixel {frac[0]} {frac[1]}: give fractions of height and width in [0, 1]")
    row = min(int(frac[0] * cap.height), cap.height - 1)
    col = min(int(frac[1] * cap.width), cap.width - 1)
    weights = propagation_weights(cap, row * cap.width + col)
    shown = np.asarray(display.convert("RGB"))
    img_h, img_w = shown.shape[:2]
    sy, sx = img_h / cap.height, img_w / cap.width

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
    axes[0].imshow(shown)
    axes[0].set_title(title or "input")
    axes[1].imshow(shown, alpha=0.55)
    lw = max(0.4, min(2.0, 120.0 / max(cap.height, cap.width)))
    for tree, color in zip(cap.trees, ("#ffd000", "#00d0ff")):  # cross: both chains
        axes[1].add_collection(LineCollection(
            tree_segments(tree.parent[0].cpu(), cap.height, cap.width, sy, sx),
            colors=color, linewidths=lw))
    root_row, root_col = divmod(int(cap.trees[0].root[0]), cap.width)
    axes[1].plot([(root_col + 0.5) * sx], [(root_row + 0.5) * sy], "o", color="red", ms=4)
    axes[1].set_title(f"spanning tree, stage {stage} block {block} ({cap.height}x{cap.width})")
    log_s = torch.log10(weights.clamp_min(1e-12)).numpy()
    axes[2].imshow(shown, alpha=0.35)
    heat = axes[2].imshow(log_s, cmap="inferno", alpha=0.8, extent=(0, img_w, img_h, 0),
                          interpolation="nearest", vmin=max(log_s.min(), -12.0),
                          vmax=max(0.0, float(log_s.max())))  # cross: S(p, p) = 2
    axes[2].plot([(col + 0.5) * sx], [(row + 0.5) * sy], "c+", ms=10, mew=2)
    axes[2].set_title("log10 S(p, .) (channel mean), p = +")
    fig.colorbar(heat, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_axis_off()
        ax.set_xlim(0, img_w)
        ax.set_ylim(img_h, 0)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training_curve(epochs: list[dict], path) -> Path:
    """Loss (train, test) and test accuracy per epoch, side by side, from a run's ``epoch``
    log records (``train_loss``, ``val_loss``, ``val_top1``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["epoch"] + 1 for r in epochs]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(x, [r.get("train_loss") for r in epochs], "o-", label="train (smoothed labels)")
    ax_loss.plot(x, [r.get("val_loss") for r in epochs], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    ax_acc.plot(x, [r.get("val_top1") for r in epochs], "s-", color="C1")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="test accuracy")
    ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
