"""Triton tree scan kernels, run on the CPU by Triton's interpreter (no GPU needed).

TRITON_INTERPRET is read when kernels are defined, so the checks run in ONE subprocess that
sets it before importing triton (this file re-executed with --worker); it prints one JSON
line of measured errors, and each test below asserts on its part. Shapes are tiny because
the interpreter runs every tile op in numpy.

The interpreter accepts code the compiler rejects, so a second subprocess (--compile, without
the interpreter) also compiles every kernel to sm_90 PTX ahead of time, which needs no GPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

WORKER_TIMEOUT_S = 240


# ------------------------------------------------------------------------------ worker side

def _random_tree(batch: int, num_vertices: int, root: int, generator):
    """A uniformly relabelled random recursive tree per row, rooted at ``root``."""
    from grootvl.ops import bfs_tree
    from grootvl.ops.tree import random_tree_edges

    return bfs_tree(random_tree_edges(batch, num_vertices, generator), num_vertices, root=root)


def _shuffle_levels(tree, generator):
    """The same trees in another breadth-first order (vertices permuted within each level)."""
    import torch
    from grootvl.ops import Tree

    order = tree.order.clone()
    L = order.shape[1]
    for b in range(order.shape[0]):
        offs = [o for o in tree.level_offsets[b].tolist() if o < L] + [L]
        for lo, hi in zip(offs[:-1], offs[1:]):
            order[b, lo:hi] = order[b, lo:hi][torch.randperm(hi - lo, generator=generator)]
    return Tree(order, tree.parent, tree.level_offsets)


def _max_err(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


def _worker() -> dict:
    import torch
    from grootvl.ops import grid_chain, grid_tree, scan_reference, scan_triton, tree_scan

    gen = torch.Generator().manual_seed(0)
    cases = {
        # 4x6 image grid tree; C=5 in an 8-wide channel block exercises the channel mask.
        "grid": (grid_tree(torch.randn(2, 3, 4, 6, generator=gen), impl="numba"), 5,
                 dict(block_v=8, block_c=8)),
        # Random recursive trees have wide levels, so 4-vertex tiles need several per level;
        # C=6 in 4-wide blocks gives two channel blocks per row. BFS order shuffled per level.
        "random": (_shuffle_levels(_random_tree(2, 30, 7, gen), gen), 6,
                   dict(block_v=4, block_c=4)),
        # Chains (the raster and cross topologies): one vertex per level, L levels; rooted at
        # the last vertex, the subtree scan is the causal scan along the chain.
        "row_chain": (grid_chain(3, 4, 2, major="row", root=11), 5, dict(block_v=8, block_c=8)),
        "column_chain": (grid_chain(3, 4, 2, major="column", root=0), 5,
                         dict(block_v=8, block_c=8)),
    }
    dtypes = {"grid": (torch.float64, torch.float32), "random": (torch.float64,),
              "row_chain": (torch.float64,), "column_chain": (torch.float64,)}
    out: dict = {}
    for name, (tree, C, config) in cases.items():
        B, L = tree.order.shape
        args = (tree.order, tree.parent, tree.level_offsets)
        x = torch.randn(B, L, C, generator=gen, dtype=torch.float64)
        decay = 0.2 + 0.8 * torch.rand(B, L, C, generator=gen, dtype=torch.float64)
        g = torch.randn(B, L, C, generator=gen, dtype=torch.float64)
        for mode in ("full", "subtree"):
            y_ref, up_ref = scan_reference.scan_forward(x, decay, *args, mode)
            gx_ref, gd_ref = scan_reference.scan_backward(g, decay, *args, up_ref, y_ref, mode)
            for dtype in dtypes[name]:
                y, up = scan_triton.scan_forward(x.to(dtype), decay.to(dtype), *args, mode,
                                                 **config)
                gx, gd = scan_triton.scan_backward(g.to(dtype), decay.to(dtype), *args, up, y,
                                                   mode, **config)
                # the full scan again from its up pass, as selective_tree_scan's backward does
                y_down = (scan_triton.scan_down(up, decay.to(dtype), *args, **config)
                          if mode == "full" else y)
                out[f"{name}/{mode}/{dtype}"] = {
                    "dtype": str(y.dtype), "y": _max_err(y, y_ref), "up": _max_err(up, up_ref),
                    "y_down": _max_err(y_down, y_ref),
                    "grad_x": _max_err(gx, gx_ref), "grad_decay": _max_err(gd, gd_ref),
                    "scale": max(y_ref.abs().max().item(), gd_ref.abs().max().item())}

    # Any finite decay (zeros, negatives, values above 1): the recurrences need no range, and
    # the dense oracle builds S from products of decays, so both must agree there too.
    tree, C, config = cases["random"]
    args = (tree.order, tree.parent, tree.level_offsets)
    B, L = tree.order.shape
    x = torch.randn(B, L, C, generator=gen, dtype=torch.float64)
    decay = 3 * torch.rand(B, L, C, generator=gen, dtype=torch.float64) - 1.5
    decay.view(-1)[::4] = 0.0
    g = torch.randn(B, L, C, generator=gen, dtype=torch.float64)
    for mode in ("full", "subtree"):
        y_ref, up_ref = scan_reference.scan_forward(x, decay, *args, mode)
        gx_ref, gd_ref = scan_reference.scan_backward(g, decay, *args, up_ref, y_ref, mode)
        y, up = scan_triton.scan_forward(x, decay, *args, mode, **config)
        gx, gd = scan_triton.scan_backward(g, decay, *args, up, y, mode, **config)
        out[f"any_decay/{mode}"] = {
            "y": _max_err(y, y_ref), "up": _max_err(up, up_ref), "grad_x": _max_err(gx, gx_ref),
            "grad_decay": _max_err(gd, gd_ref),
            "scale": max(y_ref.abs().max().item(), gd_ref.abs().max().item())}

    # bf16 in: the backend reads bf16 and accumulates in float32 (compare with the exact scan
    # of the bf16-rounded inputs; bf16 accumulation would be ~1e-2 off).
    tree, C, config = cases["grid"]
    B, L = tree.order.shape
    args = (tree.order, tree.parent, tree.level_offsets)
    x = torch.randn(B, L, C, generator=gen).bfloat16()
    decay = (0.2 + 0.8 * torch.rand(B, L, C, generator=gen)).bfloat16()
    y_ref, _ = scan_reference.scan_forward(x.double(), decay.double(), *args, "full")
    y, _ = scan_triton.scan_forward(x, decay, *args, "full", **config)
    out["bf16_backend"] = {"dtype": str(y.dtype), "y": _max_err(y, y_ref),
                           "scale": y_ref.abs().max().item()}

    # Through the public op (custom op + autograd), bf16 in -> bf16 out; the public op takes
    # CPU tensors for impl="triton" because TRITON_INTERPRET=1 is set.
    xr, dr = x.clone().requires_grad_(True), decay.clone().requires_grad_(True)
    y_pub = tree_scan(xr, dr, tree, "full", impl="triton")
    gy = torch.randn(y_pub.shape, generator=gen).bfloat16()
    gx_pub, gd_pub = torch.autograd.grad(y_pub, (xr, dr), gy)
    xq, dq = x.double().requires_grad_(True), decay.double().requires_grad_(True)
    y_q = tree_scan(xq, dq, tree, "full", impl="reference")
    gx_q, gd_q = torch.autograd.grad(y_q, (xq, dq), gy.double())
    out["bf16_public"] = {
        "dtypes": [str(t.dtype) for t in (y_pub, gx_pub, gd_pub)],
        "y": _max_err(y_pub, y_q) / y_q.abs().max().item(),
        "grad_x": _max_err(gx_pub, gx_q) / gx_q.abs().max().item(),
        "grad_decay": _max_err(gd_pub, gd_q) / gd_q.abs().max().item()}

    # A TreeSSM layer with two chains scanned causally (topology "cross", root "last")
    # through the Triton scan, with autograd and in inference mode (where the layer lets the
    # second scan overwrite its inputs, which the Triton backend declines), against the oracle.
    from grootvl.layers import TreeSSM

    torch.manual_seed(0)
    layer = TreeSSM(4, topology="cross", root="last", scan_impl="triton").double()
    reference = TreeSSM(4, topology="cross", root="last", scan_impl="reference").double()
    reference.load_state_dict(layer.state_dict())
    xl = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y_t, _ = layer(xl)
    (g_t,) = torch.autograd.grad(y_t.sum(), xl)
    y_r, _ = reference(xl)
    (g_r,) = torch.autograd.grad(y_r.sum(), xl)
    with torch.inference_mode():
        y_i, _ = layer(xl.detach())
    out["layer_cross_last"] = {"y": _max_err(y_t, y_r), "grad_x": _max_err(g_t, g_r),
                               "inference": _max_err(y_i, y_r)}
    # A layer over its minimum spanning tree (scan mode "full"): training's backward
    # recomputes the scan from its saved up pass with the Triton down pass.
    layer = TreeSSM(4, scan_impl="triton").double()
    reference = TreeSSM(4, scan_impl="reference").double()
    reference.load_state_dict(layer.state_dict())
    y_t, _ = layer(xl)
    grads_t = torch.autograd.grad(y_t.sum(), [xl, *layer.parameters()])
    y_r, _ = reference(xl)
    grads_r = torch.autograd.grad(y_r.sum(), [xl, *reference.parameters()])
    out["layer_tree_full"] = {"y": _max_err(y_t, y_r),
                              "grads": max(_max_err(a, b) for a, b in zip(grads_t, grads_r))}

    # Without the interpreter, CPU tensors must be refused with a message naming the fix.
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        tree_scan(x, decay, tree, "full", impl="triton")
        out["public_cpu_refused"] = None
    except ValueError as err:
        out["public_cpu_refused"] = str(err)
    try:
        scan_triton.scan_forward(x, decay, *args, "full")
        out["cpu_refused"] = None
    except ValueError as err:
        out["cpu_refused"] = str(err)
    return out


def _compile_all() -> dict:
    """Compile each kernel for sm_90 (as on an H100) and count its barriers and atomics."""
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from grootvl.ops import scan_triton as st

    index = {"order_ptr": "*i64", "parent_ptr": "*i64", "off_ptr": "*i64",
             "L": "i32", "C": "i32", "num_levels": "i32"}
    blocks = {"BLOCK_V": 32, "BLOCK_C": 32}
    kernels = {
        "forward_full_bf16": (st._scan_forward_kernel, {
            "x_ptr": "*bf16", "lam_ptr": "*bf16", "up_ptr": "*fp32", "y_ptr": "*fp32", **index},
            {"FULL": True, **blocks}),
        "forward_subtree_fp32": (st._scan_forward_kernel, {
            "x_ptr": "*fp32", "lam_ptr": "*fp32", "up_ptr": "*fp32", "y_ptr": "*fp32", **index},
            {"FULL": False, **blocks}),
        "down_fp32": (st._scan_down_kernel, {
            "up_ptr": "*fp32", "lam_ptr": "*bf16", "y_ptr": "*fp32", **index}, blocks),
        "backward_full_fp32": (st._scan_backward_full_kernel, {
            "g_ptr": "*fp32", "lam_ptr": "*fp32", "up_ptr": "*fp32", "y_ptr": "*fp32",
            "upg_ptr": "*fp32", "z_ptr": "*fp32", **index}, blocks),
        "backward_subtree_fp16": (st._scan_backward_subtree_kernel, {
            "g_ptr": "*fp32", "lam_ptr": "*fp16", "up_ptr": "*fp32", "gx_ptr": "*fp32",
            "gd_ptr": "*fp32", **index}, blocks),
    }
    out = {}
    for name, (fn, signature, constexprs) in kernels.items():
        signature = {k: signature.get(k, "constexpr") for k in fn.arg_names}
        # Pointers 16-byte aligned and C a multiple of 16, as at the GrootV widths.
        attrs = {(i,): [["tt.divisibility", 16]] for i, k in enumerate(fn.arg_names)
                 if signature[k].startswith("*") or k == "C"}
        kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs,
                                          attrs=attrs),
                                target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        ptx = kernel.asm["ptx"]
        out[name] = {"barriers": len(re.findall(r"\bbar\.sync", ptx)),
                     "atomics": len(re.findall(r"\batom\.global[\w.]*add", ptx))}
    return out


# ------------------------------------------------------------------------------ pytest side

def _run_worker(flag: str, interpret: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, __file__, flag], env=env, capture_output=True,
                          text=True, timeout=WORKER_TIMEOUT_S)
    assert proc.returncode == 0, f"worker {flag} failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results() -> dict:
    return _run_worker("--worker", interpret=True)


def test_kernels_compile_for_sm90_with_barriers():
    compiled = _run_worker("--compile", interpret=False)
    for name, counts in compiled.items():
        # every walk has a barrier per level (plus the ones before it)
        assert counts["barriers"] >= 2, (name, counts)
    assert compiled["forward_full_bf16"]["atomics"] > 0  # the up pass adds into parents
    assert compiled["backward_subtree_fp16"]["atomics"] == 0  # a single down pass
    assert compiled["down_fp32"]["atomics"] == 0


@pytest.mark.parametrize("case, dtype", [("grid", "torch.float64"), ("grid", "torch.float32"),
                                         ("random", "torch.float64"),
                                         ("row_chain", "torch.float64"),
                                         ("column_chain", "torch.float64")])
@pytest.mark.parametrize("mode", ["full", "subtree"])
def test_forward_and_gradients_match_dense_oracle(results, case, mode, dtype):
    r = results[f"{case}/{mode}/{dtype}"]
    tol = 1e-10 if dtype == "torch.float64" else 1e-5 * max(1.0, r["scale"])
    assert r["dtype"] == dtype
    for key in ("y", "up", "y_down", "grad_x", "grad_decay"):
        assert r[key] < tol, (key, r)


@pytest.mark.parametrize("mode", ["full", "subtree"])
def test_any_finite_decay_matches_dense_oracle(results, mode):
    r = results[f"any_decay/{mode}"]
    for key in ("y", "up", "grad_x", "grad_decay"):
        assert r[key] < 1e-10 * max(1.0, r["scale"]), (key, r)


def test_bf16_inputs_accumulate_in_float32(results):
    r = results["bf16_backend"]
    assert r["dtype"] == "torch.float32"
    assert r["y"] < 1e-5 * max(1.0, r["scale"]), r


def test_public_op_bf16_in_bf16_out_with_gradients(results):
    r = results["bf16_public"]
    assert r["dtypes"] == ["torch.bfloat16"] * 3
    for key in ("y", "grad_x", "grad_decay"):
        assert r[key] < 1e-2, (key, r)  # bf16 output rounding only (2^-8 relative)


def test_layer_with_two_causal_chains(results):
    r = results["layer_cross_last"]
    for key in ("y", "grad_x", "inference"):
        assert r[key] < 1e-10, (key, r)


def test_layer_training_over_a_spanning_tree(results):
    r = results["layer_tree_full"]
    for key in ("y", "grads"):
        assert r[key] < 1e-10, (key, r)


def test_cpu_tensors_refused_without_interpreter(results):
    assert results["cpu_refused"] is not None
    assert "impl='numba'" in results["cpu_refused"]
    assert "TRITON_INTERPRET=1" in results["public_cpu_refused"]


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    print(json.dumps(_worker()))
elif __name__ == "__main__" and sys.argv[1:] == ["--compile"]:
    print(json.dumps(_compile_all()))
