"""TreeSSM layer: oracle against an explicitly built MST + dense reference scan, dtypes, sharing."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree as scipy_mst

from grootvl.layers import TreeSSM
from grootvl.ops import bfs_tree, grid_edges


def _guide(layer: TreeSSM, x: torch.Tensor) -> torch.Tensor:
    """The layer's guide features recomputed from its weights: (B, D, H, W)."""
    d = layer.d_inner
    t = x @ layer.in_proj.weight[:d].T
    return F.silu(F.conv2d(t.permute(0, 3, 1, 2), layer.conv2d.weight, padding=1, groups=d))


def _scipy_tree(guide: torch.Tensor):
    """MST of exp(-cosine) 4-neighbour costs by scipy, rooted at 0 via bfs_tree."""
    b, _, h, w = guide.shape
    edges = grid_edges(h, w)
    g = guide.float().reshape(b, guide.shape[1], h * w)
    cos = F.cosine_similarity(g[:, :, edges[:, 0]], g[:, :, edges[:, 1]], dim=1)
    costs = torch.exp(-cos).numpy().astype(np.float64)
    rows = []
    for i in range(b):
        assert len(np.unique(costs[i])) == costs.shape[1], "tied costs: the MST is not unique"
        m = scipy_mst(coo_matrix((costs[i], (edges[:, 0].numpy(), edges[:, 1].numpy())),
                                 shape=(h * w, h * w))).tocoo()
        rows.append(np.stack([m.row, m.col], axis=1))
    tree_edges = torch.from_numpy(np.stack(rows)).long()
    return bfs_tree(tree_edges, h * w, root=0), tree_edges


def _edge_set(tree) -> list[set]:
    out = []
    for parent in tree.parent:
        out.append({frozenset((v, int(p))) for v, p in enumerate(parent.tolist()) if p >= 0})
    return out


def test_layer_matches_scipy_mst_and_dense_reference_scan_float64():
    torch.manual_seed(0)
    layer = TreeSSM(16).double()
    with torch.no_grad():
        layer.A_logs.uniform_(-1.0, 1.0)  # varied decays, not just the init
        layer.Ds.uniform_(0.5, 1.5)
    x = torch.randn(2, 6, 7, 16, dtype=torch.float64)
    fast, fast_tree = layer(x)
    with torch.no_grad():
        scipy_tree, tree_edges = _scipy_tree(_guide(layer, x))
    assert _edge_set(fast_tree) == _edge_set(scipy_tree)
    ref_layer = TreeSSM(16, scan_impl="reference").double()
    ref_layer.load_state_dict(layer.state_dict())
    ref, _ = ref_layer(x, scipy_tree)
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)


def test_layer_gradients_flow_through_scan_and_match_reference():
    torch.manual_seed(1)
    layer = TreeSSM(8).double()
    ref_layer = TreeSSM(8, scan_impl="reference").double()
    ref_layer.load_state_dict(layer.state_dict())
    x = torch.randn(1, 4, 5, 8, dtype=torch.float64, requires_grad=True)
    out, tree = layer(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    gx = x.grad.clone()
    x.grad = None
    out_ref, _ = ref_layer(x, tree)
    (out_ref * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    torch.testing.assert_close(gx, x.grad)
    for n, p in ref_layer.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, msg=n)
    assert grads["A_logs"].abs().sum() > 0 and grads["dt_projs_bias"].abs().sum() > 0


@pytest.mark.parametrize("lean", [True, False])
def test_scan_path_is_float32_under_bf16_autocast(lean, monkeypatch):
    import importlib

    import grootvl.layers.tree_ssm as module

    lean_module = importlib.import_module("grootvl.ops.selective_tree_scan")  # not the function

    seen = {}
    real_scan, real_scans = module.tree_scan, lean_module._scans

    def spy(u, decay, tree, **kwargs):
        seen["dtypes"] = (u.dtype, decay.dtype)
        return real_scan(u, decay, tree, **kwargs)

    def lean_spy(u, decay, *args):
        seen["dtypes"] = (u.dtype, decay.dtype)
        return real_scans(u, decay, *args)

    monkeypatch.setattr(module, "tree_scan", spy)
    monkeypatch.setattr(lean_module, "_scans", lean_spy)
    torch.manual_seed(2)
    layer = TreeSSM(16)
    layer.lean_backward = lean
    x = torch.randn(2, 5, 5, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(x)
    assert seen["dtypes"] == (torch.float32, torch.float32)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and layer.A_logs.grad.dtype == torch.float32
    full, _ = layer(x)
    torch.testing.assert_close(out.float(), full, rtol=0.05, atol=0.02)


def _varied(layer: TreeSSM) -> TreeSSM:
    """Perturb the parameters left at constants by the init, so every gradient is exercised."""
    with torch.no_grad():
        for norm in (layer.h_norm, layer.out_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        layer.A_logs.uniform_(-1.0, 1.0)
        layer.Ds.uniform_(0.5, 1.5)
    return layer


def test_lean_layer_passes_gradcheck_float64():
    torch.manual_seed(5)
    layer = _varied(TreeSSM(4, dt_rank=1).double())
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    _, tree = layer(x)  # fixed, so that the perturbations cannot change the tree
    params = dict(layer.named_parameters())

    def run(x, *values):
        return torch.func.functional_call(layer, dict(zip(params, values)), (x, tree))[0]

    assert torch.autograd.gradcheck(run, (x, *params.values()))


@pytest.mark.parametrize("dtype, tol, variant", [
    (torch.float64, 1e-10, {}), (torch.float32, 1e-4, {}),
    (torch.float64, 1e-10, dict(topology="cross")), (torch.float64, 1e-10, dict(root="last")),
    (torch.float64, 1e-10, dict(topology="cross", root="first"))])
def test_lean_and_plain_layers_give_the_same_gradients(dtype, tol, variant):
    torch.manual_seed(6)
    layer = _varied(TreeSSM(24, **variant).to(dtype))
    x = torch.randn(2, 6, 7, 24, dtype=dtype, requires_grad=True)
    weight = torch.randn(2, 6, 7, 24, dtype=dtype)
    results = []
    tree = None
    for lean in (True, False):
        layer.lean_backward = lean
        layer.zero_grad()
        out, tree = layer(x, tree)
        (out * weight).sum().backward()
        results.append([out.detach(), x.grad.clone(), *(p.grad.clone() for p in layer.parameters())])
        x.grad = None
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())


def test_given_tree_is_used_and_returned():
    torch.manual_seed(3)
    layer = TreeSSM(8)
    x = torch.randn(1, 4, 4, 8)
    _, own = layer(x)
    chain = torch.stack([torch.arange(15), torch.arange(1, 16)], 1).unsqueeze(0)
    other = bfs_tree(chain, 16)
    out_other, used = layer(x, other)
    assert used is other
    out_own, _ = layer(x, own)
    assert not torch.allclose(out_other, out_own)


@pytest.mark.parametrize("kwargs, match", [(dict(d_state=4), "d_state"), (dict(d_conv=2), "d_conv")])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TreeSSM(8, **kwargs)


def test_channels_first_input_is_rejected_with_a_hint():
    with pytest.raises(ValueError, match="channels-last"):
        TreeSSM(8)(torch.randn(1, 8, 4, 4 + 1))


def test_parameter_names_shapes_and_init():
    layer = TreeSSM(80)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert list(shapes) == ["x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds",
                            "out_norm.weight", "out_norm.bias", "h_norm.weight", "h_norm.bias",
                            "in_proj.weight", "conv2d.weight", "out_proj.weight"]
    assert shapes["x_proj_weight"] == (1, 7, 160) and shapes["dt_projs_weight"] == (1, 160, 5)
    dt = F.softplus(layer.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert layer.dt_projs_weight.abs().max() <= 5 ** -0.5
    torch.testing.assert_close(layer.A_logs, torch.zeros(160, 1))
    torch.testing.assert_close(layer.Ds, torch.ones(160))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_inference_path_matches_autograd_path(dtype, tol, monkeypatch):
    """Without autograd the layer works in place and fuses its output stage (numba on CPU)."""
    import grootvl.layers.tree_ssm as module

    impls = []
    real = module.ssm_output
    monkeypatch.setattr(module, "ssm_output", lambda *a, **k: impls.append(k["impl"]) or real(*a, **k))
    torch.manual_seed(4)
    layer = _varied(TreeSSM(16).to(dtype))
    x = torch.randn(2, 6, 7, 16, dtype=dtype)
    layer.lean_backward = False
    slow, tree = layer(x)
    layer.lean_backward = True
    lean, _ = layer(x, tree)
    with torch.inference_mode():
        fast, _ = layer(x, tree)
    assert impls == ["torch", "numba"]  # the lean path runs its stages inside one op
    torch.testing.assert_close(fast, slow.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(lean, slow.detach(), rtol=tol, atol=tol)


@pytest.mark.parametrize("kwargs", [{}, {"root": "first"}, {"topology": "cross"},
                                    {"topology": "raster", "root": "last"}, {"expand": 1}])
def test_late_gate_projection_changes_no_number(kwargs, monkeypatch):
    """CPU inference projects the gate z after the scan, into whichever scan temporary the
    result does not occupy (subtree scans keep it in u, full scans in decay): bit for bit the
    result of projecting it first, for every topology, and the input is left untouched."""
    torch.manual_seed(5)
    layer = _varied(TreeSSM(16, **kwargs))
    x = torch.randn(2, 6, 7, 16)
    x_before = x.clone()
    with torch.no_grad():
        assert layer._late_gate(x)
        late, tree = layer(x)
        monkeypatch.setattr(TreeSSM, "_late_gate", lambda self, x: False)
        early, _ = layer(x, tree)
    assert torch.equal(late, early)
    assert torch.equal(x, x_before)
