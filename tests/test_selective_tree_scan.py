"""selective_tree_scan and gelu_linear: the memory-lean ops against plain autograd compositions."""
import pytest
import torch
import torch.nn.functional as F

from grootvl.ops import grid_tree, tree_scan
from grootvl.ops.gelu_linear import gelu_linear
from grootvl.ops.selective_tree_scan import selective_tree_scan
from grootvl.ops.ssm_elementwise import discretize, silu_project_discretize, ssm_output
from grootvl.ops.ssm_elementwise_backward import (output_backward,
                                                  silu_project_discretize_backward)


def plain(conv_out, z, wx, wdt, bdt, a_log, skip, h_norm, out_norm, wo, trees, mode):
    """The same computation from differentiable torch ops (autograd keeps everything)."""
    R = wdt.shape[1]
    xs = F.silu(conv_out)
    x_dbl = F.linear(xs, wx)
    u, decay = discretize(x_dbl[..., :R], wdt, bdt, xs, x_dbl[..., R:R + 1], -torch.exp(a_log))
    h = sum(tree_scan(u, decay, tree, mode) for tree in trees)
    return F.linear(ssm_output(h, x_dbl[..., R + 1:], xs, z, skip, h_norm, out_norm), wo)


def make(dtype, B=2, H=4, W=5, D=8, R=2, C=6, trees=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s, scale=1.0: torch.randn(*s, generator=g, dtype=dtype) * scale  # noqa: E731
    conv_out, z = rand(B, H * W, D), rand(B, H * W, D) * 2
    tensors = [conv_out, z, rand(R + 2, D, scale=D ** -0.5), rand(D, R, scale=R ** -0.5),
               rand(D, scale=0.5) - 2, rand(D, scale=0.5), 1 + rand(D, scale=0.2),
               1 + rand(D, scale=0.2), rand(D, scale=0.1), 1 + rand(D, scale=0.2),
               rand(D, scale=0.1), rand(C, D, scale=D ** -0.5)]
    guides = [conv_out, z][:trees]
    built = [grid_tree(t.reshape(B, H, W, D).permute(0, 3, 1, 2)) for t in guides]
    return tensors, built


def call(fn, tensors, trees, mode, **kwargs):
    conv_out, z, wx, wdt, bdt, a_log, skip, hw, hb, ow, ob, wo = tensors
    return fn(conv_out, z, wx, wdt, bdt, a_log, skip, (hw, hb, 1e-5), (ow, ob, 1e-6), wo, trees,
              mode, **kwargs)


@pytest.mark.parametrize("impl", ["numba", "torch"])
@pytest.mark.parametrize("mode, num_trees", [("full", 1), ("subtree", 1), ("full", 2),
                                             ("subtree", 2)])
def test_values_and_gradients_equal_the_plain_composition(impl, mode, num_trees):
    tensors, trees = make(torch.float64, trees=num_trees)
    for t in tensors:
        t.requires_grad_(True)
    grad = torch.randn(2, 20, 6, dtype=torch.float64)
    ref = call(plain, tensors, trees, mode)
    ref_grads = torch.autograd.grad(ref, tensors, grad)
    out = call(selective_tree_scan, tensors, trees, mode, impl=impl)
    grads = torch.autograd.grad(out, tensors, grad)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("impl, mode, num_trees", [("numba", "full", 1), ("torch", "full", 2),
                                                   ("numba", "subtree", 2)])
def test_gradcheck_float64(impl, mode, num_trees):
    tensors, trees = make(torch.float64, B=1, H=2, W=3, D=4, R=1, C=3, trees=num_trees)
    tensors = [t.requires_grad_(True) for t in tensors]
    assert torch.autograd.gradcheck(
        lambda *ts: call(selective_tree_scan, ts, trees, mode, impl=impl), tensors)


def test_float32_numba_kernels_match_torch_and_the_plain_path():
    tensors, trees = make(torch.float32, B=2, H=7, W=9, D=40, R=3, C=16)
    tensors = [t.requires_grad_(True) for t in tensors]
    grad = torch.randn(2, 63, 16)
    ref_grads = torch.autograd.grad(call(plain, tensors, trees, "full"), tensors, grad)
    for impl in ("numba", "torch"):
        grads = torch.autograd.grad(call(selective_tree_scan, tensors, trees, "full", impl=impl),
                                    tensors, grad)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=2e-4, atol=2e-5 * r.abs().max().item())


def _saved_storages(fn) -> list[torch.Size]:
    """Shapes of the unique storages autograd saves while running fn()."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.shape
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return list(seen.values())


@pytest.mark.parametrize("impl", ["numba", "torch"])
@pytest.mark.parametrize("mode", ["full", "subtree"])
def test_keeps_only_its_inputs_x_proj_output_decay_and_up_pass(impl, mode):
    tensors, trees = make(torch.float32, D=32, trees=1)
    tensors = [t.requires_grad_(True) for t in tensors]
    big = lambda shapes: [s for s in shapes if s.numel() >= 2 * 20 * 32]  # noqa: E731
    lean = big(_saved_storages(lambda: call(selective_tree_scan, tensors, trees, mode,
                                            impl=impl)))
    # conv_out, z, decay and the up pass (one per tree)
    assert sorted(map(tuple, lean)) == [(1, 2, 20, 32), (2, 20, 32), (2, 20, 32), (2, 20, 32)]
    assert len(big(_saved_storages(lambda: call(plain, tensors, trees, "full")))) >= 12


@pytest.mark.parametrize("mode", ["full", "subtree"])
def test_backward_leaves_the_saved_tensors_intact(mode):
    """Forward and backward work in dead temporaries, never in what was saved: a second
    backward through the same graph (retain_graph) gives the same gradients."""
    tensors, trees = make(torch.float32, D=16, trees=1)
    tensors = [t.requires_grad_(True) for t in tensors]
    out = call(selective_tree_scan, tensors, trees, mode, impl="numba")
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, tensors, grad, retain_graph=True)
    second = torch.autograd.grad(out, tensors, grad)
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_elementwise_stages_agree_between_numba_and_torch():
    """The stages on their own, float32, rows of odd width."""
    g = torch.Generator().manual_seed(1)
    rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    N, D, R = 70, 37, 3
    h, z, pre, g_out = (rand(N, D) for _ in range(4))
    x_dbl, decay = rand(N, R + 2), torch.rand(N, D, generator=g)
    skip, w1, b1, w2, b2, wdt, bdt = rand(D), rand(D), rand(D), rand(D), rand(D), rand(D, R), rand(D)
    a = -rand(D).exp()
    grad_u, grad_decay, wx = rand(N, D), rand(N, D), rand(R + 2, D)
    results = {}
    for impl in ("numba", "torch"):
        gxd = torch.zeros(N, R + 2)
        outs = output_backward(g_out.clone(), h, x_dbl, pre, z, skip, (w1, b1, 1e-5),
                               (w2, b2, 1e-6), gxd, impl=impl)  # numba: out in g_out's memory
        gx = outs[2].clone()
        in_grads = silu_project_discretize_backward(grad_u, grad_decay, outs[2].clone(), gxd,
                                                    decay, x_dbl, pre, wx, wdt, bdt, a,
                                                    impl=impl)  # numba: grad_pre in grad_x
        forward = silu_project_discretize(pre, wx, wdt, bdt, a, impl=impl)
        again = silu_project_discretize(pre, wx, wdt, bdt, a, x_dbl=forward[1], impl=impl,
                                        keep_x=False)
        assert again[0] is None
        output = ssm_output(h, x_dbl[..., -1:], pre, z, skip, (w1, b1, 1e-5), (w2, b2, 1e-6),
                            impl=impl, silu_x=True)
        results[impl] = [*outs, gx, gxd, *in_grads, *forward, *again[1:], output]
    for got, want in zip(results["numba"], results["torch"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_bad_arguments_are_named():
    tensors, trees = make(torch.float32)
    with pytest.raises(ValueError, match="x_proj_weight"):
        call(selective_tree_scan, [tensors[0], tensors[1], tensors[2][:, :3], *tensors[3:]],
             trees, "full")
    with pytest.raises(ValueError, match="mode"):
        call(selective_tree_scan, tensors, trees, "all")
    with pytest.raises(TypeError, match="Tree"):
        call(selective_tree_scan, tensors, [], "full")
    with pytest.raises(ValueError, match="impl"):
        call(selective_tree_scan, tensors, trees, "full", impl="triton")


def test_custom_ops_pass_opcheck_and_aot_autograd():
    tensors, trees = make(torch.float32, B=1, H=3, W=3, D=8, R=1, C=4)
    tensors = [t.requires_grad_(True) for t in tensors]
    conv_out, z, wx, wdt, bdt, a_log, skip, hw, hb, ow, ob, wo = tensors
    tree = trees[0]
    args = (conv_out, z, wx, wdt, bdt, a_log, skip, hw, hb, ow, ob, wo, [tree.order],
            [tree.parent], [tree.level_offsets], 1e-5, 1e-6, "full", "numba", "numba",
            torch.float32)
    torch.library.opcheck(torch.ops.grootvl.selective_tree_scan_v2.default, args)
    compiled = torch.compile(lambda *ts: call(selective_tree_scan, ts, trees, "full"),
                             backend="aot_eager", fullgraph=True)
    out = compiled(*tensors)
    grads = torch.autograd.grad(out.square().sum(), tensors)
    ref = call(selective_tree_scan, tensors, trees, "full")
    ref_grads = torch.autograd.grad(ref.square().sum(), tensors)
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


# ------------------------------------------------------------------------------ gelu_linear

def test_gelu_linear_equals_gelu_then_linear_and_keeps_only_its_input():
    x = torch.randn(3, 5, 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gelu_linear, (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: gelu_linear(x, w), (x, w))
    shapes = _saved_storages(lambda: gelu_linear(x, w, b))
    assert sorted(map(tuple, shapes)) == [(3, 5, 12), (4, 12)]
    assert len(_saved_storages(lambda: F.linear(F.gelu(x), w, b))) == 3
    torch.library.opcheck(torch.ops.grootvl.gelu_linear.default, (x.float(), w.float(), None))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_gelu_linear_in_row_blocks_matches_the_plain_composition(monkeypatch, dtype, tol):
    """On the CPU the op runs over blocks of rows (here 256: three blocks, the last partial):
    output and input gradient are those of one block bit for bit, the weight and bias
    gradients equal up to the order of the sum, and all match the plain composition (which
    float32 products through oneDNN match up to rounding; float64 ones bit for bit); no rows
    at all also works."""
    import sys

    # (grootvl.ops.gelu_linear, the attribute, is the function; the module is in sys.modules)
    module = sys.modules["grootvl.ops.gelu_linear"]
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 300, 12, dtype=dtype, generator=gen, requires_grad=True)
    w = torch.randn(5, 12, dtype=dtype, generator=gen, requires_grad=True)
    b = torch.randn(5, dtype=dtype, generator=gen, requires_grad=True)
    g = torch.randn(2, 300, 5, dtype=dtype, generator=gen)
    one_block = gelu_linear(x, w, b)
    one_block_grads = torch.autograd.grad(one_block, (x, w, b), g)
    monkeypatch.setattr(module, "BLOCK_BYTES", 1)
    out = gelu_linear(x, w, b)
    grads = torch.autograd.grad(out, (x, w, b), g)
    assert torch.equal(out, one_block) and torch.equal(grads[0], one_block_grads[0])
    ref = torch.nn.functional.linear(torch.nn.functional.gelu(x), w, b)
    ref_grads = torch.autograd.grad(ref, (x, w, b), g)
    if dtype == torch.float64:
        assert torch.equal(out, ref) and torch.equal(grads[0], ref_grads[0])
    for got, want in zip((out, *grads), (ref, *ref_grads)):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    empty = torch.zeros(0, 12, dtype=dtype, requires_grad=True)
    out = gelu_linear(empty, w)
    assert out.shape == (0, 5)
    assert torch.equal(torch.autograd.grad(out.sum(), w)[0], torch.zeros_like(w))


def test_gelu_linear_under_autocast_runs_in_the_autocast_dtype():
    x, w, b = torch.randn(6, 8), torch.randn(3, 8), torch.randn(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gelu_linear(x.bfloat16(), w, b)
        ref = F.linear(F.gelu(x.bfloat16()), w, b)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="weight"):
        gelu_linear(x, w.T)


def test_op_schemas_are_those_of_their_version():
    """torch.compile's caches key compiled graphs on op names, not on the ops' code: when
    these schemas change, rename the ops (see the docstring of selective_tree_scan.py) and
    update the strings here."""
    forward = str(torch.ops.grootvl.selective_tree_scan_v2.default._schema)
    backward = str(torch.ops.grootvl.selective_tree_scan_backward_v2.default._schema)
    assert forward.endswith("-> (Tensor, Tensor, Tensor, Tensor)")  # out, x_dbl, ups, decay
    assert "Tensor x_dbl, Tensor ups, Tensor decay, Tensor x_proj_weight" in backward
