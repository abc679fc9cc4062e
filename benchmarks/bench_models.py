"""GrootV-T CPU inference latency relative to timm's ConvNeXt-T, and where GrootV's time goes.

    python benchmarks/bench_models.py [--batch 8] [--size 224] [--rounds 10] [--threads N]

Both models run in eval mode under ``torch.inference_mode`` with random weights (nothing is
downloaded). Forward passes alternate between the two models (so load from other processes
hits both alike) and the medians are compared; the target is GrootV-T / ConvNeXt-T <= 1.25.
The breakdown then times GrootV-T's tree construction (``grid_tree``: edge costs, MST, BFS)
and tree scans (``tree_scan``) by wrapping those two functions for a few extra passes.
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import grootvl  # noqa: F401  (registers grootv_tiny with timm)
import grootvl.layers.tree_ssm as tree_ssm


def _time(model, x) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def latency(models: dict, x: torch.Tensor, rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Interleaved wall-clock times of one forward pass per model, ``rounds`` each."""
    times = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for model in models.values():
                model(x)
        for _ in range(rounds):
            for name, model in models.items():
                times[name].append(_time(model, x))
    return times


def breakdown(model, x: torch.Tensor, passes: int = 3) -> dict[str, float]:
    """Median seconds per forward pass in tree construction, tree scans, and the rest."""
    spent = {"tree construction": 0.0, "tree scan": 0.0}
    originals = {"grid_tree": tree_ssm.grid_tree, "tree_scan": tree_ssm.tree_scan}

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[key] += time.perf_counter() - start
            return out
        return wrapper

    tree_ssm.grid_tree = timed(originals["grid_tree"], "tree construction")
    tree_ssm.tree_scan = timed(originals["tree_scan"], "tree scan")
    rows = []
    try:
        with torch.inference_mode():
            for _ in range(passes):
                spent.update({k: 0.0 for k in spent})
                total = _time(model, x)
                rows.append({**spent, "rest": total - sum(spent.values()), "total": total})
    finally:
        tree_ssm.grid_tree, tree_ssm.tree_scan = originals["grid_tree"], originals["tree_scan"]
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tree-sharing", default="block", choices=["block", "stage"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {
        "grootv_tiny": timm.create_model("grootv_tiny", tree_sharing=args.tree_sharing).eval(),
        "convnext_tiny": timm.create_model("convnext_tiny").eval(),
    }
    x = torch.randn(args.batch, 3, args.size, args.size)
    print(f"CPU, {torch.get_num_threads()} threads, batch {args.batch}, {args.size}x{args.size}, "
          f"float32, inference_mode, {args.rounds} interleaved rounds (medians; min in brackets)")
    times = latency(models, x, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, values in times.items():
        print(f"  {name:14s} {med[name] * 1e3:8.1f} ms/batch  [{min(values) * 1e3:.1f}]  "
              f"spread {(max(values) - min(values)) / med[name]:.0%}")
    ratio = med["grootv_tiny"] / med["convnext_tiny"]
    print(f"  ratio grootv_tiny / convnext_tiny = {ratio:.2f} (target <= 1.25; "
          f"best-of ratio {min(times['grootv_tiny']) / min(times['convnext_tiny']):.2f})")
    parts = breakdown(models["grootv_tiny"], x)
    print("GrootV-T time per forward pass (median of 3 timed passes):")
    for key in ("tree construction", "tree scan", "rest"):
        print(f"  {key:18s} {parts[key] * 1e3:8.1f} ms  {parts[key] / parts['total']:6.1%}")


if __name__ == "__main__":
    main()
