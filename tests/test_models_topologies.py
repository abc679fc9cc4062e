"""Scan topology options of TreeSSM and GrootV: structure, causality, fast paths, training,
checkpoints, tree sharing and argument checks (the operators: test_scan_topologies.py)."""
from __future__ import annotations

import io
import json

import pytest
import timm
import torch

import grootvl  # noqa: F401  (registers the timm models)
from grootvl.layers import ROOTS, TOPOLOGIES, TreeSSM
from grootvl.models import GrootV
from grootvl.ops import Tree, grid_chain, grid_tree
from test_tree_scan import _one_torch_thread  # noqa: F401  (autouse: one torch thread)

# Every option the ablations compare: each topology from all roots, the single roots on the
# tree, the other edge costs, and the causal raster scan.
VARIANTS = [dict(topology=t) for t in TOPOLOGIES] + [
    dict(root="first"), dict(root="last"), dict(tree_cost="l2"), dict(tree_cost="l1"),
    dict(topology="raster", root="last"), dict(topology="cross", root="first"),
    dict(topology="random", root="last"),
]
IDS = ["-".join(f"{v}" for v in variant.values()) for variant in VARIANTS]


def layer_for(variant: dict, d_model: int = 8, seed: int = 0, **kwargs) -> TreeSSM:
    """A float64 layer with varied decays and norms (not just the init)."""
    torch.manual_seed(seed)
    layer = TreeSSM(d_model, **variant, **kwargs).double()
    with torch.no_grad():
        layer.A_logs.uniform_(-1.0, 1.0)
        layer.Ds.uniform_(0.5, 1.5)
        for norm in (layer.h_norm, layer.out_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return layer


def guide_of(layer: TreeSSM, x: torch.Tensor) -> torch.Tensor:
    """The layer's guide features (B, D, H, W), recomputed from its weights."""
    d = layer.d_inner
    t = x @ layer.in_proj.weight[:d].T
    return torch.nn.functional.silu(layer.conv2d(t.permute(0, 3, 1, 2)))


# ------------------------------------------------------------------ the trees each option uses

@pytest.mark.parametrize("root", ROOTS)
def test_each_topology_scans_the_stated_graph(root):
    height, width, length = 3, 5, 15
    x = torch.randn(2, height, width, 8, dtype=torch.float64)
    first = 0 if root != "last" else length - 1
    for topology in TOPOLOGIES:
        layer = layer_for(dict(topology=topology, root=root))
        assert layer.scan_mode == ("full" if root == "all" else "subtree")
        _, used = layer(x)
        trees = used if topology == "cross" else (used,)
        assert isinstance(used, tuple if topology == "cross" else Tree)
        for tree in trees:
            assert (tree.order[:, 0] == first).all(), topology
        if topology in ("raster", "cross"):
            assert torch.equal(trees[0].parent, grid_chain(height, width, 2, root=first).parent)
        if topology == "cross":
            column = grid_chain(height, width, 2, major="column", root=first)
            assert torch.equal(trees[1].parent, column.parent)
        if topology == "tree":
            with torch.no_grad():
                expected = grid_tree(guide_of(layer, x), root=first)
            assert torch.equal(used.parent, expected.parent)
        if topology == "random":
            _, again = layer(x)
            assert not torch.equal(used.parent, again.parent)  # drawn anew at every forward


@pytest.mark.parametrize("cost", ["cosine", "l2", "l1"])
def test_tree_cost_selects_the_edge_cost(cost):
    layer = layer_for(dict(tree_cost=cost))
    x = torch.randn(2, 4, 5, 8, dtype=torch.float64)
    _, used = layer(x)
    with torch.no_grad():
        guide = guide_of(layer, x)
    assert torch.equal(used.parent, grid_tree(guide, cost=cost).parent)
    others = [c for c in ("cosine", "l2", "l1") if c != cost]
    assert any(not torch.equal(used.parent, grid_tree(guide, cost=c).parent) for c in others)


# ------------------------------------------------------------------ causality of raster + last

@pytest.mark.parametrize("grad", [False, True])
def test_raster_last_is_causal_in_raster_order(grad):
    height, width, length = 4, 5, 20
    layer = layer_for(dict(topology="raster", root="last"))
    non_causal = layer_for(dict(topology="raster", root="all"))
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, height, width, 8, generator=generator, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        base = layer(x)[0].reshape(length, -1)
        for j in (7, 13, 19):
            changed = x.clone()
            changed.view(length, -1)[j] += torch.randn(8, generator=generator, dtype=torch.float64)
            out = layer(changed)[0].reshape(length, -1)
            reach = j - width - 1  # the 3x3 depthwise convolution reaches one row back
            torch.testing.assert_close(out[:reach], base[:reach], rtol=0, atol=1e-13)
            assert (out[reach:] - base[reach:]).abs().amax(1).min() > 0  # later outputs all see j
            # the same layer from all roots sees j everywhere
            seen = (non_causal(changed)[0] - non_causal(x)[0]).reshape(length, -1)
            assert seen.abs().amax(1).min() > 0


# ------------------------------------------------------------------ fast paths and gradients

@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_inference_path_matches_autograd_path(variant, monkeypatch):
    """CPU inference (fused numba stages, scans in place) = the autograd path, float64."""
    import grootvl.layers.tree_ssm as module

    impls = []
    real = module.ssm_output
    monkeypatch.setattr(module, "ssm_output", lambda *a, **k: impls.append(k["impl"]) or real(*a, **k))
    layer = layer_for(variant, d_model=16)
    x = torch.randn(2, 6, 7, 16, dtype=torch.float64)
    layer.lean_backward = False  # the plain autograd composition
    slow, tree = layer(x)
    layer.lean_backward = True  # one selective_tree_scan op (its stages are not seen here)
    lean, _ = layer(x, tree)
    with torch.inference_mode():
        fast, _ = layer(x, tree)
    reference = TreeSSM(16, **variant, scan_impl="reference").double()
    reference.load_state_dict(layer.state_dict())
    reference.lean_backward = False
    oracle, _ = reference(x, tree)
    assert impls == ["torch", "numba", "torch"]
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lean, slow.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(oracle, slow.detach(), rtol=1e-10, atol=1e-12)


def test_cross_sums_the_two_chain_scans():
    layer = layer_for(dict(topology="cross"))
    u = torch.randn(2, 12, 16, dtype=torch.float64)
    decay = torch.rand(2, 12, 16, dtype=torch.float64)
    row, column = grid_chain(3, 4, 2), grid_chain(3, 4, 2, major="column")
    from grootvl.ops import tree_scan

    expected = tree_scan(u, decay, row) + tree_scan(u, decay, column)
    torch.testing.assert_close(layer.scan(u, decay, (row, column)), expected)
    with torch.no_grad():  # the second scan works in u's and decay's memory
        got = layer.scan(u.clone(), decay.clone(), (row, column), overwrite_inputs=True)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("variant", [dict(topology="cross"), dict(topology="cross", root="last"),
                                     dict(root="first"), dict(topology="raster", root="last"),
                                     dict(topology="random", root="first")],
                         ids=["cross-all", "cross-last", "tree-first", "raster-last", "random-first"])
def test_layer_gradcheck(variant):
    layer = layer_for(variant, d_model=4)
    x = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    _, tree = layer(x)  # fixed tree(s): construction has no gradient
    assert torch.autograd.gradcheck(lambda t: layer(t, tree)[0], (x,), eps=1e-6, atol=1e-7)


# ------------------------------------------------------------------ models: train, save, share

TINY = dict(channels=8, depths=(1, 2), num_classes=3, drop_path_rate=0.0)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_every_option_trains_and_round_trips_through_a_checkpoint(variant):
    kwargs = dict(TINY, **variant)
    torch.manual_seed(0)
    model = timm.create_model("grootv_tiny", **kwargs)
    images = torch.randn(6, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses

    buffer = io.BytesIO()  # the options are plain JSON values, saved with the model's kwargs
    torch.save({"model": model.state_dict(), "kwargs": json.loads(json.dumps(kwargs))}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    restored = timm.create_model("grootv_tiny", **saved["kwargs"])
    restored.load_state_dict(saved["model"])
    layer = restored.levels[0].blocks[0].TreeSSM
    assert (layer.topology, layer.root, layer.tree_cost) == (
        variant.get("topology", "tree"), variant.get("root", "all"), variant.get("tree_cost", "cosine"))
    model.eval()
    restored.eval()
    with torch.no_grad():
        torch.manual_seed(1)  # the same random trees for topology="random"
        expected = model(images)
        torch.manual_seed(1)
        got = restored(images)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_stage_tree_sharing_with_every_topology(topology):
    torch.manual_seed(2)
    model = GrootV(**TINY, tree_sharing="stage", topology=topology, root="last").eval()
    used = {}
    for s, level in enumerate(model.levels):
        for b, block in enumerate(level.blocks):
            block.TreeSSM.register_forward_hook(
                lambda m, i, o, key=(s, b): used.__setitem__(key, o[1]))
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
    assert used[(1, 1)] is used[(1, 0)]  # the stage's second block reuses the first's tree(s)
    assert isinstance(used[(1, 0)], tuple if topology == "cross" else Tree)


# ------------------------------------------------------------------ argument checks

@pytest.mark.parametrize("kwargs, match", [
    (dict(topology="chain"), r"topology='chain' is not supported; use one of \('tree', 'raster', 'cross', 'random'\)"),
    (dict(root="middle"), r"root='middle' is not supported; use one of \('all', 'first', 'last'\)"),
    (dict(tree_cost="cos"), r"tree_cost='cos' is not supported; use one of \('cosine', 'l2', 'l1'\)"),
])
def test_bad_option_values_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TreeSSM(8, **kwargs)
    with pytest.raises(ValueError, match=match):
        timm.create_model("grootv_tiny", **TINY, **kwargs)


def test_a_tree_of_the_wrong_kind_is_explained():
    x = torch.randn(1, 3, 4, 8)
    _, pair = TreeSSM(8, topology="cross")(x)
    _, single = TreeSSM(8, topology="raster")(x)
    with pytest.raises(TypeError, match=r"topology='cross' scans two chains.*\(row-major chain"):
        TreeSSM(8, topology="cross")(x, single)
    with pytest.raises(TypeError, match="topology='tree' scans one tree"):
        TreeSSM(8)(x, pair)
