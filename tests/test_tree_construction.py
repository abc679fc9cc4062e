"""grid_edges / grid_tree / Tree, edge costs, custom ops under torch.compile, bad input."""
from __future__ import annotations

import pytest
import torch

from grootvl.ops import Tree, bfs_tree, grid_edges, grid_tree, minimum_spanning_tree
from grootvl.ops.tree import check_tree_matches, grid_edge_costs

IMPLS = ["numba", "torch"]


def test_grid_edges_order():
    # Vertical pairs row-major first, then horizontal pairs row-major (the original's order).
    assert grid_edges(2, 3).tolist() == [[0, 3], [1, 4], [2, 5], [0, 1], [1, 2], [3, 4], [4, 5]]
    assert grid_edges(3, 1).tolist() == [[0, 1], [1, 2]]
    assert grid_edges(1, 1).shape == (0, 2)
    assert grid_edges(5, 7).shape == (4 * 7 + 5 * 6, 2)


def explicit_costs(guide: torch.Tensor, cost: str) -> torch.Tensor:
    """Per-edge costs computed pair by pair in float64, in grid_edges order."""
    batch, channels, height, width = guide.shape
    flat = guide.double().reshape(batch, channels, -1)
    out = []
    for u, v in grid_edges(height, width).tolist():
        a, b = flat[:, :, u], flat[:, :, v]
        if cost == "cosine":
            cos = (a * b).sum(1) / (a.norm(dim=1).clamp_min(1e-8) * b.norm(dim=1).clamp_min(1e-8))
            out.append(torch.exp(-cos))
        elif cost == "l2":
            out.append((a - b).square().sum(1))
        else:
            out.append((a - b).abs().sum(1))
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("cost", ["cosine", "l2", "l1"])
@pytest.mark.parametrize("impl", IMPLS)
def test_grid_edge_costs_values(cost, impl):
    guide = torch.randn(2, 5, 4, 6, generator=torch.Generator().manual_seed(1))
    costs = grid_edge_costs(guide, cost, impl=impl)
    assert costs.dtype == torch.float32 and costs.shape == (2, 3 * 6 + 4 * 5)
    torch.testing.assert_close(costs.double(), explicit_costs(guide, cost), rtol=1e-5, atol=1e-5)


def test_torch_costs_are_the_original_formula_bit_for_bit():
    guide = torch.randn(2, 7, 5, 4, generator=torch.Generator().manual_seed(2))
    b, c = guide.shape[:2]
    vertical = torch.cosine_similarity(guide[:, :, :-1, :].reshape(b, c, -1), guide[:, :, 1:, :].reshape(b, c, -1), dim=1)
    horizontal = torch.cosine_similarity(guide[:, :, :, :-1].reshape(b, c, -1), guide[:, :, :, 1:].reshape(b, c, -1), dim=1)
    expected = torch.exp(-torch.cat([vertical, horizontal], dim=1))
    assert torch.equal(grid_edge_costs(guide, impl="torch"), expected)
    # Channels-last guides and bf16 guides: same costs as the contiguous float32 values.
    channels_last = guide.to(memory_format=torch.channels_last)
    assert torch.equal(grid_edge_costs(channels_last, impl="torch"), expected)
    for impl in IMPLS:
        assert torch.equal(grid_edge_costs(channels_last, impl=impl), grid_edge_costs(guide, impl=impl))
        low = guide.bfloat16()
        assert torch.equal(grid_edge_costs(low, impl=impl), grid_edge_costs(low.float(), impl=impl))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (1, 4, 1, 7), (2, 2, 6, 1), (3, 2, 1, 1), (0, 3, 4, 4)])
def test_grid_tree_is_mst_of_its_costs(impl, shape):
    guide = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    batch, _, height, width = shape
    tree = grid_tree(guide, impl=impl)
    length = height * width
    assert isinstance(tree, Tree) and tree.order.shape == (batch, length)
    tree_edges = minimum_spanning_tree(grid_edges(height, width), grid_edge_costs(guide, impl=impl), length, impl=impl)
    expected = bfs_tree(tree_edges, length, root=0, impl=impl)
    assert torch.equal(tree.parent, expected.parent) and torch.equal(tree.order, expected.order)
    assert torch.equal(tree.level_offsets, expected.level_offsets)
    if batch:
        assert (tree.root == 0).all()
    if length == 1:
        assert tree.level_offsets.tolist() == [[0, 1]] * batch and tree.parent.tolist() == [[-1]] * batch


def test_grid_tree_follows_features():
    # Two flat regions (left/right halves): the tree crosses the boundary exactly once.
    guide = torch.zeros(1, 2, 4, 6)
    guide[:, 0, :, :3] = 1.0
    guide[:, 1, :, 3:] = 1.0
    guide += 0.01 * torch.randn(guide.shape, generator=torch.Generator().manual_seed(4))
    for impl in IMPLS:
        parent = grid_tree(guide, impl=impl).parent[0]
        crossings = sum(1 for v in range(1, 24) if (v % 6 < 3) != (int(parent[v]) % 6 < 3))
        assert crossings == 1


def test_grid_tree_l2_and_no_grad():
    guide = torch.randn(2, 3, 4, 4, requires_grad=True)
    tree = grid_tree(guide, cost="l2")
    assert not tree.order.requires_grad
    expected = bfs_tree(minimum_spanning_tree(grid_edges(4, 4), grid_edge_costs(guide, "l2"), 16), 16)
    assert torch.equal(tree.parent, expected.parent)


def test_tree_container():
    tree = grid_tree(torch.randn(3, 2, 3, 4))
    assert (tree.batch_size, tree.num_vertices) == (3, 12)
    moved = tree.to("cpu")
    assert torch.equal(moved.order, tree.order) and moved.device == torch.device("cpu")
    tree.check_compatible(torch.zeros(3, 12, 5))
    with pytest.raises(ValueError, match=r"x has shape \(3, 11, 5\).*\(3, 12, \.\.\.\)"):
        tree.check_compatible(torch.zeros(3, 11, 5))
    with pytest.raises(ValueError, match="u has shape"):
        check_tree_matches(tree, torch.zeros(2, 12, 5), "u")
    with pytest.raises(TypeError, match="tree must be a grootvl.ops.Tree"):
        check_tree_matches((tree.order, tree.parent), torch.zeros(3, 12, 5))
    with pytest.raises(ValueError, match="is on meta but the tree is on cpu"):
        tree.check_compatible(torch.zeros(3, 12, 5, device="meta"))
    with pytest.raises(TypeError, match=r"tree.parent must be an int64"):
        Tree(tree.order, tree.parent.int(), tree.level_offsets).check_compatible(torch.zeros(3, 12, 5))
    with pytest.raises(ValueError, match=r"tree.order \(3, 12\), tree.parent \(2, 12\)"):
        Tree(tree.order, tree.parent[:2], tree.level_offsets).check_compatible(torch.zeros(3, 12, 5))


def test_custom_ops_under_torch_compile():
    def model(guide):
        tree = grid_tree(guide, impl="numba")
        return tree.order, tree.parent, tree.level_offsets

    compiled = torch.compile(model, backend="aot_eager", fullgraph=False)
    guide = torch.randn(2, 3, 4, 5)
    (order, parent, offsets), want = compiled(guide), model(guide)
    assert torch.equal(order, want[0]) and torch.equal(parent, want[1])
    # compiled: level_offsets padded with L to the static width L + 1 (the depth is data-dependent)
    depth_plus_one = want[2].shape[1]
    assert offsets.shape == (2, 21)
    assert torch.equal(offsets[:, :depth_plus_one], want[2]) and bool((offsets[:, depth_plus_one:] == 20).all())


def test_fake_impls_give_static_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with FakeTensorMode(shape_env=ShapeEnv()):
        edges = torch.empty(12, 2, dtype=torch.long)
        tree_edges = torch.ops.grootvl.minimum_spanning_tree(edges, torch.empty(3, 12), 9, "torch")
        assert tree_edges.shape == (3, 8, 2)
        order, parent, offsets = torch.ops.grootvl.bfs_tree(tree_edges, 9, 0, "torch")
        assert order.shape == parent.shape == (3, 9) and offsets.shape[0] == 3
        order, parent, offsets = torch.ops.grootvl.grid_mst(torch.empty(2, 12), 3, 3, 8, "torch")
        assert order.shape == parent.shape == (2, 9) and offsets.shape[0] == 2
        order, parent, offsets = torch.ops.grootvl.grid_tree(torch.empty(2, 4, 3, 3), "l1", 8, "torch")
        assert order.shape == parent.shape == (2, 9) and offsets.shape[0] == 2


# ---- bad input -------------------------------------------------------------------------

EDGES = grid_edges(2, 2)  # 4 edges on 4 vertices


@pytest.mark.parametrize(
    "costs, error, pattern",
    [
        (torch.rand(4), ValueError, r"costs must have shape \(B, E\).*unsqueeze\(0\)"),
        (torch.rand(2, 5), ValueError, "costs has 5 columns but edges has 4 rows"),
        (torch.ones(2, 4, dtype=torch.long), TypeError, "costs must be a real floating-point tensor.*costs.float"),
        (torch.ones(2, 4, dtype=torch.complex64), TypeError, "complex costs have no order"),
        ([[1.0, 2.0, 3.0, 4.0]], TypeError, "costs must be a floating-point tensor"),
        (torch.tensor([[1.0, float("nan"), 2.0, 3.0]]), ValueError, r"costs\[0\] contains NaN"),
    ],
)
@pytest.mark.parametrize("impl", IMPLS)
def test_bad_costs(costs, error, pattern, impl):
    with pytest.raises(error, match=pattern):
        minimum_spanning_tree(EDGES, costs, 4, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_edges(impl):
    costs = torch.rand(1, 4)
    with pytest.raises(ValueError, match=r"edges holds vertex ids in \[0, 4\] but num_vertices=4"):
        minimum_spanning_tree(torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4]]), costs, 4, impl=impl)
    with pytest.raises(ValueError, match=r"edges holds vertex ids in \[-1, 3\]"):
        minimum_spanning_tree(torch.tensor([[0, 1], [1, 2], [2, 3], [3, -1]]), costs, 4, impl=impl)
    with pytest.raises(TypeError, match="edges must hold integer vertex ids"):
        minimum_spanning_tree(EDGES.float(), costs, 4, impl=impl)
    with pytest.raises(ValueError, match=r"edges must have shape \(E, 2\)"):
        minimum_spanning_tree(EDGES.T, costs, 4, impl=impl)
    with pytest.raises(ValueError, match="not connected.*forest has 2 components"):
        minimum_spanning_tree(torch.tensor([[0, 1], [1, 2], [3, 4], [0, 2]]), costs, 5, impl=impl)
    with pytest.raises(ValueError, match="num_vertices must be a positive int"):
        minimum_spanning_tree(EDGES, costs, 0, impl=impl)


def test_bad_devices_and_impl():
    with pytest.raises(ValueError, match="edges is on meta but costs is on cpu"):
        minimum_spanning_tree(EDGES.to("meta"), torch.rand(1, 4), 4)
    with pytest.raises(ValueError, match="impl='numba' runs on CPU tensors only.*impl='torch'"):
        minimum_spanning_tree(EDGES.to("meta"), torch.rand(1, 4, device="meta"), 4, impl="numba")
    with pytest.raises(ValueError, match="impl='cuda' is not a tree construction implementation"):
        grid_tree(torch.rand(1, 2, 3, 3), impl="cuda")


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_tree_edges(impl):
    cycle = torch.tensor([[[0, 1], [1, 2], [2, 0]]])  # 4 vertices, vertex 3 unreachable
    with pytest.raises(ValueError, match=r"tree_edges\[0\] is not a spanning tree of the 4 vertices"):
        bfs_tree(cycle, 4, impl=impl)
    forest = torch.tensor([[[0, 1], [1, 2], [2, 3]], [[0, 1], [2, 3], [3, 2]]])  # row 1: two parts
    with pytest.raises(ValueError, match=r"tree_edges\[1\] is not a spanning tree.*cycle or is disconnected"):
        bfs_tree(forest, 4, impl=impl)
    with pytest.raises(ValueError, match=r"tree_edges must have shape \(B, V-1, 2\) = \(B, 3, 2\)"):
        bfs_tree(torch.zeros(1, 4, 2, dtype=torch.long), 4, impl=impl)
    with pytest.raises(ValueError, match=r"tree_edges holds vertex ids in \[0, 7\]"):
        bfs_tree(torch.tensor([[[0, 1], [1, 2], [2, 7]]]), 4, impl=impl)
    with pytest.raises(ValueError, match=r"root must be an int vertex id in \[0, 3\]"):
        bfs_tree(torch.tensor([[[0, 1], [1, 2], [2, 3]]]), 4, root=4, impl=impl)
    with pytest.raises(TypeError, match="tree_edges must hold integer vertex ids"):
        bfs_tree(torch.zeros(1, 3, 2), 4, impl=impl)


def test_bad_guide():
    with pytest.raises(ValueError, match=r"guide must be 4-D \(B, C, H, W\), got shape \(2, 16, 8\)"):
        grid_tree(torch.rand(2, 16, 8))
    with pytest.raises(ValueError, match=r"guide must be 4-D .*guide.permute\(0, 3, 1, 2\)"):
        grid_edge_costs(torch.rand(2, 16, 8))
    with pytest.raises(TypeError, match="guide must be a floating-point tensor"):
        grid_tree(torch.ones(1, 2, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="cost='cos' is not a grid edge cost"):
        grid_tree(torch.rand(1, 2, 3, 3), cost="cos")
    with pytest.raises(ValueError, match=r"root must be an int vertex id in \[0, 8\], got 9"):
        grid_tree(torch.rand(1, 2, 3, 3), root=9)
    for batch in (1, 4):  # stage by stage, and fused (numba, batch >= threads)
        with pytest.raises(ValueError, match=r"costs.*\[0\] contain.* NaN"):
            grid_tree(torch.full((batch, 2, 3, 3), float("nan")))


@pytest.mark.parametrize("shape", [(2, 37, 19, 13), (1, 640, 14, 14), (3, 3, 1, 9)])
def test_channels_last_costs_equal_contiguous_costs_bit_for_bit(shape):
    """The numba kernel transposes channels-last rows in blocks of eight pixels plus a rest;
    several row blocks, odd widths and many channels give the same costs as NCHW."""
    guide = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    for cost in ("cosine", "l2", "l1"):
        assert torch.equal(grid_edge_costs(guide.to(memory_format=torch.channels_last), cost,
                                           impl="numba"),
                           grid_edge_costs(guide, cost, impl="numba"))


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_cpu_kernel_matches_stage_by_stage(monkeypatch, channels_last):
    import grootvl.ops.tree as tree_module

    guide = torch.randn(3, 5, 7, 6, generator=torch.Generator().manual_seed(5))
    if channels_last:
        guide = guide.to(memory_format=torch.channels_last)
    for cost, root in (("cosine", 0), ("l2", 0), ("l1", 0), ("cosine", 41)):
        monkeypatch.setattr(tree_module, "_numba_threads", lambda: 1)  # batch >= threads: fused
        fused = grid_tree(guide, cost=cost, impl="numba", root=root)
        monkeypatch.setattr(tree_module, "_numba_threads", lambda: 99)  # stage by stage
        staged = grid_tree(guide, cost=cost, impl="numba", root=root)
        for field in ("order", "parent", "level_offsets"):
            assert torch.equal(getattr(fused, field), getattr(staged, field))
