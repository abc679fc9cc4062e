"""FLOP and parameter counts as the paper reports them (fvcore default handles, tree ops apart)."""
import pytest

from grootvl.flops import count_flops_params, tree_work


@pytest.mark.parametrize("name, params, gflops", [
    ("grootv_tiny", "29.96", "4.78"),
    ("grootv_small", "51.33", "8.52"),
    ("grootv_base", "90.60", "15.09"),
])
def test_paper_parameter_and_flop_counts(name, params, gflops):
    report = count_flops_params(name, input_size=(3, 224, 224))
    assert f"{report.params / 1e6:.2f}" == params
    assert f"{report.gflops:.2f}" == gflops
    # the tree ops are custom ops that fvcore skips, as it skipped the original's autograd functions
    assert "grootvl::tree_scan" in report.unsupported_ops
    assert not any("minimum_spanning_tree" in op or "bfs" in op for op in report.by_operator)
    # what fvcore counts by default: convs, linears, norms, pooling; not GELU/SiLU/exp; plus
    # C·h + D·x, which the original computed as a matmul (1 per element) and we as addcmul
    counted = {k.rstrip("_") for k in report.by_operator}
    assert counted == {"conv", "linear", "addcmul", "layer_norm", "batch_norm", "adaptive_avg_pool2d"}
    assert all("silu" in op or "gelu" in op or "exp" in op or "mul" in op or "add" in op or "neg" in op
               or "softplus" in op or "lift_fresh" in op or op.startswith("grootvl::")
               for op in report.unsupported_ops), report.unsupported_ops
    assert 0 < report.tree_gflops["scan"] < report.tree_gflops["cost"] < 0.05 * report.gflops
    assert "tree ops excluded" in report.summary()
    channels = {"grootv_tiny": 80, "grootv_small": 96, "grootv_base": 128}[name]
    assert len(report.layer_shapes) == (15 if name == "grootv_tiny" else 19)
    assert report.layer_shapes[0] == (1, 56, 56, 2 * channels)
    assert report.layer_shapes[-1] == (1, 7, 7, 16 * channels)


def test_placeholder_tree_is_a_valid_spanning_tree():
    import torch

    from grootvl.flops import _comb_tree
    from grootvl.ops import tree_scan

    tree = _comb_tree(2, 3, 4, torch.device("cpu"))
    x, decay = torch.randn(2, 12, 3, dtype=torch.float64), torch.rand(2, 12, 3, dtype=torch.float64)
    torch.testing.assert_close(tree_scan(x, decay, tree, impl="numba"),
                               tree_scan(x, decay, tree, impl="reference"))


def test_tree_work_formula():
    cost, mst, scan = tree_work(batch=2, height=3, width=4, channels=5)
    edges = 2 * 4 + 3 * 3
    assert cost == 2 * 3 * 5 * edges and scan == 2 * 4 * 5 * 11 and mst > 0


def test_counts_follow_input_size_and_reject_bad_arguments():
    from grootvl.models import GrootV

    model = GrootV(channels=16, depths=(1, 1, 1, 1), num_classes=10)
    small = count_flops_params(model, input_size=(3, 64, 64))
    wide = count_flops_params(model, input_size=(3, 64, 128))
    assert 1.9 < wide.gflops / small.gflops < 2.1 and model.training
    with pytest.raises(ValueError, match="input_size"):
        count_flops_params(model, input_size=(64, 64))
    with pytest.raises(TypeError, match="model_or_name"):
        count_flops_params(3)


def test_tree_work_follows_the_scan_topology():
    shape = dict(batch=1, height=4, width=5, channels=3)
    tree = tree_work(**shape)
    assert tree == tree_work(**shape, topology="tree", root="all", tree_cost="cosine")
    cost, mst, scan = tree
    # chains: no edge costs and no MST (built once, cached); cross scans two of them
    assert tree_work(**shape, topology="raster") == (0.0, 0.0, scan)
    assert tree_work(**shape, topology="cross") == (0.0, 0.0, 2 * scan)
    # a random tree needs an MST but no pass over the features
    assert tree_work(**shape, topology="random") == (0.0, mst, scan)
    # one root: the subtree scan is the up pass only (1 of the full scan's 4 operations)
    assert tree_work(**shape, root="last") == (cost, mst, scan / 4)
    assert tree_work(**shape, tree_cost="l1") == tree_work(**shape, tree_cost="l2") == (2 * cost / 3, mst, scan)


def test_counts_record_each_layers_scan_options():
    from grootvl.models import GrootV

    model = GrootV(channels=8, depths=(1, 1, 1, 1), num_classes=2, topology="cross", root="first")
    report = count_flops_params(model, input_size=(3, 32, 32))
    assert report.layer_options == [("cross", "first", "cosine")] * 4
    expected = sum(tree_work(*shape, "cross", "first")[2] for shape in report.layer_shapes)
    assert report.tree_gflops == {"cost": 0.0, "scan": pytest.approx(expected / 1e9)}
    assert report.mst_comparisons == 0.0
