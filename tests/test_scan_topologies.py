"""Scan topologies at the operator level: chains, random spanning trees, the l1 cost, roots.

The layer and model options built on them are tested in test_models_topologies.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree as scipy_mst

from grootvl.ops import bfs_tree, grid_chain, grid_edges, grid_tree, random_grid_tree, tree_scan
from grootvl.ops.tree import grid_edge_costs

SHAPES = [(3, 4), (4, 3), (1, 5), (5, 1), (1, 1)]


def row_sequence(height: int, width: int) -> list[int]:
    return list(range(height * width))


def column_sequence(height: int, width: int) -> list[int]:
    return [r * width + c for c in range(width) for r in range(height)]


def edge_set(parent_row: torch.Tensor) -> set[frozenset]:
    return {frozenset((v, int(p))) for v, p in enumerate(parent_row.tolist()) if p >= 0}


def assert_spanning_tree(tree, num_vertices: int) -> None:
    """order is a breadth-first permutation, parents precede children, and the parent
    pointers form one tree (bfs_tree rebuilds the same parents from the edges)."""
    for b in range(tree.batch_size):
        order, parent = tree.order[b].tolist(), tree.parent[b].tolist()
        assert sorted(order) == list(range(num_vertices))
        assert parent[order[0]] == -1 and sum(p < 0 for p in parent) == 1
        position = {v: i for i, v in enumerate(order)}
        assert all(position[parent[v]] < position[v] for v in order[1:])
        pairs = torch.tensor([[v, p] for v, p in enumerate(parent) if p >= 0],
                             dtype=torch.long).view(1, num_vertices - 1, 2)
        rebuilt = bfs_tree(pairs, num_vertices, root=order[0])  # raises unless spanning
        assert rebuilt.parent[0].tolist() == parent


# ---------------------------------------------------------------------- chains

@pytest.mark.parametrize("height, width", SHAPES)
@pytest.mark.parametrize("major", ["row", "column"])
def test_grid_chain_is_the_stated_chain(height, width, major):
    length = height * width
    sequence = (row_sequence if major == "row" else column_sequence)(height, width)
    chain_edges = {frozenset(p) for p in zip(sequence[:-1], sequence[1:])}
    if major == "row":
        assert chain_edges == {frozenset((i, i + 1)) for i in range(length - 1)}
    else:  # (r, c)-(r + 1, c) within columns, bottom of column c to the top of column c + 1
        down = {frozenset((r * width + c, (r + 1) * width + c))
                for r in range(height - 1) for c in range(width)}
        hop = {frozenset(((height - 1) * width + c, c + 1)) for c in range(width - 1)}
        assert chain_edges == down | hop
    for root, expected_order in ((0, sequence), (length - 1, sequence[::-1])):
        tree = grid_chain(height, width, 3, major=major, root=root)
        assert tree.order.shape == tree.parent.shape == (3, length)
        for b in range(3):
            assert tree.order[b].tolist() == expected_order  # the root first, then along
            assert edge_set(tree.parent[b]) == chain_edges
        assert tree.level_offsets.tolist() == [list(range(length + 1))] * 3
        assert_spanning_tree(tree, length)


def test_grid_chain_middle_root_and_cache():
    tree = grid_chain(3, 4, 2, major="column", root=5)
    assert tree.order[0, 0] == 5
    assert_spanning_tree(tree, 12)
    assert edge_set(tree.parent[0]) == edge_set(grid_chain(3, 4, major="column").parent[0])
    # Levels hold the (up to two) vertices at each distance from the root along the chain.
    assert tree.level_offsets[0].tolist() == [0, 1, 3, 5, 7, 9, 10, 11, 12]
    # Built once per (H, W, major, root, device): later calls return views of the same tensors.
    again = grid_chain(3, 4, 5, major="column", root=5)
    assert again.order.data_ptr() == tree.order.data_ptr() and again.batch_size == 5
    assert grid_chain(3, 4, 0).order.shape == (0, 12)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(height=0, width=3), ValueError, "height must be a positive int"),
    (dict(height=2, width=3, batch=-1), ValueError, "batch must be an int >= 0"),
    (dict(height=2, width=3, major="diagonal"), ValueError, r"major='diagonal'.*\('row', 'column'\)"),
    (dict(height=2, width=3, root=6), ValueError, r"root must be an int vertex id in \[0, 5\]"),
])
def test_grid_chain_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        grid_chain(**kwargs)


# ---------------------------------------------------------------------- scans over chains

def causal_recurrence(x: torch.Tensor, decay: torch.Tensor, sequence: list[int]) -> torch.Tensor:
    """h[s_k] = x[s_k] + decay[s_(k-1)] h[s_(k-1)] along the chain s (the decay of the edge's
    child end, which for a chain rooted at its last vertex is the earlier vertex)."""
    h = torch.zeros_like(x)
    previous = None
    for v in sequence:
        h[:, v] = x[:, v] if previous is None else x[:, v] + decay[:, previous] * h[:, previous]
        previous = v
    return h


@pytest.mark.parametrize("major", ["row", "column"])
@pytest.mark.parametrize("impl", ["numba", "torch"])
def test_chain_scans_match_the_oracle_and_the_causal_recurrence(major, impl):
    height, width, batch, channels = 3, 4, 2, 5
    length = height * width
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, length, channels, generator=generator, dtype=torch.float64)
    decay = 0.1 + 0.9 * torch.rand(batch, length, channels, generator=generator, dtype=torch.float64)
    grad = torch.randn(batch, length, channels, generator=generator, dtype=torch.float64)
    sequence = (row_sequence if major == "row" else column_sequence)(height, width)
    for root in (0, length - 1, 5):
        tree = grid_chain(height, width, batch, major=major, root=root)
        for mode in ("full", "subtree"):
            results = {}
            for name in (impl, "reference"):
                xr, dr = x.clone().requires_grad_(True), decay.clone().requires_grad_(True)
                y = tree_scan(xr, dr, tree, mode, impl=name)
                results[name] = (y, *torch.autograd.grad(y, (xr, dr), grad))
            for got, want in zip(results[impl], results["reference"]):
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        if root == length - 1:  # causal along the chain: vertex s_k sees s_0 .. s_k
            got = tree_scan(x, decay, tree, "subtree", impl=impl)
            torch.testing.assert_close(got, causal_recurrence(x, decay, sequence))
        if root == 0:  # the reverse: s_k sees s_k .. s_(L-1)
            got = tree_scan(x, decay, tree, "subtree", impl=impl)
            torch.testing.assert_close(got, causal_recurrence(x, decay, sequence[::-1]))


def test_in_place_chain_scan_matches():
    tree = grid_chain(4, 5, 2, root=19)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 20, 3, generator=generator)
    decay = torch.rand(2, 20, 3, generator=generator)
    for mode in ("full", "subtree"):
        expected = tree_scan(x, decay, tree, mode)
        got = tree_scan(x.clone(), decay.clone(), tree, mode, overwrite_inputs=True)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


# ---------------------------------------------------------------------- random spanning trees

@pytest.mark.parametrize("impl", ["numba", "torch"])
def test_random_grid_tree_spans_differs_and_is_reproducible(impl):
    height, width = 4, 5
    length = height * width
    grid = {frozenset(p) for p in grid_edges(height, width).tolist()}
    first = random_grid_tree(3, height, width, impl=impl)
    second = random_grid_tree(3, height, width, impl=impl)
    for tree in (first, second):
        assert_spanning_tree(tree, length)
        assert (tree.root == 0).all()
        for b in range(3):
            assert edge_set(tree.parent[b]) <= grid  # edges of the 4-neighbour grid only
    assert not torch.equal(first.parent, second.parent)  # drawn anew at every call
    assert len({tuple(p.tolist()) for p in first.parent}) == 3  # and per batch row
    torch.manual_seed(7)
    a = random_grid_tree(2, height, width, root=length - 1, impl=impl)
    torch.manual_seed(7)
    b = random_grid_tree(2, height, width, root=length - 1, impl=impl)
    assert torch.equal(a.parent, b.parent) and (a.root == length - 1).all()


def test_random_grid_tree_is_the_mst_of_the_drawn_costs():
    trees = {impl: random_grid_tree(2, 5, 6, generator=torch.Generator().manual_seed(3), impl=impl)
             for impl in ("numba", "torch")}
    assert torch.equal(trees["numba"].parent, trees["torch"].parent)
    costs = torch.rand(2, 4 * 6 + 5 * 5, generator=torch.Generator().manual_seed(3))
    for b in range(2):
        tree_cost = sum(costs[b, e] for e, p in enumerate(grid_edges(5, 6).tolist())
                        if frozenset(p) in edge_set(trees["numba"].parent[b]))
        assert float(tree_cost) == pytest.approx(scipy_total(costs[b].double().numpy(), 5, 6))


# ---------------------------------------------------------------------- edge costs and roots

def scipy_total(costs_row: np.ndarray, height: int, width: int) -> float:
    edges = grid_edges(height, width).numpy()
    graph = coo_matrix((costs_row, (edges[:, 0], edges[:, 1])), shape=(height * width,) * 2)
    return float(scipy_mst(graph.tocsr()).sum())


def tree_builders(monkeypatch):
    """grid_tree on every construction path: numba fused, numba stage by stage, torch."""
    import grootvl.ops.tree as tree_module

    def numba_with_threads(threads):
        def build(guide, cost, root):
            monkeypatch.setattr(tree_module, "_numba_threads", lambda: threads)
            return grid_tree(guide, cost=cost, impl="numba", root=root)
        return build

    return {"numba fused": numba_with_threads(1), "numba stage-wise": numba_with_threads(10**6),
            "torch": lambda guide, cost, root: grid_tree(guide, cost=cost, impl="torch", root=root)}


@pytest.mark.parametrize("channels_last", [False, True])
def test_l1_msts_have_scipys_total_cost_on_every_path(monkeypatch, channels_last):
    height, width = 5, 6
    guide = torch.randn(3, 7, height, width, generator=torch.Generator().manual_seed(4))
    if channels_last:
        guide = guide.to(memory_format=torch.channels_last)
    flat = guide.double().reshape(3, 7, -1)
    pairs = grid_edges(height, width)
    exact = (flat[:, :, pairs[:, 0]] - flat[:, :, pairs[:, 1]]).abs().sum(1)  # Manhattan
    for impl in ("numba", "torch"):
        torch.testing.assert_close(grid_edge_costs(guide, "l1", impl=impl).double(), exact,
                                   rtol=1e-6, atol=1e-5)
    trees = {name: build(guide, "l1", 0) for name, build in tree_builders(monkeypatch).items()}
    for name, tree in trees.items():
        assert_spanning_tree(tree, height * width)
        for b in range(3):
            ours = sum(float(exact[b, e]) for e, p in enumerate(pairs.tolist())
                       if frozenset(p) in edge_set(tree.parent[b]))
            assert ours == pytest.approx(scipy_total(exact[b].numpy(), height, width), rel=1e-9), name
        # the same rooted tree (the order within a BFS level may differ between paths)
        assert torch.equal(tree.parent, trees["torch"].parent), name
        assert torch.equal(tree.level_offsets, trees["torch"].level_offsets), name


@pytest.mark.parametrize("cost", ["cosine", "l2", "l1"])
def test_every_cost_and_root_gives_the_same_spanning_tree_on_every_path(monkeypatch, cost):
    height, width = 4, 6
    length = height * width
    guide = torch.randn(2, 5, height, width, generator=torch.Generator().manual_seed(5))
    costs = grid_edge_costs(guide, cost, impl="torch")
    for root in (0, length - 1):
        trees = {name: build(guide, cost, root) for name, build in tree_builders(monkeypatch).items()}
        for name, tree in trees.items():
            assert_spanning_tree(tree, length)
            assert (tree.root == root).all(), name
            for b in range(2):
                ours = sum(float(costs[b, e]) for e, p in enumerate(grid_edges(height, width).tolist())
                           if frozenset(p) in edge_set(tree.parent[b]))
                assert ours == pytest.approx(scipy_total(costs[b].double().numpy(), height, width),
                                             rel=1e-6), name
            assert torch.equal(tree.parent, trees["torch"].parent), name
        if root:  # the same tree as rooted at 0, only oriented towards the other root
            assert edge_set(trees["torch"].parent[0]) == edge_set(grid_tree(guide, cost=cost).parent[0])


def test_chains_and_random_trees_compile_without_graph_breaks():
    def scans(x, decay):
        causal = grid_chain(3, 4, x.shape[0], root=11)
        random = random_grid_tree(x.shape[0], 3, 4, root=11)
        return tree_scan(x, decay, causal, "subtree"), tree_scan(x, decay, random, "subtree")

    x, decay = torch.randn(2, 12, 3), torch.rand(2, 12, 3)
    compiled = torch.compile(scans, backend="aot_eager", fullgraph=True)
    torch.manual_seed(0)
    got = compiled(x, decay)
    torch.manual_seed(0)
    want = scans(x, decay)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
