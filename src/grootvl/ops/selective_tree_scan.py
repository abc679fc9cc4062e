"""``selective_tree_scan``: the core of a Tree SSM layer as one memory-lean differentiable op.

From the depthwise convolution's output to the output projection (docs/design.md, "The
TreeSSM layer"):

    xs = silu(conv_out);  [dt, b, c] = xs W_xᵀ;  Δ = softplus(dt W_Δᵀ + b_Δ)
    u = Δ · b · xs;  decay = exp(Δ · a), a = -exp(A_log)
    h = Σ over trees of tree_scan(u, decay, tree, mode)      (one tree, or two for "cross")
    out = (LN_out(LN_h(h) · c + skip · xs) · silu(z)) W_oᵀ

Composed from autograd-tracked torch ops, this keeps about fifteen (B, L, D) tensors per
layer for backward (xs, Δ before and after softplus, Δ·b, decay, the scan's up pass and
output, both LayerNorm outputs, the gate and its input, ...). This op keeps five: its
inputs ``conv_out`` and ``z``, x_proj's output ``x_dbl`` (R + 2 numbers per position),
decay and the up pass of each tree's scan (for mode "subtree" the scan itself). Backward
recomputes the rest: the scan output from the up pass (mode "full": the down pass alone,
one tree pass), both LayerNorms and the gate (one fused pass), then runs the closed-form
scan backward and one fused pass per stage (``ssm_elementwise_backward``). Keeping decay
and the up pass instead of the scan output costs one (B, L, D) tensor per layer and spares
backward the recompute of u and decay (softplus and two exponentials per element) and the
up pass: about 2 % of a GrootV-T training step on the CPU. With ``impl="numba"`` (CPU) each
stage is one pass over memory in both directions, xs = silu(conv_out) is never stored (each
pass recomputes it from conv_out), and results go into dead temporaries where one exists
(the up pass into u's memory, the forward output into the scan output's, grad_u into
grad_h's, grad_conv into grad_xs'): on the CPU a fresh (B, L, D) buffer costs a page fault
per 4 KiB, about as much as a pass over it. ``impl="torch"`` composes the same plan from
ATen ops (any device; CUDA uses it with the Triton scan).

Two ``torch.library`` custom ops carry the work, opaque to ``torch.compile``:
``grootvl::selective_tree_scan_v2`` -> (out, x_dbl, ups, decay) and
``grootvl::selective_tree_scan_backward_v2`` -> the gradients of every tensor input.
The names carry the version of the saved-tensor plan. torch.compile's on-disk caches
(AOTAutograd, Inductor's FX graphs) key a compiled graph on the names of the ops it calls,
not on their Python code: after a change in what forward returns or backward takes, a cache
written by an older grootvl would replay the old backward (seen when v1, which kept the scan
output, became v2). So such a change must also change the names.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .linear import product
from .ssm_elementwise import silu_project_discretize, ssm_output
from .ssm_elementwise_backward import output_backward, silu_project_discretize_backward
from .tree import Tree, autocast_dtype, autocast_off
from .tree_scan import MODES, _backend, default_impl

__all__ = ["selective_tree_scan"]

def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _scans(u: Tensor, decay: Tensor, trees: list[tuple[Tensor, Tensor, Tensor]], mode: str,
           scan_impl: str) -> tuple[Tensor, Tensor]:
    """(h, ups): h the sum of the scans over the trees, ups (T, B, L, D) the up pass of each,
    kept for backward with decay, which is left intact. With one tree and a backend that can
    work in its inputs' memory, the up pass is computed in u's memory (no allocation)."""
    backend = _backend(scan_impl)
    if len(trees) == 1 and hasattr(backend, "scan_forward_inplace"):
        h = backend.scan_forward_inplace(u, decay, *trees[0], mode, keep_decay=True)
        return h, u.unsqueeze(0)
    ys, ups = zip(*(backend.scan_forward(u, decay, *tree, mode) for tree in trees))
    if len(trees) == 1:
        return ys[0], ups[0].unsqueeze(0)  # for mode 'subtree', h is the up pass
    return _sum(ys), torch.stack(ups)


def _sum(ys: Sequence[Tensor]) -> Tensor:
    """The sum of the trees' scans (the first one itself for one tree)."""
    return ys[0] if len(ys) == 1 else sum(ys[1:], ys[0])


def _full_scans(ups: Tensor, decay: Tensor, trees: list[tuple[Tensor, Tensor, Tensor]],
                mode: str, scan_impl: str) -> list[Tensor]:
    """The scan of each tree from its saved up pass (mode 'subtree': the up pass itself)."""
    if mode == "subtree":
        return list(ups)
    return [_backend(scan_impl).scan_down(up, decay, *tree) for up, tree in zip(ups, trees)]


def _scan_grads(grad_h: Tensor, decay: Tensor, ups: Tensor, ys: list[Tensor],
                trees: list[tuple[Tensor, Tensor, Tensor]], mode: str, scan_impl: str
                ) -> tuple[Tensor, Tensor]:
    """(grad_u, grad_decay) summed over the trees (with one tree, grad_u in grad_h's memory
    where the backend can: grad_h is consumed)."""
    backend = _backend(scan_impl)
    grad_u = grad_decay = None
    for up, y, tree in zip(ups, ys, trees):
        if len(trees) == 1 and hasattr(backend, "scan_backward_inplace"):
            gu, gd = backend.scan_backward_inplace(grad_h, decay, *tree, up, y, mode)
        else:
            gu, gd = backend.scan_backward(grad_h, decay, *tree, up, y, mode)
        grad_u, grad_decay = (gu, gd) if grad_u is None else (grad_u + gu, grad_decay + gd)
    return grad_u, grad_decay


# --------------------------------------------------------------------------- custom ops

@torch.library.custom_op("grootvl::selective_tree_scan_v2", mutates_args=())
def _forward_op(conv_out: Tensor, z: Tensor, x_proj_weight: Tensor, dt_weight: Tensor,
                dt_bias: Tensor, a_log: Tensor, skip: Tensor, h_norm_weight: Tensor,
                h_norm_bias: Tensor, out_norm_weight: Tensor, out_norm_bias: Tensor,
                out_proj_weight: Tensor, orders: list[Tensor], parents: list[Tensor],
                level_offsets: list[Tensor], h_eps: float, out_eps: float, mode: str,
                scan_impl: str, impl: str, proj_dtype: torch.dtype
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    compute = _compute_dtype(conv_out)
    wx, wdt, bdt, a_log, skip, hw, hb, ow, ob = (t.to(compute) for t in (
        x_proj_weight, dt_weight, dt_bias, a_log, skip, h_norm_weight, h_norm_bias,
        out_norm_weight, out_norm_bias))
    R = wdt.shape[1]
    with torch.no_grad(), autocast_off(conv_out.device):
        pre = conv_out.to(compute)
        # numba never writes x = silu(pre): the output stage applies the silu in its pass
        xs, x_dbl, u, decay = silu_project_discretize(pre, wx, wdt, bdt, -torch.exp(a_log),
                                                      impl=impl, keep_x=impl == "torch")
        trees = list(zip(orders, parents, level_offsets))
        h, ups = _scans(u, decay, trees, mode, scan_impl)
        # numba writes the result over h unless h is a saved up pass (one subtree scan)
        into_h = impl == "numba" and h.data_ptr() != ups.data_ptr()
        gated = ssm_output(h, x_dbl[..., R + 1:], pre if xs is None else xs, z.to(compute),
                           skip, (hw, hb, h_eps), (ow, ob, out_eps), impl=impl,
                           out=h if into_h else None, silu_x=xs is None)
        out = product(gated.to(proj_dtype), out_proj_weight.to(proj_dtype))
    return out, x_dbl, ups, decay


@_forward_op.register_fake
def _(conv_out, z, x_proj_weight, dt_weight, dt_bias, a_log, skip, h_norm_weight,
      h_norm_bias, out_norm_weight, out_norm_bias, out_proj_weight, orders, parents,
      level_offsets, h_eps, out_eps, mode, scan_impl, impl, proj_dtype):
    compute = _compute_dtype(conv_out)
    *lead, D = conv_out.shape
    out = conv_out.new_empty((*lead, out_proj_weight.shape[0]), dtype=proj_dtype)
    x_dbl = conv_out.new_empty((*lead, x_proj_weight.shape[0]), dtype=compute)
    return (out, x_dbl, conv_out.new_empty((len(orders), *lead, D), dtype=compute),
            conv_out.new_empty((*lead, D), dtype=compute))


@torch.library.custom_op("grootvl::selective_tree_scan_backward_v2", mutates_args=())
def _backward_op(grad_out: Tensor, conv_out: Tensor, z: Tensor, x_dbl: Tensor, ups: Tensor,
                 decay: Tensor, x_proj_weight: Tensor, dt_weight: Tensor, dt_bias: Tensor,
                 a_log: Tensor, skip: Tensor, h_norm_weight: Tensor, h_norm_bias: Tensor,
                 out_norm_weight: Tensor, out_norm_bias: Tensor, out_proj_weight: Tensor,
                 orders: list[Tensor], parents: list[Tensor], level_offsets: list[Tensor],
                 h_eps: float, out_eps: float, mode: str, scan_impl: str, impl: str,
                 proj_dtype: torch.dtype) -> list[Tensor]:
    compute = x_dbl.dtype
    params = (x_proj_weight, dt_weight, dt_bias, a_log, skip, h_norm_weight, h_norm_bias,
              out_norm_weight, out_norm_bias)
    wx, wdt, bdt, a_log_c, skip_c, hw, hb, ow, ob = (t.to(compute) for t in params)
    D, R = wdt.shape
    trees = list(zip(orders, parents, level_offsets))
    # Both products with the output projection's weight come first and last: the numba
    # stages between them run back to back, without torch's thread pool waking in between.
    with torch.no_grad(), autocast_off(conv_out.device):
        grad_gated = product(grad_out.to(proj_dtype),
                             out_proj_weight.to(proj_dtype).t()).to(compute)
        pre = conv_out.to(compute)
        a = -torch.exp(a_log_c)
        ys = _full_scans(ups, decay, trees, mode, scan_impl)
        h = _sum(ys)
        grad_x_dbl = torch.empty_like(x_dbl)
        # numba: the recomputed gated output is written into grad_gated's memory
        gated, grad_h, grad_xs, grad_z, *norm_grads = output_backward(
            grad_gated, h, x_dbl, pre, z.to(compute), skip_c, (hw, hb, h_eps),
            (ow, ob, out_eps), grad_x_dbl, impl=impl)
        del grad_gated, h
        grad_u, grad_decay = _scan_grads(grad_h, decay, ups, ys, trees, mode, scan_impl)
        del grad_h, ys
        # numba: grad_conv is written into grad_xs's memory
        grad_conv, grad_wx, grad_wdt, grad_bdt, grad_a = silu_project_discretize_backward(
            grad_u, grad_decay, grad_xs, grad_x_dbl, decay, x_dbl, pre, wx, wdt, bdt, a,
            impl=impl)
        del grad_u, grad_decay
        rows = grad_out.reshape(-1, grad_out.shape[-1]).to(proj_dtype)
        grad_out_proj = rows.T @ gated.to(proj_dtype).reshape(-1, D)
    grads = (grad_conv, grad_z, grad_wx, grad_wdt, grad_bdt, grad_a * a, *norm_grads,
             grad_out_proj)
    inputs = (conv_out, z, *params, out_proj_weight)
    # parameter gradients may be views of one buffer of partial sums: outputs must not alias
    return [g.to(t.dtype) if i < 2 else g.to(t.dtype, copy=True).contiguous()
            for i, (g, t) in enumerate(zip(grads, inputs))]


@_backward_op.register_fake
def _(grad_out, conv_out, z, x_dbl, ups, decay, x_proj_weight, dt_weight, dt_bias, a_log, skip,
      h_norm_weight, h_norm_bias, out_norm_weight, out_norm_bias, out_proj_weight, orders,
      parents, level_offsets, h_eps, out_eps, mode, scan_impl, impl, proj_dtype):
    return [torch.empty_like(t) for t in (conv_out, z, x_proj_weight, dt_weight, dt_bias,
                                          a_log, skip, h_norm_weight, h_norm_bias,
                                          out_norm_weight, out_norm_bias, out_proj_weight)]


def _setup_context(ctx, inputs, output):
    conv_out, z, *rest = inputs
    params, (orders, parents, level_offsets) = rest[:10], rest[10:13]
    ctx.settings = rest[13:]  # h_eps, out_eps, mode, scan_impl, impl, proj_dtype
    ctx.num_trees = len(orders)
    _, x_dbl, ups, decay = output
    ctx.save_for_backward(conv_out, z, x_dbl, ups, decay, *params, *orders, *parents,
                          *level_offsets)
    ctx.mark_non_differentiable(x_dbl, ups, decay)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, grad_x_dbl, grad_ups, grad_decay):
    T = ctx.num_trees
    no_trees = ([None] * T,) * 3  # the index tensors get no gradient
    if grad_out is None:
        return (None,) * 12 + no_trees + (None,) * 6
    saved = ctx.saved_tensors
    tensors, trees = saved[:15], saved[15:]
    grads = _backward_op(grad_out.contiguous(), *tensors, list(trees[:T]),
                         list(trees[T:2 * T]), list(trees[2 * T:]), *ctx.settings)
    return (*grads, *no_trees) + (None,) * 6


_forward_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public API

def selective_tree_scan(conv_out: Tensor, z: Tensor, x_proj_weight: Tensor,
                        dt_weight: Tensor, dt_bias: Tensor, a_log: Tensor, skip: Tensor,
                        h_norm: tuple[Tensor, Tensor, float],
                        out_norm: tuple[Tensor, Tensor, float], out_proj_weight: Tensor,
                        trees: Tree | Sequence[Tree], mode: str = "full",
                        scan_impl: str | None = None, impl: str | None = None) -> Tensor:
    """The Tree SSM core, from the depthwise convolution's output to the output projection,
    keeping only conv_out, z, x_proj's output, decay and the scans' up passes for backward.

    Args:
        conv_out: (B, L, D) depthwise convolution output, before its silu.
        z: (B, L, D) gate, before its silu.
        x_proj_weight: (R + 2, D), rows [dt (R), B, C]. dt_weight: (D, R). dt_bias: (D,).
        a_log: (D,) with A = -exp(a_log). skip: (D,) the skip weight D.
        h_norm, out_norm: (weight (D,), bias (D,), eps) of the two LayerNorms.
        out_proj_weight: (C, D), no bias.
        trees: one ``Tree`` (batch B, L vertices), or several whose scans are summed
            (e.g. the row-major and column-major chains of the "cross" topology).
        mode: tree scan mode, "full" or "subtree".
        scan_impl: ``tree_scan`` backend (None: fastest for the device).
        impl: element-wise stages, "numba" (CPU) or "torch"; None: numba on CPU.

    Returns:
        (B, L, C). The scan path runs in float32 (float64 for float64 conv_out), also under
        autocast; the output projection runs in the autocast dtype when autocast is on for
        the device, otherwise in z's dtype. Differentiable (first order) in every tensor.
    """
    trees = [trees] if isinstance(trees, Tree) else list(trees)
    if not trees or not all(isinstance(t, Tree) for t in trees):
        raise TypeError("selective_tree_scan: trees must be a grootvl.ops.Tree or a non-empty "
                        "sequence of them")
    if conv_out.dim() != 3 or z.shape != conv_out.shape:
        raise ValueError(f"selective_tree_scan: conv_out and z must both be (B, L, D), got "
                         f"{tuple(conv_out.shape)} and {tuple(z.shape)}")
    B, L, D = conv_out.shape
    R = dt_weight.shape[-1]
    expected = {"x_proj_weight": (R + 2, D), "dt_weight": (D, R), "dt_bias": (D,),
                "a_log": (D,), "skip": (D,), "h_norm weight": (D,), "h_norm bias": (D,),
                "out_norm weight": (D,), "out_norm bias": (D,)}
    given = dict(zip(expected, (x_proj_weight, dt_weight, dt_bias, a_log, skip, *h_norm[:2],
                                *out_norm[:2])))
    for name, shape in expected.items():
        if tuple(given[name].shape) != shape:
            raise ValueError(f"selective_tree_scan: {name} must be {shape} for D={D}, R={R}, "
                             f"got {tuple(given[name].shape)}")
    if out_proj_weight.dim() != 2 or out_proj_weight.shape[1] != D:
        raise ValueError(f"selective_tree_scan: out_proj_weight must be (C, {D}), got "
                         f"{tuple(out_proj_weight.shape)}")
    if mode not in MODES:
        raise ValueError(f"selective_tree_scan: mode must be one of {MODES}, got {mode!r}")
    for tree in trees:
        if tuple(tree.order.shape) != (B, L) or tree.order.device != conv_out.device:
            raise ValueError(f"selective_tree_scan: each tree must have batch {B} and {L} "
                             f"vertices on {conv_out.device}, got order "
                             f"{tuple(tree.order.shape)} on {tree.order.device}")
    device = conv_out.device
    scan_impl = default_impl(device) if scan_impl is None else scan_impl
    if impl is None:
        impl = "numba" if device.type == "cpu" else "torch"
    if impl not in ("numba", "torch") or (impl == "numba" and device.type != "cpu"):
        raise ValueError(f"selective_tree_scan: impl must be 'torch', or 'numba' for CPU "
                         f"tensors; got {impl!r} with tensors on {device}")
    proj_dtype = autocast_dtype(device) or z.dtype
    out, *_ = _forward_op(
        conv_out, z, x_proj_weight, dt_weight, dt_bias, a_log, skip, h_norm[0], h_norm[1],
        out_norm[0], out_norm[1], out_proj_weight,
        [t.order.contiguous() for t in trees], [t.parent.contiguous() for t in trees],
        [t.level_offsets.contiguous() for t in trees], float(h_norm[2]), float(out_norm[2]),
        mode, scan_impl, impl, proj_dtype)
    return out
