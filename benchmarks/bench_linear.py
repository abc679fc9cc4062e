"""GrootV's matrix products on the CPU: torch's BLAS (``F.linear``) against oneDNN
(``grootvl.ops.linear``), per product shape and in whole GrootV-T steps.

    python benchmarks/bench_linear.py [--threads 2] [--rounds 8] [--batch 8] [--size 224]
                                      [--sections shapes,model]

``shapes``: each product of GrootV-T's blocks at the given batch and image size (forward
``x Wᵀ``, input gradient ``g W`` and weight gradient ``gᵀ x`` of in_proj's halves, out_proj,
fc1 and fc2 in every stage), both ways, alternating round by round; the weighted sum is one
training step's products. grootvl routes the forward and input-gradient products through
oneDNN and leaves the weight gradients to ``torch.mm`` (where oneDNN was slower here).

``model``: a GrootV-T training step and inference pass with ``grootvl.ops.linear.USE_ONEDNN``
on and off, and ConvNeXt-T's training step as timm ships it (torch's BLAS) and with its
``F.linear`` calls routed through ``grootvl.ops.linear``: the same kernels would speed
ConvNeXt-T up as well, so the last line is the ratio of the two models with equal products.
"""
from __future__ import annotations

import argparse
import statistics

import timm
import torch
import torch.nn.functional as F

import grootvl  # noqa: F401  (registers the GrootV models)
from bench_models import interleaved, per_round_ratio
from grootvl.engine.optim import build_optimizer
from grootvl.ops import linear as L
from grootvl.tasks import load_config

_F_LINEAR = F.linear


def grootv_products(batch: int, size: int) -> list[tuple[str, int, int, int, int]]:
    """(name, rows M, in K, out N, count per step) of GrootV-T's block products."""
    out = []
    for stage, (channels, depth) in enumerate(zip((80, 160, 320, 640), (2, 2, 9, 2))):
        rows = batch * (size // 2 ** (stage + 2)) ** 2
        inner = 2 * channels
        for name, k, n, per_block in (("in_proj half", channels, inner, 2),
                                      ("out_proj", inner, channels, 1),
                                      ("fc1", channels, 4 * channels, 1),
                                      ("fc2", 4 * channels, channels, 1)):
            out.append((f"stage {stage + 1} {name}", rows, k, n, per_block * depth))
    return out


def shapes_section(args) -> None:
    print(f"\nProducts of a GrootV-T step (batch {args.batch}, {args.size}x{args.size}), median ms:")
    print(f"  {'product':24s} {'M x K x N':>18s} {'n':>3s}   {'fwd blas':>8s} {'onednn':>7s}   "
          f"{'dX blas':>7s} {'onednn':>7s}   {'dW blas':>7s} {'onednn':>7s}")
    onednn = torch.ops.mkldnn._linear_pointwise
    total = {"blas": 0.0, "onednn": 0.0, "grootvl": 0.0}
    for name, m, k, n, count in grootv_products(args.batch, args.size):
        x, w, g = torch.randn(m, k), torch.randn(n, k), torch.randn(m, n)
        steps = {
            ("fwd", "blas"): lambda: torch.mm(x, w.t()),
            ("fwd", "onednn"): lambda: onednn(x, w, None, "none", [], ""),
            ("dX", "blas"): lambda: torch.mm(g, w),
            ("dX", "onednn"): lambda: onednn(g, w.t(), None, "none", [], ""),
            ("dW", "blas"): lambda: torch.mm(g.t(), x),
            ("dW", "onednn"): lambda: onednn(g.t(), x.t(), None, "none", [], ""),
        }
        wall, _, _ = interleaved(steps, args.rounds)
        ms = {key: statistics.median(v) * 1e3 for key, v in wall.items()}
        print(f"  {name:24s} {f'{m}x{k}x{n}':>18s} {count:3d}   " + "   ".join(
            f"{ms[(p, 'blas')]:8.2f} {ms[(p, 'onednn')]:7.2f}" for p in ("fwd", "dX", "dW")))
        total["blas"] += count * sum(ms[(p, "blas")] for p in ("fwd", "dX", "dW"))
        total["onednn"] += count * sum(ms[(p, "onednn")] for p in ("fwd", "dX", "dW"))
        total["grootvl"] += count * (ms[("fwd", "onednn")] + ms[("dX", "onednn")]
                                     + ms[("dW", "blas")])
    print(f"  one training step's products: all blas {total['blas']:.0f} ms, all oneDNN "
          f"{total['onednn']:.0f} ms, as grootvl runs them {total['grootvl']:.0f} ms "
          f"(x{total['grootvl'] / total['blas']:.2f} of blas)")


def _through_grootvl(x, weight, bias=None):
    """F.linear for timm's modules, routed as grootvl's layers route theirs."""
    if L.uses_onednn(x, weight):
        return L.linear(x, weight, bias)
    return _F_LINEAR(x, weight, bias)


def model_section(args) -> None:
    x = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 1000, (args.batch,))
    grootv = timm.create_model("grootv_tiny")
    convnext = timm.create_model("convnext_tiny")
    optim_cfg = load_config(None).optim
    optimizers = {m: build_optimizer(m, optim_cfg, 1e-4) for m in (grootv, convnext)}

    def train_step(model, use_onednn, patch_f_linear=False):
        def step():
            L.USE_ONEDNN = use_onednn
            if patch_f_linear:
                F.linear = _through_grootvl
            try:
                model.train()
                F.cross_entropy(model(x), labels).backward()
                optimizers[model].step()
                optimizers[model].zero_grad(set_to_none=True)
            finally:
                F.linear, L.USE_ONEDNN = _F_LINEAR, True
        return step

    def inference(use_onednn):
        def step():
            L.USE_ONEDNN = use_onednn
            try:
                grootv.eval()
                with torch.inference_mode():
                    grootv(x)
            finally:
                L.USE_ONEDNN = True
        return step

    steps = {"grootv_tiny train, oneDNN": train_step(grootv, True),
             "grootv_tiny train, blas": train_step(grootv, False),
             "convnext_tiny train, as timm ships it": train_step(convnext, True),
             "convnext_tiny train, F.linear via grootvl": train_step(convnext, True, True),
             "grootv_tiny inference, oneDNN": inference(True),
             "grootv_tiny inference, blas": inference(False)}
    wall, _, _ = interleaved(steps, args.rounds)
    print(f"\nWhole steps (batch {args.batch}, {args.size}x{args.size}, {args.rounds} rounds in a "
          "shuffled order), median ms:")
    for name, times in wall.items():
        print(f"  {name:44s} {statistics.median(times) * 1e3:7.0f}")
    pairs = [("GrootV-T train, oneDNN / blas", "grootv_tiny train, oneDNN",
              "grootv_tiny train, blas"),
             ("GrootV-T inference, oneDNN / blas", "grootv_tiny inference, oneDNN",
              "grootv_tiny inference, blas"),
             ("ConvNeXt-T train, via grootvl / as shipped",
              "convnext_tiny train, F.linear via grootvl", "convnext_tiny train, as timm ships it"),
             ("train: GrootV-T / ConvNeXt-T as shipped", "grootv_tiny train, oneDNN",
              "convnext_tiny train, as timm ships it"),
             ("train: GrootV-T / ConvNeXt-T, both blas", "grootv_tiny train, blas",
              "convnext_tiny train, as timm ships it"),
             ("train: GrootV-T / ConvNeXt-T, both oneDNN", "grootv_tiny train, oneDNN",
              "convnext_tiny train, F.linear via grootvl")]
    print("  median per-round ratios:")
    for title, a, b in pairs:
        print(f"    {title:44s} x{per_round_ratio(wall[a], wall[b]):.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds (default 8)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--sections", default="shapes,model",
                        help="comma-separated subset of: shapes,model (default: %(default)s)")
    args = parser.parse_args(argv)
    if not L._AVAILABLE:
        raise SystemExit("this torch build has no oneDNN (torch.backends.mkldnn): nothing to "
                         "compare; grootvl's products are F.linear here")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    sections = args.sections.split(",")
    if "shapes" in sections:
        shapes_section(args)
    if "model" in sections:
        model_section(args)


if __name__ == "__main__":
    main()
