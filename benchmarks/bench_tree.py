"""Tree construction speed at the GrootV-T stage-1 shape, against SciPy, side by side.

Ours: ``grid_tree`` on the whole batch (edge costs + MST + BFS), divided by the batch size,
for a contiguous and a channels-last guide (the layout a GrootV layer passes); the stages
are also timed one by one (``grid_tree`` itself fuses them on CPU).
SciPy: per image, on the same costs, build the sparse matrix, ``minimum_spanning_tree`` and
``breadth_first_order`` (edge costs are not counted on the SciPy side). The two are timed
alternately in one loop so machine load affects both alike; medians are reported.

Run alone: ``python benchmarks/bench_tree.py`` (add ``--threads 1`` for a one-thread figure).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def measure_tree_construction(
    batch: int = 8, channels: int = 160, height: int = 56, width: int = 56, repeats: int = 15, seed: int = 0
) -> dict:
    """Time tree construction per image, ours vs SciPy; returns a dict of figures (ms/image)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order
    from scipy.sparse.csgraph import minimum_spanning_tree as scipy_mst

    from grootvl.ops import bfs_tree, grid_edges, grid_tree, minimum_spanning_tree
    from grootvl.ops.tree import grid_edge_costs

    generator = torch.Generator().manual_seed(seed)
    guide = torch.randn(batch, channels, height, width, generator=generator)
    num_vertices = height * width
    edges = grid_edges(height, width)
    costs = grid_edge_costs(guide)
    rows, cols = edges[:, 0].numpy(), edges[:, 1].numpy()
    costs_np = costs.numpy()

    def scipy_batch() -> None:
        for b in range(batch):
            graph = csr_matrix((costs_np[b], (rows, cols)), shape=(num_vertices, num_vertices))
            breadth_first_order(scipy_mst(graph), 0, directed=False, return_predecessors=True)

    tree_edges = minimum_spanning_tree(edges, costs, num_vertices)
    guide_channels_last = guide.to(memory_format=torch.channels_last)  # the layout GrootV feeds
    parts = {
        "ours": lambda: grid_tree(guide),
        "ours_channels_last": lambda: grid_tree(guide_channels_last),
        "scipy": scipy_batch,
        "costs": lambda: grid_edge_costs(guide),
        "mst": lambda: minimum_spanning_tree(edges, costs, num_vertices),
        "bfs": lambda: bfs_tree(tree_edges, num_vertices),
    }
    samples: dict[str, list[float]] = {name: [] for name in parts}
    cpu: dict[str, list[float]] = {name: [] for name in parts}
    for name, fn in parts.items():  # warm-up: numba compilation / cache load
        fn()
    for _ in range(repeats):
        for name, fn in parts.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            samples[name].append((time.perf_counter() - start) / batch)
            cpu[name].append((time.process_time() - start_cpu) / batch)
    result = {f"{name}_ms_per_image": _median_ms(s) for name, s in samples.items()}
    # CPU time of all threads: the work done, much less sensitive to a loaded machine.
    result.update({f"{name}_cpu_ms_per_image": _median_ms(s) for name, s in cpu.items()})
    result.update(
        shape=f"B={batch} guide {channels}x{height}x{width} float32",
        threads=torch.get_num_threads(),
        ratio=result["ours_ms_per_image"] / result["scipy_ms_per_image"],
        cpu_ratio=result["ours_cpu_ms_per_image"] / result["scipy_cpu_ms_per_image"],
    )
    return result


def format_result(result: dict) -> str:
    return (
        f"tree construction, {result['shape']}, {result['threads']} thread(s), median ms/image:\n"
        f"  grootvl grid_tree {result['ours_ms_per_image']:.3f} "
        f"(costs {result['costs_ms_per_image']:.3f} + MST {result['mst_ms_per_image']:.3f} "
        f"+ BFS {result['bfs_ms_per_image']:.3f} run stage by stage)\n"
        f"  grootvl grid_tree, channels-last guide {result['ours_channels_last_ms_per_image']:.3f}\n"
        f"  scipy MST + BFS   {result['scipy_ms_per_image']:.3f} (costs not counted)\n"
        f"  ratio grootvl / scipy = {result['ratio']:.2f} (target <= 0.5); in CPU time of all threads "
        f"{result['ours_cpu_ms_per_image']:.3f} / {result['scipy_cpu_ms_per_image']:.3f} = {result['cpu_ratio']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch and numba threads")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    print(format_result(measure_tree_construction(repeats=args.repeats)))


if __name__ == "__main__":
    main()
