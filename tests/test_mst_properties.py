"""Property tests of minimum_spanning_tree and bfs_tree (numba and torch implementations)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree as scipy_mst

from grootvl.ops import bfs_tree, grid_edges, minimum_spanning_tree

IMPLS = ["numba", "torch"]
SETTINGS = settings(max_examples=25, deadline=None)


def kruskal_reference(edges: np.ndarray, costs: np.ndarray, num_vertices: int) -> set[int]:
    """Indices of the MST edges in plain Python, ties broken by (cost, edge index)."""
    root = list(range(num_vertices))

    def find(v: int) -> int:
        while root[v] != v:
            v = root[v]
        return v

    chosen = set()
    for e in sorted(range(len(edges)), key=lambda e: (costs[e], e)):
        ru, rv = find(int(edges[e, 0])), find(int(edges[e, 1]))
        if ru != rv:
            root[ru] = rv
            chosen.add(e)
    return chosen


def edge_ids(tree_edges: torch.Tensor, edges: torch.Tensor) -> list[set[int]]:
    index = {tuple(pair): e for e, pair in enumerate(edges.tolist())}
    return [{index[tuple(pair)] for pair in row} for row in tree_edges.tolist()]


def is_spanning_tree(pairs: list[list[int]], num_vertices: int) -> bool:
    root = list(range(num_vertices))

    def find(v: int) -> int:
        while root[v] != v:
            v = root[v]
        return v

    for u, v in pairs:
        ru, rv = find(u), find(v)
        if ru == rv:
            return False
        root[ru] = rv
    return len(pairs) == num_vertices - 1


def scipy_total(edges: torch.Tensor, costs_row: np.ndarray, num_vertices: int) -> float:
    graph = coo_matrix((costs_row, (edges[:, 0].numpy(), edges[:, 1].numpy())), shape=(num_vertices,) * 2)
    return float(scipy_mst(graph.tocsr()).sum())


@st.composite
def connected_graphs(draw):
    """A random connected simple graph: a random spanning tree plus random extra edges."""
    num_vertices = draw(st.integers(2, 24))
    parents = [draw(st.integers(0, v - 1)) for v in range(1, num_vertices)]
    perm = draw(st.permutations(range(num_vertices)))
    pairs = {tuple(sorted((perm[v], perm[p]))) for v, p in zip(range(1, num_vertices), parents)}
    extra = draw(st.lists(st.tuples(st.integers(0, num_vertices - 1), st.integers(0, num_vertices - 1)), max_size=30))
    pairs |= {tuple(sorted(p)) for p in extra if p[0] != p[1]}
    pairs = draw(st.permutations(sorted(pairs)))
    # Random orientation: the tie-break depends on the index, not on the direction.
    flips = draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
    pairs = [(v, u) if f else (u, v) for (u, v), f in zip(pairs, flips)]
    return torch.tensor(pairs, dtype=torch.long), num_vertices


def integer_costs(seed: int, batch: int, num_edges: int, high: int) -> torch.Tensor:
    """Integer-valued float costs in [1, high]: many ties; positive because SciPy drops zeros."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, high + 1, (batch, num_edges), generator=generator).float()


@SETTINGS
@given(height=st.integers(1, 7), width=st.integers(1, 7), batch=st.integers(1, 3),
       high=st.sampled_from([1, 3, 1000]), seed=st.integers(0, 2**16))
def test_grid_mst_matches_scipy_and_reference(height, width, batch, high, seed):
    num_vertices = height * width
    edges = grid_edges(height, width)
    costs = integer_costs(seed, batch, edges.shape[0], high)
    results = {impl: minimum_spanning_tree(edges, costs, num_vertices, impl=impl) for impl in IMPLS}
    assert torch.equal(results["numba"], results["torch"])
    for impl, tree_edges in results.items():
        assert tree_edges.shape == (batch, num_vertices - 1, 2)
        for b, ids in enumerate(edge_ids(tree_edges, edges)):
            assert is_spanning_tree(tree_edges[b].tolist(), num_vertices), impl
            assert ids == kruskal_reference(edges.numpy(), costs[b].numpy(), num_vertices), impl
            total = float(costs[b, sorted(ids)].sum())
            assert total == pytest.approx(scipy_total(edges, costs[b].numpy(), num_vertices)), impl


@SETTINGS
@given(graph=connected_graphs(), high=st.sampled_from([2, 5, 10**6]), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]))
def test_random_graph_mst_matches_scipy_and_reference(graph, high, seed, dtype):
    edges, num_vertices = graph
    costs = integer_costs(seed, 2, edges.shape[0], high).to(dtype)
    results = {impl: minimum_spanning_tree(edges, costs, num_vertices, impl=impl) for impl in IMPLS}
    assert torch.equal(results["numba"], results["torch"])
    costs64 = costs.double().numpy()
    for b, ids in enumerate(edge_ids(results["numba"], edges)):
        assert is_spanning_tree(results["numba"][b].tolist(), num_vertices)
        assert ids == kruskal_reference(edges.numpy(), costs64[b], num_vertices)
        assert costs64[b, sorted(ids)].sum() == pytest.approx(scipy_total(edges, costs64[b], num_vertices))


def test_distinct_costs_same_tree_both_impls():
    edges = grid_edges(9, 11)
    generator = torch.Generator().manual_seed(0)
    costs = torch.rand(4, edges.shape[0], generator=generator)
    # Costs one float32 ulp apart: the order lives in the lowest mantissa bits only.
    ulps = torch.stack([torch.randperm(edges.shape[0], generator=generator) for _ in range(4)])
    costs = torch.cat([costs, 1.0 + ulps.float() * 2.0**-23])
    numba_tree = minimum_spanning_tree(edges, costs, 99, impl="numba")
    assert torch.equal(numba_tree, minimum_spanning_tree(edges, costs, 99, impl="torch"))
    assert torch.equal(numba_tree, minimum_spanning_tree(edges, costs.double(), 99, impl="numba"))
    for b, ids in enumerate(edge_ids(numba_tree, edges)):
        assert ids == kruskal_reference(edges.numpy(), costs[b].double().numpy(), 99)


def test_negative_and_signed_zero_costs():
    # The float32 radix order must treat -0.0 == +0.0 (tie by index) and order negatives.
    edges = torch.tensor([[0, 1], [1, 2], [0, 2], [2, 3], [1, 3]])
    costs = torch.tensor([[0.0, -0.0, -5.0, 2.0, -1.0], [-0.0, 0.0, 0.0, -3.0, 7.0]])
    for impl in IMPLS:
        got = edge_ids(minimum_spanning_tree(edges, costs, 4, impl=impl), edges)
        assert got == [kruskal_reference(edges.numpy(), c.numpy(), 4) for c in costs]


@st.composite
def random_trees(draw):
    num_vertices = draw(st.integers(1, 30))
    batch = draw(st.integers(0, 3))
    rows = []
    for _ in range(batch):
        perm = draw(st.permutations(range(num_vertices)))
        pairs = [(perm[v], perm[draw(st.integers(0, v - 1))]) for v in range(1, num_vertices)]
        pairs = draw(st.permutations(pairs))
        rows.append(pairs)
    tree_edges = torch.tensor(rows, dtype=torch.long).view(batch, num_vertices - 1, 2)
    root = draw(st.integers(0, num_vertices - 1))
    return tree_edges, num_vertices, root


def check_tree(tree, tree_edges: torch.Tensor, num_vertices: int, root: int) -> list[list[int]]:
    """Assert every property of the Tree contract; return each row's depth per vertex."""
    batch = tree_edges.shape[0]
    assert tree.order.shape == tree.parent.shape == (batch, num_vertices)
    assert tree.level_offsets.dim() == 2 and tree.level_offsets.shape[0] == batch
    assert tree.batch_size == batch and tree.num_vertices == num_vertices
    depths = []
    for b in range(batch):
        order, parent = tree.order[b].tolist(), tree.parent[b].tolist()
        assert sorted(order) == list(range(num_vertices))
        assert order[0] == root and parent[root] == -1
        position = {v: i for i, v in enumerate(order)}
        edge_set = {frozenset(p) for p in tree_edges[b].tolist()}
        assert {frozenset((v, parent[v])) for v in range(num_vertices) if v != root} == edge_set
        depth = [0] * num_vertices
        for v in order[1:]:
            assert position[parent[v]] < position[v]
            depth[v] = depth[parent[v]] + 1
        offsets = tree.level_offsets[b].tolist()
        assert offsets[0] == 0 and offsets == sorted(offsets)
        levels = max(depth) + 1
        assert all(o == num_vertices for o in offsets[levels:])
        for d in range(levels):
            assert all(depth[v] == d for v in order[offsets[d]:offsets[d + 1]])
        depths.append(depth)
    return depths


@SETTINGS
@given(random_trees())
def test_bfs_tree_properties(case):
    tree_edges, num_vertices, root = case
    trees = {impl: bfs_tree(tree_edges, num_vertices, root=root, impl=impl) for impl in IMPLS}
    for impl, tree in trees.items():
        check_tree(tree, tree_edges, num_vertices, root)
        assert tree.level_offsets.shape[1] >= 2
    # The parent of every vertex is unique given the root, whatever the BFS order.
    assert torch.equal(trees["numba"].parent, trees["torch"].parent)
    assert torch.equal(trees["numba"].level_offsets, trees["torch"].level_offsets)


def test_bfs_tree_root_last_on_chain():
    # GrootL roots the chain at the last token: the order is L-1, L-2, ..., 0.
    length = 6
    chain = torch.stack([torch.arange(length - 1), torch.arange(1, length)], dim=1).unsqueeze(0)
    for impl in IMPLS:
        tree = bfs_tree(chain, length, root=length - 1, impl=impl)
        assert tree.order.tolist() == [[5, 4, 3, 2, 1, 0]]
        assert tree.parent.tolist() == [[1, 2, 3, 4, 5, -1]]
        assert tree.level_offsets.tolist() == [[0, 1, 2, 3, 4, 5, 6]]
        assert int(tree.root[0]) == length - 1


@SETTINGS
@given(num_vertices=st.integers(2, 8), data=st.data())
def test_bfs_tree_accepts_exactly_spanning_trees(num_vertices, data):
    # Arbitrary V-1 vertex pairs (self-loops, duplicates, cycles included).
    pair = st.tuples(st.integers(0, num_vertices - 1), st.integers(0, num_vertices - 1))
    pairs = data.draw(st.lists(pair, min_size=num_vertices - 1, max_size=num_vertices - 1))
    root = data.draw(st.integers(0, num_vertices - 1))
    tree_edges = torch.tensor([pairs], dtype=torch.long)
    spanning = is_spanning_tree([list(p) for p in pairs], num_vertices)
    for impl in IMPLS:
        if spanning:
            check_tree(bfs_tree(tree_edges, num_vertices, root=root, impl=impl), tree_edges, num_vertices, root)
        else:
            with pytest.raises(ValueError, match="is not a spanning tree"):
                bfs_tree(tree_edges, num_vertices, root=root, impl=impl)
