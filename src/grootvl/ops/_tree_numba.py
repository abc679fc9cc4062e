"""CPU kernels for tree construction (numba, parallel over the batch).

Kernels take and return NumPy arrays and know nothing about torch; ``mst.py`` and
``tree.py`` wrap them. Every kernel is ``cache=True`` so the compile cost is paid once per
machine, not once per process.
"""
from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, inline="always")
def _find(root_of, v):
    # Path halving: every visited node skips to its grandparent.
    while root_of[v] != v:
        root_of[v] = root_of[root_of[v]]
        v = root_of[v]
    return v


@nb.njit(cache=True)
def _sortable_keys(costs_row, keys):
    """Map float32 costs to uint32 keys with the same order (-0.0 == +0.0 like float compare)."""
    bits = costs_row.view(np.uint32)
    for i in range(bits.shape[0]):
        b = bits[i]
        if b == np.uint32(0x80000000):  # -0.0 compares equal to +0.0
            b = np.uint32(0)
        if b & np.uint32(0x80000000):
            keys[i] = ~b
        else:
            keys[i] = b | np.uint32(0x80000000)


@nb.njit(cache=True)
def _radix_argsort_u32(keys, order, scratch, count):
    """Stable LSD radix argsort of uint32 keys, 4 passes of 8 bits; ``order`` gets the result.

    Stable, so equal keys stay in index order: exactly the (cost, index) order of the contract.
    """
    n = keys.shape[0]
    for i in range(n):
        order[i] = i
    src = order
    dst = scratch
    for shift in range(0, 32, 8):
        for d in range(257):
            count[d] = 0
        for i in range(n):
            count[((keys[src[i]] >> np.uint32(shift)) & np.uint32(0xFF)) + 1] += 1
        for d in range(256):
            count[d + 1] += count[d]
        for i in range(n):
            digit = (keys[src[i]] >> np.uint32(shift)) & np.uint32(0xFF)
            dst[count[digit]] = src[i]
            count[digit] += 1
        src, dst = dst, src
    # four passes: the result is back in ``order``


@nb.njit(cache=True, parallel=True)
def kruskal_f32(edges, costs, num_vertices, out, num_used):
    """Kruskal on every row of ``costs`` (B, E) float32; out (B, V-1, 2), edges by index.

    ``num_used[b]`` receives the number of tree edges found (V-1 iff the graph is connected).
    """
    batch = costs.shape[0]
    num_edges = edges.shape[0]
    for b in nb.prange(batch):
        keys = np.empty(num_edges, np.uint32)
        _sortable_keys(costs[b], keys)
        order = np.empty(num_edges, np.int64)
        scratch = np.empty(num_edges, np.int64)
        count = np.empty(257, np.int64)
        _radix_argsort_u32(keys, order, scratch, count)
        num_used[b] = _kruskal_row(edges, order, num_vertices, out[b])


@nb.njit(cache=True, parallel=True)
def kruskal_any(edges, costs, num_vertices, out, num_used):
    """Kruskal for float64 (or any float) costs, with a stable merge-sort argsort."""
    batch = costs.shape[0]
    for b in nb.prange(batch):
        order = np.argsort(costs[b], kind="mergesort")
        num_used[b] = _kruskal_row(edges, order, num_vertices, out[b])


@nb.njit(cache=True)
def _kruskal_row(edges, order, num_vertices, out_row):
    root_of = np.arange(num_vertices)
    chosen = np.zeros(edges.shape[0], np.bool_)
    need = num_vertices - 1
    used = 0
    for k in range(order.shape[0]):
        if used == need:
            break
        e = order[k]
        ru = _find(root_of, edges[e, 0])
        rv = _find(root_of, edges[e, 1])
        if ru != rv:
            # Hook the larger root under the smaller; path halving keeps trees shallow.
            if ru < rv:
                root_of[rv] = ru
            else:
                root_of[ru] = rv
            chosen[e] = True
            used += 1
    # Emit in edge-index order so every implementation returns the identical tensor.
    j = 0
    for e in range(edges.shape[0]):
        if chosen[e]:
            out_row[j, 0] = edges[e, 0]
            out_row[j, 1] = edges[e, 1]
            j += 1
    for k in range(j, out_row.shape[0]):
        out_row[k, 0] = 0
        out_row[k, 1] = 0
    return used


@nb.njit(cache=True, parallel=True)
def bfs_batch(tree_edges, num_vertices, root, order, parent, level_ends, num_levels, reached):
    """Breadth-first order of every tree in the batch.

    tree_edges (B, V-1, 2); writes order (B, V), parent (B, V), level_ends (B, V) (exclusive
    end of each level in ``order``), num_levels (B,), reached (B,) = vertices visited.
    """
    batch = tree_edges.shape[0]
    num_edges = tree_edges.shape[1]
    for b in nb.prange(batch):
        degree_start = np.zeros(num_vertices + 1, np.int64)
        for k in range(num_edges):
            degree_start[tree_edges[b, k, 0] + 1] += 1
            degree_start[tree_edges[b, k, 1] + 1] += 1
        for v in range(num_vertices):
            degree_start[v + 1] += degree_start[v]
        fill = degree_start[:-1].copy()
        neighbours = np.empty(2 * num_edges, np.int64)
        for k in range(num_edges):
            u = tree_edges[b, k, 0]
            v = tree_edges[b, k, 1]
            neighbours[fill[u]] = v
            fill[u] += 1
            neighbours[fill[v]] = u
            fill[v] += 1
        par = parent[b]
        for v in range(num_vertices):
            par[v] = -2  # unvisited
        ordr = order[b]
        ordr[0] = root
        par[root] = -1
        head = 0
        tail = 1
        levels = 0
        while head < tail:
            level_end = tail
            while head < level_end:
                u = ordr[head]
                head += 1
                for k in range(degree_start[u], degree_start[u + 1]):
                    w = neighbours[k]
                    if par[w] == -2:
                        par[w] = u
                        ordr[tail] = w
                        tail += 1
            level_ends[b, levels] = level_end
            levels += 1
        num_levels[b] = levels
        reached[b] = tail
