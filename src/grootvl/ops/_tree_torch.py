"""Device-agnostic tree construction with batched tensor ops (used on CUDA and other devices).

No Python loop runs per image: every step works on the whole batch at once. Borůvka runs a
fixed ``ceil(log2 V)`` rounds (components at least halve per round), each with a fixed number
of pointer-jumping steps, so it needs no host synchronisation at all.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _log2_ceil(n: int) -> int:
    return max(1, math.ceil(math.log2(max(n, 2))))


def boruvka(edges: Tensor, costs: Tensor, num_vertices: int) -> tuple[Tensor, Tensor]:
    """Minimum spanning forest of every row of ``costs`` (B, E) over ``edges`` (E, 2).

    Returns ``(tree_edges (B, V-1, 2), num_used (B,))`` with tree edges in edge-index order.
    Ties are broken by edge index: edges are replaced by their rank in the stable sort of
    (cost, index), which makes all keys distinct (the condition for Borůvka to be correct).
    """
    batch, num_edges = costs.shape
    device = costs.device
    v_count = num_vertices
    if num_edges == 0 or batch == 0:
        out = torch.zeros(batch, max(v_count - 1, 0), 2, dtype=torch.long, device=device)
        return out, torch.zeros(batch, dtype=torch.long, device=device)

    sorted_edge = torch.argsort(costs, dim=1, stable=True)  # rank -> edge id
    rank = torch.empty_like(sorted_edge)
    rank.scatter_(1, sorted_edge, torch.arange(num_edges, device=device).expand(batch, -1))

    u = edges[:, 0].expand(batch, -1)
    v = edges[:, 1].expand(batch, -1)
    row_base = (torch.arange(batch, device=device) * v_count).unsqueeze(1)
    comp = torch.arange(v_count, device=device).repeat(batch, 1)  # component label = root id
    # Column E is a dump slot for components that have no crossing edge.
    chosen = torch.zeros(batch, num_edges + 1, dtype=torch.bool, device=device)
    no_edge = num_edges  # key larger than any rank
    jumps = _log2_ceil(v_count)

    for _ in range(_log2_ceil(v_count)):
        cu = comp.gather(1, u)
        cv = comp.gather(1, v)
        crossing = cu != cv
        key = torch.where(crossing, rank, torch.full_like(rank, no_edge))
        # Cheapest crossing edge of every component (by rank), both endpoints contribute.
        best = torch.full((batch * v_count,), no_edge, dtype=torch.long, device=device)
        best.scatter_reduce_(0, (cu + row_base).reshape(-1), key.reshape(-1), "amin")
        best.scatter_reduce_(0, (cv + row_base).reshape(-1), key.reshape(-1), "amin")
        best = best.view(batch, v_count)
        has_edge = best < no_edge
        best_edge = sorted_edge.gather(1, best.clamp_max(num_edges - 1))
        chosen.scatter_(1, torch.where(has_edge, best_edge, no_edge), True)
        # Hook each component onto the component across its cheapest edge.
        end_u = cu.gather(1, best_edge)
        end_v = cv.gather(1, best_edge)
        labels = torch.arange(v_count, device=device).expand(batch, -1)
        other = torch.where(end_u == labels, end_v, end_u)
        hook = torch.where(has_edge, other, labels)
        # Distinct keys => the only cycles are mutual pairs; the smaller label becomes root.
        mutual = (hook.gather(1, hook) == labels) & (labels < hook)
        hook = torch.where(mutual, labels, hook)
        for _ in range(jumps):
            hook = hook.gather(1, hook)
        comp = hook.gather(1, comp)

    chosen = chosen[:, :num_edges]
    num_used = chosen.sum(dim=1)
    # Chosen edges first, in index order; exactly V-1 per row when the graph is connected.
    picked = torch.sort(chosen.to(torch.uint8), dim=1, descending=True, stable=True).indices
    picked = picked[:, : v_count - 1]
    return edges[picked], num_used


def bfs_levels(tree_edges: Tensor, num_vertices: int, root: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Level-synchronous breadth-first search over the whole batch at once.

    Returns ``(order (B, V), parent (B, V), level_offsets (B, D+1), reached (B,))``. One host
    sync per level (to stop), for the whole batch; never one per image.
    """
    batch = tree_edges.shape[0]
    v_count = num_vertices
    device = tree_edges.device
    src = torch.cat([tree_edges[..., 0], tree_edges[..., 1]], dim=1)
    dst = torch.cat([tree_edges[..., 1], tree_edges[..., 0]], dim=1)
    # Column V is a dump slot for masked-out scatters.
    depth = torch.full((batch, v_count + 1), -1, dtype=torch.long, device=device)
    parent = torch.full((batch, v_count + 1), -1, dtype=torch.long, device=device)
    depth[:, root] = 0
    dump = torch.full_like(dst, v_count)
    level = 0
    while batch > 0:
        grow = (depth.gather(1, src) == level) & (depth.gather(1, dst) < 0)
        if not bool(grow.any()):
            break
        target = torch.where(grow, dst, dump)
        parent.scatter_(1, target, src)
        depth.scatter_(1, target, torch.full_like(src, level + 1))
        level += 1
    depth = depth[:, :v_count]
    parent = parent[:, :v_count]
    reached = (depth >= 0).sum(dim=1)
    # Breadth-first order = vertices sorted by depth (unreached last); ties by vertex id.
    key = torch.where(depth >= 0, depth, torch.full_like(depth, v_count))
    order = torch.sort(key, dim=1, stable=True).indices
    num_levels = level + 1
    counts = torch.zeros(batch, num_levels, dtype=torch.long, device=device)
    counts.scatter_add_(1, key.clamp_max(num_levels - 1), (depth >= 0).long())
    ends = counts.cumsum(dim=1)
    # Rows with fewer levels are padded with V (their cumulative count already equals V).
    level_offsets = torch.cat([torch.zeros(batch, 1, dtype=torch.long, device=device), ends], 1)
    return order, parent, level_offsets, reached
