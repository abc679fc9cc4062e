"""Tree scan on the GPU with Triton kernels.

The passes are those of docs/design.md, "Forward and backward passes".

Layout: x, decay and every buffer are channels-last ``(B, L, C)``; a vertex's channels are
contiguous, so a tile of ``BLOCK_V`` vertices x ``BLOCK_C`` channels reads whole cache-line
segments even though the vertices of a level are scattered.

Parallelism: one program per (batch row b, block of channels). A program walks the BFS levels
of its tree (``level_offsets``) one after another and treats the vertices of one level as a
``[BLOCK_V, BLOCK_C]`` tile (several tiles for wide levels). The vertices of a level never read
each other's values, only their parents' (down pass) or add into their parents' rows (up
pass), so a level is data-parallel; consecutive levels are separated by ``tl.debug_barrier()``
(a CTA-wide barrier, which also makes the global writes of level d visible to every thread of
the program before the next level reads them). Values that an earlier level wrote are loaded
with ``cache_modifier=".cg"``: from L2, where the up pass's atomics resolve, not via the SM's L1.
The walk is latency-bound (a 56x56 image tree has ~200-300 levels of ~10-50 vertices), so the
next level's vertex ids are prefetched while the current level works.

The up pass pushes ``lam[u] * up[u]`` into the parent row with a relaxed ``tl.atomic_add``:
no child list is needed, at the price of the summation order among siblings being unspecified
(results can differ in the last bits from run to run, like ``scatter_add`` on CUDA).

Accumulation is float32 (float64 for float64 input); inputs may be float32, bfloat16, float16
or float64 and are converted on load. Outputs are in the accumulation dtype; the dispatcher
(``tree_scan.py``) casts them back to the input dtype.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor
import triton
import triton.language as tl

__all__ = ["scan_forward", "scan_down", "scan_backward"]

HALF_INPUTS = True  # tells the dispatcher to pass fp16/bf16 x and decay through unconverted
_MODES = ("full", "subtree")


# ----------------------------------------------------------------------------------------------
# Walking the levels


@triton.jit
def _level_range(off_ptr, b, num_levels, d):
    """Positions [lo, hi) in ``order`` of BFS level ``d`` of tree ``b``; empty unless 0 < d < D."""
    row = off_ptr + b * (num_levels + 1)
    valid = (d > 0) & (d < num_levels)
    lo = tl.load(row + d, mask=valid, other=0).to(tl.int32)
    hi = tl.load(row + d + 1, mask=valid, other=0).to(tl.int32)
    return lo, hi


@triton.jit
def _tile_vertices(order_ptr, parent_ptr, b, L, start, hi, BLOCK_V: tl.constexpr):
    """Vertices order[start:hi] (at most BLOCK_V of them), their parents, and the lane mask."""
    pos = start + tl.arange(0, BLOCK_V)
    vmask = pos < hi
    v = tl.load(order_ptr + b * L + pos, mask=vmask, other=0)
    p = tl.load(parent_ptr + b * L + v, mask=vmask, other=0)
    return v.to(tl.int32), p.to(tl.int32), vmask


@triton.jit
def _walk_levels(STEP: tl.constexpr, bufs, order_ptr, parent_ptr, off_ptr, b, L, C, num_levels,
                 cols, cmask, REVERSE: tl.constexpr, BLOCK_V: tl.constexpr):
    """STEP(bufs, v_offs, p_offs, mask) on all non-root vertices, level by level.

    Levels 1..D-1 in order (leaves last), or D-1..1 with REVERSE. The vertices of one level are
    independent of each other, so each level is one (or, when wider than BLOCK_V, a few) tiles.
    """
    if REVERSE:
        d = num_levels - 1
    else:
        d = 1
    lo, hi = _level_range(off_ptr, b, num_levels, d)
    v, p, vmask = _tile_vertices(order_ptr, parent_ptr, b, L, lo, hi, BLOCK_V)
    for _ in range(1, num_levels):
        if REVERSE:
            d_next = d - 1
        else:
            d_next = d + 1
        # Prefetch: the next level's vertex ids do not depend on any value this level computes,
        # so loading them now hides their latency behind this level's work. The walk is
        # latency-bound (image trees have hundreds of levels of ~10-50 vertices).
        lo_next, hi_next = _level_range(off_ptr, b, num_levels, d_next)
        v_next, p_next, vmask_next = _tile_vertices(order_ptr, parent_ptr, b, L, lo_next, hi_next,
                                                    BLOCK_V)
        # STEP gets the element offsets of the [BLOCK_V, BLOCK_C] tile's rows and parent rows.
        STEP(bufs, (b * L + v)[:, None] * C + cols[None, :],
             (b * L + p)[:, None] * C + cols[None, :], vmask[:, None] & cmask[None, :])
        for start in range(lo + BLOCK_V, hi, BLOCK_V):  # rest of a level wider than one tile
            v_more, p_more, vmask_more = _tile_vertices(order_ptr, parent_ptr, b, L, start, hi,
                                                        BLOCK_V)
            STEP(bufs, (b * L + v_more)[:, None] * C + cols[None, :],
                 (b * L + p_more)[:, None] * C + cols[None, :],
                 vmask_more[:, None] & cmask[None, :])
        # Barrier: the next level reads rows this level wrote (down passes) or its own rows that
        # this level added into (up pass); the barrier makes those global writes visible CTA-wide.
        tl.debug_barrier()
        d, lo, hi, v, p, vmask = d_next, lo_next, hi_next, v_next, p_next, vmask_next


# ----------------------------------------------------------------------------------------------
# One step per pass: what a tile of vertices of one level does. Rows an earlier level of the
# same walk wrote are loaded with cache_modifier=".cg" (from L2, where atomics and stores land).


@triton.jit
def _up_step(bufs, v_offs, p_offs, mask):
    """up[v] = src[v] + (what v's children added into up[v]); then up[p(v)] += lam[v] up[v].

    The children's level is done, so their sum in up[v] is complete.
    """
    src_ptr, up_ptr, lam_ptr = bufs
    acc_dtype = up_ptr.dtype.element_ty
    src_v = tl.load(src_ptr + v_offs, mask=mask, other=0.0).to(acc_dtype)
    children = tl.load(up_ptr + v_offs, mask=mask, other=0.0, cache_modifier=".cg")
    lam = tl.load(lam_ptr + v_offs, mask=mask, other=0.0).to(acc_dtype)
    up_v = src_v + children
    tl.store(up_ptr + v_offs, up_v, mask=mask)
    tl.atomic_add(up_ptr + p_offs, lam * up_v, mask=mask, sem="relaxed")


@triton.jit
def _down_step(bufs, v_offs, p_offs, mask):
    """y[v] = up[v] * (1 - lam[v]^2) + lam[v] * y[p(v)]."""
    up_ptr, y_ptr, lam_ptr = bufs
    up_v = tl.load(up_ptr + v_offs, mask=mask, other=0.0, cache_modifier=".cg")
    lam = tl.load(lam_ptr + v_offs, mask=mask, other=0.0).to(y_ptr.dtype.element_ty)
    y_p = tl.load(y_ptr + p_offs, mask=mask, other=0.0, cache_modifier=".cg")
    tl.store(y_ptr + v_offs, up_v * (1.0 - lam * lam) + lam * y_p, mask=mask)


@triton.jit
def _full_grad_step(bufs, v_offs, p_offs, mask):
    """z[v] = up_g[v] (1 - lam^2) + lam z[p]  (z = S g = grad_x), and over up_g[v]:
    grad_decay[v] = up_g[v] (y[p] - lam up[v]) + up[v] (z[p] - lam up_g[v]).

    up_g[v] is dead once z[v] is known (v's children read z[v], never up_g[v]), so grad_decay
    can take its place and the backward needs no third buffer.
    """
    upg_ptr, z_ptr, lam_ptr, up_ptr, y_ptr = bufs
    acc_dtype = z_ptr.dtype.element_ty
    upg_v = tl.load(upg_ptr + v_offs, mask=mask, other=0.0, cache_modifier=".cg")
    lam = tl.load(lam_ptr + v_offs, mask=mask, other=0.0).to(acc_dtype)
    z_p = tl.load(z_ptr + p_offs, mask=mask, other=0.0, cache_modifier=".cg")
    up_v = tl.load(up_ptr + v_offs, mask=mask, other=0.0).to(acc_dtype)
    y_p = tl.load(y_ptr + p_offs, mask=mask, other=0.0).to(acc_dtype)
    tl.store(z_ptr + v_offs, upg_v * (1.0 - lam * lam) + lam * z_p, mask=mask)
    tl.store(upg_ptr + v_offs, upg_v * (y_p - lam * up_v) + up_v * (z_p - lam * upg_v), mask=mask)


@triton.jit
def _subtree_grad_step(bufs, v_offs, p_offs, mask):
    """a[v] = g[v] + lam[v] a[p(v)]  (a = grad_x);  grad_decay[v] = a[p(v)] up[v]."""
    g_ptr, a_ptr, gd_ptr, lam_ptr, up_ptr = bufs
    acc_dtype = a_ptr.dtype.element_ty
    g_v = tl.load(g_ptr + v_offs, mask=mask, other=0.0).to(acc_dtype)
    lam = tl.load(lam_ptr + v_offs, mask=mask, other=0.0).to(acc_dtype)
    a_p = tl.load(a_ptr + p_offs, mask=mask, other=0.0, cache_modifier=".cg")
    up_v = tl.load(up_ptr + v_offs, mask=mask, other=0.0).to(acc_dtype)
    tl.store(a_ptr + v_offs, g_v + lam * a_p, mask=mask)
    tl.store(gd_ptr + v_offs, a_p * up_v, mask=mask)


# ----------------------------------------------------------------------------------------------
# Passes and kernels. Kernel grid: (B, cdiv(C, BLOCK_C)); a program owns rows b of every buffer,
# channels cols, so no two programs ever touch the same element.


@triton.jit
def _root_offsets(order_ptr, b, L, C, cols):
    root = tl.load(order_ptr + b * L)
    return (b * L + root) * C + cols


@triton.jit
def _up_pass(src_ptr, up_ptr, lam_ptr, order_ptr, parent_ptr, off_ptr, b, L, C, num_levels,
             cols, cmask, BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    """up = subtree scan of src: up[v] = src[v] + sum over children u of lam[u] up[u].

    Returns the offsets of the root's row and up[root] (held by the threads that use it next).
    """
    acc_dtype = up_ptr.dtype.element_ty
    # up <- 0, the children's sums accumulate into it. Stores only: unlike copying src here,
    # nothing waits on a load, and src is read in the level steps alongside up.
    for first in range(0, L, BLOCK_V):
        rows = first + tl.arange(0, BLOCK_V)
        offs = (b * L + rows)[:, None] * C + cols[None, :]
        tl.store(up_ptr + offs, tl.zeros([BLOCK_V, BLOCK_C], dtype=acc_dtype),
                 mask=(rows < L)[:, None] & cmask[None, :])
    # Barrier: rows zeroed above by some threads receive atomics from other threads below.
    tl.debug_barrier()
    _walk_levels(_up_step, (src_ptr, up_ptr, lam_ptr), order_ptr, parent_ptr, off_ptr,
                 b, L, C, num_levels, cols, cmask, REVERSE=True, BLOCK_V=BLOCK_V)
    root = _root_offsets(order_ptr, b, L, C, cols)
    up_root = (tl.load(src_ptr + root, mask=cmask, other=0.0).to(acc_dtype)
               + tl.load(up_ptr + root, mask=cmask, other=0.0, cache_modifier=".cg"))
    tl.store(up_ptr + root, up_root, mask=cmask)
    return root, up_root


@triton.jit
def _down_pass(up_ptr, y_ptr, lam_ptr, order_ptr, parent_ptr, off_ptr, b, L, C, num_levels,
               cols, cmask, root, up_root, BLOCK_V: tl.constexpr):
    """y = full scan from the up pass: y[root] = up[root] (given), then level by level."""
    tl.store(y_ptr + root, up_root, mask=cmask)
    # Barrier: level 1 reads y[root], written above by other threads.
    tl.debug_barrier()
    _walk_levels(_down_step, (up_ptr, y_ptr, lam_ptr), order_ptr, parent_ptr, off_ptr,
                 b, L, C, num_levels, cols, cmask, REVERSE=False, BLOCK_V=BLOCK_V)


@triton.jit
def _scan_forward_kernel(x_ptr, lam_ptr, up_ptr, y_ptr, order_ptr, parent_ptr, off_ptr,
                         L, C, num_levels, FULL: tl.constexpr,
                         BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    """up = subtree scan of x; for FULL also y = full scan (the down pass over up)."""
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    root, up_root = _up_pass(x_ptr, up_ptr, lam_ptr, order_ptr, parent_ptr, off_ptr, b, L, C,
                             num_levels, cols, cmask, BLOCK_V, BLOCK_C)
    if FULL:
        _down_pass(up_ptr, y_ptr, lam_ptr, order_ptr, parent_ptr, off_ptr, b, L, C, num_levels,
                   cols, cmask, root, up_root, BLOCK_V)


@triton.jit
def _scan_down_kernel(up_ptr, lam_ptr, y_ptr, order_ptr, parent_ptr, off_ptr, L, C, num_levels,
                      BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    """y = full scan from a saved up pass: the second half of ``_scan_forward_kernel``."""
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    root = _root_offsets(order_ptr, b, L, C, cols)
    up_root = tl.load(up_ptr + root, mask=cmask, other=0.0).to(y_ptr.dtype.element_ty)
    _down_pass(up_ptr, y_ptr, lam_ptr, order_ptr, parent_ptr, off_ptr, b, L, C, num_levels,
               cols, cmask, root, up_root, BLOCK_V)


@triton.jit
def _scan_backward_full_kernel(g_ptr, lam_ptr, up_ptr, y_ptr, upg_ptr, z_ptr,
                               order_ptr, parent_ptr, off_ptr, L, C, num_levels,
                               BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    """grad_x = S g into z (up pass of g into upg, then a down pass); grad_decay over upg."""
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    root, upg_root = _up_pass(g_ptr, upg_ptr, lam_ptr, order_ptr, parent_ptr, off_ptr, b, L, C,
                              num_levels, cols, cmask, BLOCK_V, BLOCK_C)
    tl.store(z_ptr + root, upg_root, mask=cmask)  # z[root] = up_g[root]
    # grad_decay[root] = 0, over up_g[root]: the same threads stored up_g[root] last.
    tl.store(upg_ptr + root, tl.zeros_like(upg_root), mask=cmask)
    # Barrier: level 1 reads z[root], written above by other threads.
    tl.debug_barrier()
    _walk_levels(_full_grad_step, (upg_ptr, z_ptr, lam_ptr, up_ptr, y_ptr), order_ptr,
                 parent_ptr, off_ptr, b, L, C, num_levels, cols, cmask,
                 REVERSE=False, BLOCK_V=BLOCK_V)


@triton.jit
def _scan_backward_subtree_kernel(g_ptr, lam_ptr, up_ptr, gx_ptr, gd_ptr,
                                  order_ptr, parent_ptr, off_ptr, L, C, num_levels,
                                  BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    """grad_x = a with a[v] = g[v] + lam[v] a[p(v)] (one down pass); grad_decay = a[p] up[v]."""
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    root = _root_offsets(order_ptr, b, L, C, cols)  # a[root] = g[root]; grad_decay[root] = 0
    g_root = tl.load(g_ptr + root, mask=cmask, other=0.0).to(gx_ptr.dtype.element_ty)
    tl.store(gx_ptr + root, g_root, mask=cmask)
    tl.store(gd_ptr + root, tl.zeros_like(g_root), mask=cmask)
    # Barrier: level 1 reads a[root], written above by other threads.
    tl.debug_barrier()
    _walk_levels(_subtree_grad_step, (g_ptr, gx_ptr, gd_ptr, lam_ptr, up_ptr), order_ptr,
                 parent_ptr, off_ptr, b, L, C, num_levels, cols, cmask,
                 REVERSE=False, BLOCK_V=BLOCK_V)


# ----------------------------------------------------------------------------------------------
# Host side


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _launch_config(C: int, block_v: int | None, block_c: int | None, num_warps: int | None):
    """Tile shape and warps. Levels of image MSTs hold ~L/depth (tens of) vertices."""
    block_c = block_c or min(32, triton.next_power_of_2(max(C, 1)))
    block_v = block_v or 32
    num_warps = num_warps or max(1, min(8, block_v * block_c // 256))
    for name, value in (("block_v", block_v), ("block_c", block_c)):
        if value & (value - 1):
            raise ValueError(f"scan_triton: {name}={value} must be a power of two")
    return block_v, block_c, num_warps


def _check(name: str, t: Tensor, ref: Tensor) -> Tensor:
    if t.device != ref.device:
        raise ValueError(f"scan_triton: {name} is on {t.device} but x is on {ref.device}; "
                         f"move the tree with tree.to(x.device)")
    return t.contiguous()


def _prepare(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor, level_offsets: Tensor,
             mode: str):
    if mode not in _MODES:
        raise ValueError(f"scan_triton: mode must be one of {_MODES}, got {mode!r}")
    if x.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"scan_triton: impl='triton' needs CUDA tensors, got x on {x.device}; use "
            f"impl='numba' (or None) on the CPU, or set TRITON_INTERPRET=1 before importing "
            f"triton to run the kernels in the (slow) interpreter")
    if x.dim() != 3 or decay.shape != x.shape:
        raise ValueError(f"scan_triton: x and decay must both be (B, L, C), got "
                         f"{tuple(x.shape)} and {tuple(decay.shape)}")
    B, L, _ = x.shape
    if order.shape != (B, L) or parent.shape != (B, L):
        raise ValueError(f"scan_triton: order and parent must be (B, L) = {(B, L)}, got "
                         f"{tuple(order.shape)} and {tuple(parent.shape)}")
    if level_offsets.dim() != 2 or level_offsets.shape[0] != B:
        raise ValueError(f"scan_triton: level_offsets must be (B, D+1), got "
                         f"{tuple(level_offsets.shape)}")
    acc = torch.float64 if torch.float64 in (x.dtype, decay.dtype) else torch.float32
    tree = [_check(n, t, x).long() for n, t in
            (("order", order), ("parent", parent), ("level_offsets", level_offsets))]
    return x.contiguous(), _check("decay", decay, x), tree, acc


def scan_forward(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor, level_offsets: Tensor,
                 mode: str, *, block_v: int | None = None, block_c: int | None = None,
                 num_warps: int | None = None) -> tuple[Tensor, Tensor]:
    """(y, up) for x, decay (B, L, C); up is the subtree scan and ``y is up`` for 'subtree'.

    Outputs are float32 (float64 for float64 input). ``block_v``/``block_c``/``num_warps``
    override the launch configuration (for tuning; powers of two).
    """
    x, decay, (order, parent, level_offsets), acc = _prepare(x, decay, order, parent,
                                                             level_offsets, mode)
    B, L, C = x.shape
    up = torch.empty(B, L, C, dtype=acc, device=x.device)
    full = mode == "full"
    y = torch.empty_like(up) if full else up
    if up.numel() == 0:
        return y, up
    bv, bc, nw = _launch_config(C, block_v, block_c, num_warps)
    _scan_forward_kernel[(B, triton.cdiv(C, bc))](
        x, decay, up, y, order, parent, level_offsets, L, C, level_offsets.shape[1] - 1,
        FULL=full, BLOCK_V=bv, BLOCK_C=bc, num_warps=nw)
    return y, up


def scan_down(up: Tensor, decay: Tensor, order: Tensor, parent: Tensor, level_offsets: Tensor,
              *, block_v: int | None = None, block_c: int | None = None,
              num_warps: int | None = None) -> Tensor:
    """y of mode 'full' from its up pass ``up`` (the second half of ``scan_forward``), in the
    accumulation dtype."""
    up, decay, (order, parent, level_offsets), acc = _prepare(up, decay, order, parent,
                                                              level_offsets, "full")
    B, L, C = up.shape
    y = torch.empty(B, L, C, dtype=acc, device=up.device)
    if y.numel() == 0:
        return y
    bv, bc, nw = _launch_config(C, block_v, block_c, num_warps)
    _scan_down_kernel[(B, triton.cdiv(C, bc))](
        up, decay, y, order, parent, level_offsets, L, C, level_offsets.shape[1] - 1,
        BLOCK_V=bv, BLOCK_C=bc, num_warps=nw)
    return y


def scan_backward(grad_y: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
                  level_offsets: Tensor, up: Tensor, y: Tensor, mode: str, *,
                  block_v: int | None = None, block_c: int | None = None,
                  num_warps: int | None = None) -> tuple[Tensor, Tensor]:
    """(grad_x, grad_decay) of the scan; grad_decay is zero at the root.

    ``up`` and ``y`` are the forward outputs (``y`` is unused for 'subtree'). Gradients are
    float32 (float64 for float64 input).
    """
    grad_y, decay, (order, parent, level_offsets), acc = _prepare(grad_y, decay, order, parent,
                                                                  level_offsets, mode)
    up = _check("up", up, grad_y)
    B, L, C = grad_y.shape
    grad_x = torch.empty(B, L, C, dtype=acc, device=grad_y.device)
    grad_decay = torch.empty_like(grad_x)
    if grad_x.numel() == 0:
        return grad_x, grad_decay
    bv, bc, nw = _launch_config(C, block_v, block_c, num_warps)
    grid = (B, triton.cdiv(C, bc))
    num_levels = level_offsets.shape[1] - 1
    if mode == "full":
        _scan_backward_full_kernel[grid](
            grad_y, decay, up, _check("y", y, grad_y), grad_decay, grad_x,
            order, parent, level_offsets, L, C, num_levels,
            BLOCK_V=bv, BLOCK_C=bc, num_warps=nw)
    else:
        _scan_backward_subtree_kernel[grid](
            grad_y, decay, up, grad_x, grad_decay, order, parent, level_offsets, L, C, num_levels,
            BLOCK_V=bv, BLOCK_C=bc, num_warps=nw)
    return grad_x, grad_decay
