"""GrootV-T CPU inference latency relative to timm's ConvNeXt-T, and where GrootV's time goes.

    python benchmarks/bench_models.py [--batch 8] [--size 224] [--rounds 10] [--threads N]

Both models run in eval mode under ``torch.inference_mode`` with random weights (nothing is
downloaded). Forward passes alternate between the two models (so load from other processes
hits both alike) and the medians are compared; the target is GrootV-T / ConvNeXt-T <= 1.25.
The breakdown then times GrootV-T's tree construction (``grid_tree``: edge costs, MST, BFS),
tree scans (``tree_scan``) and the rest of its Tree SSM layers by wrapping those functions
and hooking the layers for a few extra passes. CPU time (all threads of this process) is
printed too: on a machine shared with other jobs it is steadier than wall-clock time.
"""
from __future__ import annotations

import argparse
import statistics
import time

import grootvl  # noqa: F401  registers grootv_*
import grootvl.layers.tree_ssm as tree_ssm
import timm
import torch


def _time(model, x) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def latency(models: dict, x: torch.Tensor, rounds: int, warmup: int = 2
            ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Interleaved wall-clock and process CPU times of one forward pass per model."""
    wall = {name: [] for name in models}
    cpu = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for model in models.values():
                model(x)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.process_time()
                wall[name].append(_time(model, x))
                cpu[name].append(time.process_time() - start)
    return wall, cpu


def breakdown(model, x: torch.Tensor, passes: int = 3) -> dict[str, float]:
    """Median seconds per forward pass: tree construction, tree scans, the rest of the Tree
    SSM layers (projections, depthwise conv, element-wise SSM math, norms), everything else."""
    spent = {"tree construction": 0.0, "tree scan": 0.0, "Tree SSM layers": 0.0}
    originals = {"grid_tree": tree_ssm.grid_tree, "tree_scan": tree_ssm.tree_scan}
    starts = []

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[key] += time.perf_counter() - start
            return out
        return wrapper

    def enter(module, args):
        starts.append(time.perf_counter())

    def leave(module, args, out):
        spent["Tree SSM layers"] += time.perf_counter() - starts.pop()

    layers = [m for m in model.modules() if isinstance(m, tree_ssm.TreeSSM)]
    hooks = [h for m in layers for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    tree_ssm.grid_tree = timed(originals["grid_tree"], "tree construction")
    tree_ssm.tree_scan = timed(originals["tree_scan"], "tree scan")
    rows = []
    try:
        with torch.inference_mode():
            for _ in range(passes):
                spent.update({k: 0.0 for k in spent})
                total = _time(model, x)
                tree = spent["tree construction"] + spent["tree scan"]
                rows.append({"tree construction": spent["tree construction"], "tree scan": spent["tree scan"],
                             "Tree SSM, other": spent["Tree SSM layers"] - tree,
                             "rest": total - spent["Tree SSM layers"], "total": total})
    finally:
        tree_ssm.grid_tree, tree_ssm.tree_scan = originals["grid_tree"], originals["tree_scan"]
        for hook in hooks:
            hook.remove()
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
    times, cpu = latency(models, x, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, values in times.items():
        print(f"  {name:14s} {med[name] * 1e3:8.1f} ms/batch  [{min(values) * 1e3:.1f}]  "
              f"spread {(max(values) - min(values)) / med[name]:.0%}  "
              f"CPU time {statistics.median(cpu[name]) * 1e3:.0f} ms")
    ratio = med["grootv_tiny"] / med["convnext_tiny"]
    # each round times the two models back to back, so a round's ratio sees one load level
    paired = statistics.median(g / c for g, c in zip(times["grootv_tiny"], times["convnext_tiny"]))
    cpu_ratio = statistics.median(cpu["grootv_tiny"]) / statistics.median(cpu["convnext_tiny"])
    print(f"  ratio grootv_tiny / convnext_tiny = {ratio:.2f} (target <= 1.25)")
    print(f"    median of per-round ratios {paired:.2f}, best-of ratio "
          f"{min(times['grootv_tiny']) / min(times['convnext_tiny']):.2f}, CPU-time ratio "
          f"{cpu_ratio:.2f} (these three are less sensitive to other processes)")
    parts = breakdown(models["grootv_tiny"], x)
    print("GrootV-T time per forward pass (median of 3 timed passes):")
    notes = {"Tree SSM, other": "in/out/x/dt projections, depthwise conv, element-wise SSM math, norms",
             "rest": "MLPs, block norms, residuals, stem, downsampling, head"}
    for key in ("tree construction", "tree scan", "Tree SSM, other", "rest"):
        print(f"  {key:18s} {parts[key] * 1e3:8.1f} ms  {parts[key] / parts['total']:6.1%}  {notes.get(key, '')}")


if __name__ == "__main__":
    main()
