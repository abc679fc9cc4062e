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

    ``num_used[b]`` receives the number of tree edges found (V-1 iff the graph is connected),
    or -1 if row b has a NaN cost.
    """
    batch = costs.shape[0]
    num_edges = edges.shape[0]
    for b in nb.prange(batch):
        keys = np.empty(num_edges, np.uint32)
        if _sortable_keys(costs[b], keys):
            num_used[b] = -1
            continue
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
        if np.isnan(costs[b]).any():
            num_used[b] = -1
            continue
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


_COST_BLOCK = 2048  # pixels per parallel job: the three accumulators stay in L1


@nb.njit(cache=True, parallel=True)
def grid_costs(guide, cosine, costs):
    """Edge costs of the 4-neighbour grid of a contiguous float32 guide (B, C, H, W).

    cosine=True: exp(-cos(u, v)) with cos = <u, v> / (max(|u|, eps) * max(|v|, eps)) and
    eps = 1e-8 as in torch.cosine_similarity; cosine=False: |u - v|^2. costs (B, E) is filled
    in ``grid_edges`` order: vertical edges, then horizontal ones.

    One streaming pass over the guide: pixels are split in blocks; for every channel a block
    accumulates |x_p|^2, <x_p, x_{p+W}> (down) and <x_p, x_{p+1}> (right) with contiguous,
    vectorisable loops. Sums run over channels in order, in float32.
    """
    batch, channels, height, width = guide.shape
    hw = height * width
    flat = guide.reshape(batch, channels, hw)
    sq = np.empty((batch, hw), np.float32)
    down = np.empty((batch, hw), np.float32)
    right = np.empty((batch, hw), np.float32)
    blocks = (hw + _COST_BLOCK - 1) // _COST_BLOCK
    for job in nb.prange(batch * blocks):
        b = job // blocks
        p0 = (job - b * blocks) * _COST_BLOCK
        p1 = min(p0 + _COST_BLOCK, hw)
        n_down = max(min(p1, hw - width) - p0, 0)  # pixels that have a lower neighbour
        n_right = max(min(p1, hw - 1) - p0, 0)  # (wrap-around pairs are discarded below)
        # Fresh local accumulators: LLVM knows they alias nothing, so the loops vectorise.
        acc_sq = np.zeros(p1 - p0, np.float32)
        acc_down = np.zeros(p1 - p0, np.float32)
        acc_right = np.zeros(p1 - p0, np.float32)
        for ch in range(channels):
            x = flat[b, ch, p0:]
            x_down = flat[b, ch, p0 + width:]
            x_right = flat[b, ch, p0 + 1:]
            if cosine:
                for i in range(n_down):
                    a = x[i]
                    acc_sq[i] += a * a
                    acc_down[i] += a * x_down[i]
                    acc_right[i] += a * x_right[i]
                for i in range(n_down, p1 - p0):
                    a = x[i]
                    acc_sq[i] += a * a
                    if i < n_right:
                        acc_right[i] += a * x_right[i]
            else:
                for i in range(n_down):
                    a = x[i]
                    d = a - x_down[i]
                    acc_down[i] += d * d
                    d = a - x_right[i]
                    acc_right[i] += d * d
                for i in range(n_down, n_right):
                    d = x[i] - x_right[i]
                    acc_right[i] += d * d
        sq[b, p0:p1] = acc_sq
        down[b, p0:p1] = acc_down
        right[b, p0:p1] = acc_right
    num_vertical = (height - 1) * width
    eps = np.float32(1e-8)
    for job in nb.prange(batch * height):
        b = job // height
        r = job - b * height
        for c in range(width):
            p = r * width + c
            norm = max(np.sqrt(sq[b, p]), eps)
            if r + 1 < height:
                if cosine:
                    below = max(np.sqrt(sq[b, p + width]), eps)
                    costs[b, p] = np.exp(-(down[b, p] / (norm * below)))
                else:
                    costs[b, p] = down[b, p]
            if c + 1 < width:
                k = num_vertical + r * (width - 1) + c
                if cosine:
                    beside = max(np.sqrt(sq[b, p + 1]), eps)
                    costs[b, k] = np.exp(-(right[b, p] / (norm * beside)))
                else:
                    costs[b, k] = right[b, p]
