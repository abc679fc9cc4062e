"""Device-agnostic tree construction with batched tensor ops (used on CUDA and other devices).

No Python loop runs per image: every step works on the whole batch at once, and the number of
steps depends only on V, never on the data. Borůvka runs a fixed ``ceil(log2 V)`` rounds
(components at least halve per round), each with a fixed number of pointer-jumping steps, so
it needs no host synchronisation at all; the BFS needs one (its output length).
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


def bfs_euler(tree_edges: Tensor, num_vertices: int, root: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Breadth-first order of every tree of the batch, in O(log V) batched tensor steps.

    A level-synchronous BFS needs one step (and one host sync) per tree level, and minimum
    spanning trees of image grids are hundreds of levels deep. Instead: the Euler tour of
    each tree (every edge walked down and up once) is found by list ranking with pointer
    jumping; an edge's child end is the end the tour enters first, and a vertex's depth is
    the running sum of +1 (down) / -1 (up) steps along the tour. Sorting by depth gives a
    breadth-first order. One host sync in all, for the number of levels (an output shape).

    Returns ``(order (B, V), parent (B, V), level_offsets (B, D+1), ok (B,))``; ``ok[b]`` is
    False when row b is not a spanning tree (then the other rows are still correct).
    """
    batch = tree_edges.shape[0]
    v_count = num_vertices
    device = tree_edges.device
    n = v_count - 1
    arcs = 2 * n
    if batch == 0 or n == 0:
        order = torch.arange(v_count, device=device).repeat(batch, 1)
        parent = torch.full((batch, v_count), -1, dtype=torch.long, device=device)
        level_offsets = torch.tensor([0, v_count], device=device).repeat(batch, 1)
        return order, parent, level_offsets, torch.ones(batch, dtype=torch.bool, device=device)

    src = torch.cat([tree_edges[..., 0], tree_edges[..., 1]], dim=1)  # arc a: src[a] -> dst[a]
    dst = torch.cat([tree_edges[..., 1], tree_edges[..., 0]], dim=1)  # twin of arc a: a +- n
    arc_ids = torch.arange(arcs, device=device).expand(batch, -1)
    # Adjacency lists: arcs sorted by source; list of v = sorted[first[v] : first[v] + deg[v]].
    by_source = torch.sort(src, dim=1, stable=True).indices
    position = torch.empty_like(by_source).scatter_(1, by_source, arc_ids)
    degree = torch.zeros(batch, v_count, dtype=torch.long, device=device)
    degree.scatter_add_(1, src, torch.ones_like(src))
    list_end = degree.cumsum(dim=1)
    list_start = list_end - degree
    # Euler tour successor of u->v: the arc after v->u in v's (circular) adjacency list.
    twin = (arc_ids + n) % arcs
    next_position = position.gather(1, twin) + 1
    wrap = next_position >= list_end.gather(1, dst)
    next_position = torch.where(wrap, list_start.gather(1, dst), next_position)
    successor = by_source.gather(1, next_position)
    # Cut the tour where it returns to the root's first arc; rank arcs by distance to the end.
    root_has_arc = degree[:, root] > 0
    start = by_source.gather(1, list_start[:, root : root + 1].clamp_max(arcs - 1))
    is_last = successor == start
    jump = torch.where(is_last, arc_ids, successor)
    to_end = (~is_last).long()
    for _ in range(_log2_ceil(arcs)):
        to_end = to_end + to_end.gather(1, jump)
        jump = jump.gather(1, jump)
    # All arcs on one tour from the root: the edges are connected (checked below with degrees).
    one_tour = root_has_arc & (to_end.gather(1, start).squeeze(1) == arcs - 1)
    tour_position = (arcs - 1 - to_end).clamp(0, arcs - 1)

    first_way = tour_position[:, :n] < tour_position[:, n:]
    down = torch.where(first_way, arc_ids[:, :n], arc_ids[:, n:])  # parent -> child arc per edge
    child = dst.gather(1, down)
    parent = torch.full((batch, v_count), -1, dtype=torch.long, device=device)
    parent.scatter_(1, child, src.gather(1, down))
    times_child = torch.zeros(batch, v_count, dtype=torch.long, device=device)
    times_child.scatter_add_(1, child, torch.ones_like(child))
    expected = torch.ones(v_count, dtype=torch.long, device=device)
    expected[root] = 0
    ok = one_tour & (times_child == expected).all(dim=1)

    step = torch.full((batch, arcs), -1, dtype=torch.long, device=device)
    step.scatter_(1, tour_position.gather(1, down), torch.ones_like(down))
    depth_along_tour = step.cumsum(dim=1)
    depth = torch.zeros(batch, v_count, dtype=torch.long, device=device)
    depth.scatter_(1, child, depth_along_tour.gather(1, tour_position.gather(1, down)))
    depth = depth.clamp(0, n)  # only matters for rows that are not trees (ok False)

    order = torch.sort(depth, dim=1, stable=True).indices
    num_levels = int(depth.max()) + 1  # the one host sync: the output's shape depends on it
    counts = torch.zeros(batch, num_levels, dtype=torch.long, device=device)
    counts.scatter_add_(1, depth, torch.ones_like(depth))
    level_offsets = torch.cat([torch.zeros(batch, 1, dtype=torch.long, device=device), counts.cumsum(dim=1)], 1)
    return order, parent, level_offsets, ok
