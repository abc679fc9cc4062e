"""CPU kernels for tree construction (numba, parallel over the batch).

Kernels take and return NumPy arrays and know nothing about torch; ``mst.py`` and
``tree.py`` wrap them. Every kernel is ``cache=True`` so the compile cost is paid once per
machine, not once per process. Row functions (``*_row``) are serial; the batch kernels run
them with ``prange`` over the batch.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from ._tree_costs_numba import image_costs


@nb.njit(cache=True)
def _find(root_of, v):
    # Path halving: every visited node skips to its grandparent.
    while root_of[v] != v:
        root_of[v] = root_of[root_of[v]]
        v = root_of[v]
    return v


@nb.njit(cache=True)
def _sortable_keys(costs_row, keys):
    """Map float32 costs to uint32 keys with the same order (-0.0 == +0.0 like float compare).

    Returns True if a cost is NaN (NaN has no place in the order).
    """
    bits = costs_row.view(np.uint32)
    has_nan = False
    for i in range(bits.shape[0]):
        if costs_row[i] != costs_row[i]:
            has_nan = True
        b = bits[i]
        if b == np.uint32(0x80000000):  # -0.0 compares equal to +0.0
            b = np.uint32(0)
        if b & np.uint32(0x80000000):
            keys[i] = ~b
        else:
            keys[i] = b | np.uint32(0x80000000)
    return has_nan


@nb.njit(cache=True)
def _radix_argsort_u32(keys):
    """Stable LSD radix argsort of uint32 keys: 3 passes of 11 bits, keys carried along.

    Stable, so equal keys stay in index order: exactly the (cost, index) order of the contract.
    A pass whose digit is the same for every key is skipped (costs exp(-cos) in [1/e, e]
    share their top bits).
    """
    n = keys.shape[0]
    src_index = np.arange(n)
    src_key = keys.copy()
    dst_index = np.empty(n, np.int64)
    dst_key = np.empty(n, np.uint32)
    count = np.empty(2049, np.int64)
    for shift in (0, 11, 22):
        count[:] = 0
        for i in range(n):
            count[((src_key[i] >> np.uint32(shift)) & np.uint32(0x7FF)) + 1] += 1
        if count.max() == n:
            continue
        for d in range(2048):
            count[d + 1] += count[d]
        for i in range(n):
            digit = (src_key[i] >> np.uint32(shift)) & np.uint32(0x7FF)
            j = count[digit]
            dst_index[j] = src_index[i]
            dst_key[j] = src_key[i]
            count[digit] = j + 1
        src_index, dst_index = dst_index, src_index
        src_key, dst_key = dst_key, src_key
    return src_index


@nb.njit(cache=True)
def _kruskal_row(edges, order, num_vertices, out_row):
    """Kruskal over edges taken in ``order``; out_row (V-1, 2) gets the tree in index order.

    Returns the number of tree edges found (V-1 iff the graph is connected).
    """
    root_of = np.arange(num_vertices)
    size = np.ones(num_vertices, np.int64)
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
            if size[ru] < size[rv]:  # union by size keeps the find paths short
                ru, rv = rv, ru
            root_of[rv] = ru
            size[ru] += size[rv]
            chosen[e] = True
            used += 1
    # Emit in edge-index order so every implementation returns the identical tensor.
    j = 0
    for e in range(edges.shape[0]):
        if chosen[e]:
            out_row[j, 0] = edges[e, 0]
            out_row[j, 1] = edges[e, 1]
            j += 1
    out_row[j:] = 0
    return used


@nb.njit(cache=True)
def mst_row_f32(edges, costs_row, num_vertices, out_row):
    """MST of one float32 cost row; returns the edge count, or -1 if a cost is NaN."""
    keys = np.empty(costs_row.shape[0], np.uint32)
    if _sortable_keys(costs_row, keys):
        return -1
    return _kruskal_row(edges, _radix_argsort_u32(keys), num_vertices, out_row)


@nb.njit(cache=True, parallel=True)
def kruskal_f32(edges, costs, num_vertices, out, num_used):
    """Kruskal on every row of ``costs`` (B, E) float32; out (B, V-1, 2), edges by index.

    ``num_used[b]`` receives the number of tree edges found (V-1 iff the graph is connected),
    or -1 if row b has a NaN cost.
    """
    for b in nb.prange(costs.shape[0]):
        num_used[b] = mst_row_f32(edges, costs[b], num_vertices, out[b])


@nb.njit(cache=True)
def kruskal_any(edges, costs, num_vertices, out, num_used):
    """Kruskal for float64 costs, with a stable merge-sort argsort (serial: a rare dtype here,
    and a parallel kernel costs seconds more to compile)."""
    for b in range(costs.shape[0]):
        if np.isnan(costs[b]).any():
            num_used[b] = -1
        else:
            order = np.argsort(costs[b], kind="mergesort")
            num_used[b] = _kruskal_row(edges, order, num_vertices, out[b])


@nb.njit(cache=True)
def bfs_row(tree_edges, root, order, parent, level_ends):
    """Breadth-first order of one tree (V-1, 2) from ``root``.

    Writes order (V,), parent (V,) (-1 at the root) and level_ends (V,) (exclusive end of each
    level in ``order``, then V); returns (number of levels, number of vertices reached).
    """
    num_vertices = order.shape[0]
    num_edges = tree_edges.shape[0]
    list_start = np.zeros(num_vertices + 1, np.int64)
    for k in range(num_edges):
        list_start[tree_edges[k, 0] + 1] += 1
        list_start[tree_edges[k, 1] + 1] += 1
    for v in range(num_vertices):
        list_start[v + 1] += list_start[v]
    fill = list_start[:-1].copy()
    neighbours = np.empty(2 * num_edges, np.int64)
    for k in range(num_edges):
        u = tree_edges[k, 0]
        v = tree_edges[k, 1]
        neighbours[fill[u]] = v
        fill[u] += 1
        neighbours[fill[v]] = u
        fill[v] += 1
    parent[:] = -2  # unvisited
    order[0] = root
    parent[root] = -1
    head = 0
    tail = 1
    levels = 0
    while head < tail:
        level_end = tail
        while head < level_end:
            u = order[head]
            head += 1
            for k in range(list_start[u], list_start[u + 1]):
                w = neighbours[k]
                if parent[w] == -2:
                    parent[w] = u
                    order[tail] = w
                    tail += 1
        level_ends[levels] = level_end
        levels += 1
    level_ends[levels:] = num_vertices  # padding, as level_offsets wants it
    return levels, tail


@nb.njit(cache=True, parallel=True)
def bfs_batch(tree_edges, root, order, parent, level_ends, num_levels, reached):
    """bfs_row on every tree of the batch: tree_edges (B, V-1, 2), outputs (B, V) / (B,)."""
    for b in nb.prange(tree_edges.shape[0]):
        num_levels[b], reached[b] = bfs_row(tree_edges[b], root, order[b], parent[b], level_ends[b])


@nb.njit(cache=True, parallel=True)
def grid_tree_batch(guide, channels_last, kind, root, edges, order, parent, level_ends, num_levels,
                    status):
    """Edge costs, MST and BFS from vertex ``root`` for every image, one image per thread.

    One parallel region and no round trip through memory between the stages: for batches at
    least as large as the thread count this beats running the stages one after another.
    guide and kind as in ``_tree_costs_numba.grid_costs``; status[b]: vertices reached (V when
    all is well) or -1 if a cost is NaN.
    """
    num_vertices = order.shape[1]
    for b in nb.prange(guide.shape[0]):
        costs = np.empty(edges.shape[0], np.float32)
        image_costs(guide[b], channels_last, kind, costs)
        tree_edges = np.empty((num_vertices - 1, 2), np.int64)
        if mst_row_f32(edges, costs, num_vertices, tree_edges) < 0:
            status[b] = -1
            continue
        num_levels[b], status[b] = bfs_row(tree_edges, root, order[b], parent[b], level_ends[b])
