"""Tree scan on the CPU with numba.

The passes are those of docs/design.md, "Forward and backward passes".

Parallel over jobs = (batch row, block of channels). A job walks its tree vertex by vertex in
(reverse) breadth-first order; per vertex it updates a contiguous block of channels of the
channels-last rows, which LLVM vectorises. Blocks are as wide as the thread count allows
(whole rows when B >= threads): narrow blocks read a cache line out of every row and run
several times slower.

Breadth-first order jumps around the image, so the passes are bound by memory latency, not
arithmetic. Each job therefore first streams its inputs in vertex order into the output
buffers (x into up, lam into y, which holds it until the down pass overwrites it), so the
tree-order passes mostly hit cache, and each tree-order pass software-prefetches the rows it
will touch PREFETCH_DISTANCE vertices ahead (the order is known in advance). Gradient terms
that need no particular order are computed in vertex order.

Memory: forward allocates y and up only (subtree: up only, returned as y);
scan_forward_inplace (inference, tree_scan(overwrite_inputs=True)) uses x as up and decay
as y and allocates nothing (with keep_decay, as selective_tree_scan's training forward
calls it, y only); scan_down recomputes y from a saved up pass into a new tensor. Backward
allocates grad_x and grad_decay only (grad_decay only with scan_backward_inplace, which
writes grad_x into grad_y's memory); grad_decay first holds the up pass of grad_y (up_g),
and each vertex's decay gradient overwrites its own up_g entry once z = grad_x is complete.
No scratch buffers.

The body of each prange job is a call to plain @njit helpers: loops written directly in a
prange body next to inlined helpers miscompiled (numba 0.68 gave wrong results).
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic
from torch import Tensor

__all__ = ["scan_forward", "scan_forward_inplace", "scan_down", "scan_backward",
           "scan_backward_inplace", "channel_block"]

PREFETCH_DISTANCE = 16  # vertices; about the number of row misses the core can keep in flight
_MIN_BLOCK = 16  # channels; narrower blocks waste most of each cache line they touch
# Only fused multiply-add contraction (one rounding instead of two); no reassociation, so
# results do not depend on the block size or the thread count.
_FASTMATH = {"contract"}


def channel_block(batch: int, channels: int, threads: int | None = None) -> int:
    """Channels per job: whole rows, split only as far as needed to give every thread a job."""
    threads = numba.get_num_threads() if threads is None else threads
    splits = max(1, -(-threads // max(batch, 1)))
    block = -(-channels // splits)
    block = -(-block // _MIN_BLOCK) * _MIN_BLOCK
    return max(1, min(block, channels))


@intrinsic
def _prefetch(typingctx, arr, row, col, nbytes):
    """Prefetch ``nbytes`` from ``&arr[row, col]`` (2-D C-contiguous) into cache, line by line."""
    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer2(
            context, builder, ary.data, cgutils.unpack_tuple(builder, ary.shape),
            cgutils.unpack_tuple(builder, ary.strides), aryty.layout, [args[1], args[2]],
            wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        base = builder.bitcast(ptr, i8p)
        line = context.get_constant(types.intp, 64)
        with cgutils.for_range_slice(builder, context.get_constant(types.intp, 0), args[3],
                                     line) as (offset, _):
            # read access, keep in all cache levels, data cache
            builder.call(fn, [builder.gep(base, [offset]), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(arr, row, col, nbytes), codegen


# Inner loops index 1-D row slices from 0 so LLVM can drop numba's negative-index wraparound
# and vectorise; `one` is passed in the array dtype because an integer literal would promote
# float32 arithmetic to float64.

@njit(cache=True, fastmath=_FASTMATH)
def _copy_rows(src, dst, c0, c1):
    """dst = src, streaming in vertex order."""
    for v in range(src.shape[0]):
        s, d = src[v, c0:c1], dst[v, c0:c1]
        for k in range(c1 - c0):
            d[k] = s[k]


@njit(cache=True, fastmath=_FASTMATH)
def _copy_rows2(src, dst, src2, dst2, c0, c1):
    """dst = src and dst2 = src2, streaming in vertex order."""
    for v in range(src.shape[0]):
        s, d, s2, d2 = src[v, c0:c1], dst[v, c0:c1], src2[v, c0:c1], dst2[v, c0:c1]
        for k in range(c1 - c0):
            d[k] = s[k]
            d2[k] = s2[k]


@njit(cache=True, fastmath=_FASTMATH)
def _up_pass(acc, lam, order, parent, c0, c1):
    """acc[parent] += lam[v] * acc[v] for v in reverse breadth-first order (children first)."""
    nbytes = (c1 - c0) * acc.itemsize
    for i in range(order.shape[0] - 1, 0, -1):
        if i > PREFETCH_DISTANCE:
            w = order[i - PREFETCH_DISTANCE]
            _prefetch(lam, w, c0, nbytes)
            _prefetch(acc, w, c0, nbytes)
        v = order[i]
        dst = acc[parent[v], c0:c1]
        src = acc[v, c0:c1]
        lv = lam[v, c0:c1]
        for k in range(c1 - c0):
            dst[k] += lv[k] * src[k]


@njit(cache=True, fastmath=_FASTMATH)
def _down_pass(up, y, order, parent, c0, c1, one):
    """y[root] = up[root]; y[v] = up[v] (1 - lam[v]^2) + lam[v] y[parent], parents first.

    y holds lam on entry: each y[v] is read as lam[v] and then overwritten, and y[parent]
    is already final, so the pass streams two rows per vertex instead of three.
    """
    L = order.shape[0]
    nbytes = (c1 - c0) * up.itemsize
    r = order[0]
    y[r, c0:c1] = up[r, c0:c1]
    for i in range(1, L):
        if i + PREFETCH_DISTANCE < L:
            w = order[i + PREFETCH_DISTANCE]
            _prefetch(up, w, c0, nbytes)
            _prefetch(y, w, c0, nbytes)
        v = order[i]
        yp = y[parent[v], c0:c1]
        yv = y[v, c0:c1]
        uv = up[v, c0:c1]
        for k in range(c1 - c0):
            lv = yv[k]
            yv[k] = uv[k] * (one - lv * lv) + lv * yp[k]


@njit(cache=True)
def _job(job, nblk, block, C):
    """Job -> (batch row, first channel, end channel): nblk channel blocks per row."""
    c0 = (job % nblk) * block
    return job // nblk, c0, min(c0 + block, C)


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _forward(x, lam, order, parent, up, y, block, full, one, copy_x, copy_lam):
    # The passes visit rows in tree order; a first sequential pass copies x into up and lam
    # into y, so the later random-order passes find their rows in cache (and y already
    # allocated there) instead of waiting on memory row by row. Without copy_x, up is x;
    # without copy_lam (full mode), y is lam: the scan works in its inputs' memory.
    B, L, C = x.shape
    nblk = (C + block - 1) // block
    for job in prange(B * nblk):
        b, c0, c1 = _job(job, nblk, block, C)
        if full:
            if copy_x and copy_lam:
                _copy_rows2(x[b], up[b], lam[b], y[b], c0, c1)
            elif copy_x:
                _copy_rows(x[b], up[b], c0, c1)
            elif copy_lam:
                _copy_rows(lam[b], y[b], c0, c1)
            _up_pass(up[b], y[b], order[b], parent[b], c0, c1)
            _down_pass(up[b], y[b], order[b], parent[b], c0, c1, one)
        else:
            if copy_x:
                _copy_rows(x[b], up[b], c0, c1)
            _up_pass(up[b], lam[b], order[b], parent[b], c0, c1)


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _down(up, lam, order, parent, y, block, one):
    B, L, C = up.shape
    nblk = (C + block - 1) // block
    for job in prange(B * nblk):
        b, c0, c1 = _job(job, nblk, block, C)
        _copy_rows(lam[b], y[b], c0, c1)
        _down_pass(up[b], y[b], order[b], parent[b], c0, c1, one)


@njit(cache=True, fastmath=_FASTMATH)
def _decay_grad_full(up_g, up, y, z, lam, parent, root, c0, c1):
    """Overwrite up_g[v] with up_g[v] (y[p] - lam[v] up[v]) + up[v] (z[p] - lam[v] up_g[v]).

    Any vertex order is valid here, so it runs in vertex-id order: rows stream sequentially,
    and for grid and text trees the parent p is a near neighbour whose rows are still cached.
    Each up_g[v] is read only by its own update.
    """
    for v in range(parent.shape[0]):
        p = max(parent[v], 0)  # the root's entry is zeroed below
        ug_v, uv, lv = up_g[v, c0:c1], up[v, c0:c1], lam[v, c0:c1]
        yp, zp = y[p, c0:c1], z[p, c0:c1]
        for k in range(c1 - c0):
            lam_k = lv[k]
            ug = ug_v[k]
            u = uv[k]
            ug_v[k] = ug * (yp[k] - lam_k * u) + u * (zp[k] - lam_k * ug)
    up_g[root, c0:c1] = 0


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _backward_full(g, lam, order, parent, up, y, grad_x, grad_lam, block, one, in_place):
    B, L, C = g.shape
    nblk = (C + block - 1) // block
    for job in prange(B * nblk):
        b, c0, c1 = _job(job, nblk, block, C)
        # up_g is held in grad_lam; z = S g (the down pass of up_g) is grad_x, which holds
        # lam until the down pass overwrites it. in_place: grad_x is g's memory.
        if in_place:
            _copy_rows(g[b], grad_lam[b], c0, c1)
            _copy_rows(lam[b], grad_x[b], c0, c1)
        else:
            _copy_rows2(g[b], grad_lam[b], lam[b], grad_x[b], c0, c1)
        _up_pass(grad_lam[b], grad_x[b], order[b], parent[b], c0, c1)
        _down_pass(grad_lam[b], grad_x[b], order[b], parent[b], c0, c1, one)
        _decay_grad_full(grad_lam[b], up[b], y[b], grad_x[b], lam[b], parent[b], order[b, 0],
                         c0, c1)


@njit(cache=True, fastmath=_FASTMATH)
def _subtree_down_pass(a, lam_in_grad, order, c0, c1, parent):
    """a[v] += lam[v] a[parent] in breadth-first order, with lam read from lam_in_grad."""
    L = order.shape[0]
    nbytes = (c1 - c0) * a.itemsize
    for i in range(1, L):
        if i + PREFETCH_DISTANCE < L:
            w = order[i + PREFETCH_DISTANCE]
            _prefetch(a, w, c0, nbytes)
            _prefetch(lam_in_grad, w, c0, nbytes)
        v = order[i]
        av, ap, lv = a[v, c0:c1], a[parent[v], c0:c1], lam_in_grad[v, c0:c1]
        for k in range(c1 - c0):
            av[k] += lv[k] * ap[k]


@njit(cache=True, fastmath=_FASTMATH)
def _decay_grad_subtree(a, up, grad_lam, parent, root, c0, c1):
    """grad_lam[v] = a[parent] up[v], in vertex order (parents are near neighbours)."""
    for v in range(parent.shape[0]):
        ap, uv, glv = a[max(parent[v], 0), c0:c1], up[v, c0:c1], grad_lam[v, c0:c1]
        for k in range(c1 - c0):
            glv[k] = ap[k] * uv[k]
    grad_lam[root, c0:c1] = 0


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _backward_subtree(g, lam, order, parent, up, grad_x, grad_lam, block, in_place):
    # a = grad_x: a[root] = g[root], a[v] = g[v] + lam[v] a[parent]; grad_lam[v] = a[p] up[v].
    # in_place: grad_x is g's memory.
    B, L, C = g.shape
    nblk = (C + block - 1) // block
    for job in prange(B * nblk):
        b, c0, c1 = _job(job, nblk, block, C)
        if in_place:
            _copy_rows(lam[b], grad_lam[b], c0, c1)
        else:
            _copy_rows2(g[b], grad_x[b], lam[b], grad_lam[b], c0, c1)
        _subtree_down_pass(grad_x[b], grad_lam[b], order[b], c0, c1, parent[b])
        _decay_grad_subtree(grad_x[b], up[b], grad_lam[b], parent[b], order[b, 0], c0, c1)


_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _np(t: Tensor) -> np.ndarray:
    if t.device.type != "cpu":
        raise ValueError(f"the numba tree scan runs on CPU tensors, got one on {t.device}")
    return t.detach().contiguous().numpy()


def _one(t: Tensor):
    if t.dtype not in _NP_DTYPES:
        raise TypeError(f"the numba tree scan computes in float32 or float64, got {t.dtype}")
    return _NP_DTYPES[t.dtype](1)


def scan_forward(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor, level_offsets: Tensor,
                 mode: str) -> tuple[Tensor, Tensor]:
    """(y, up); for mode 'subtree' y is up (the same tensor)."""
    B, L, C = x.shape
    full = mode == "full"
    one = _one(x)
    up = torch.empty_like(x)
    y = torch.empty_like(x) if full else up
    _forward(_np(x), _np(decay), _np(order), _np(parent), up.numpy(), y.numpy(),
             channel_block(B, C), full, one, True, True)
    return y, up


def scan_forward_inplace(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
                         level_offsets: Tensor, mode: str, keep_decay: bool = False) -> Tensor:
    """The forward scan using x and decay as its buffers: the up pass is left in x's memory,
    y is returned in decay's memory (mode 'full') or x's (mode 'subtree', where y is the up
    pass). keep_decay: decay is left as it was and y (mode 'full') is a new tensor. x and
    decay must be contiguous and of the same dtype."""
    B, L, C = x.shape
    full = mode == "full"
    xa, lam = x.numpy(), decay.numpy()
    y = torch.empty_like(decay) if full and keep_decay else decay
    _forward(xa, lam, _np(order), _np(parent), xa, y.numpy(), channel_block(B, C), full,
             _one(x), False, y is not decay)
    return y if full else x


def scan_down(up: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
              level_offsets: Tensor) -> Tensor:
    """y of mode 'full' from its up pass (the forward's second half): y[root] = up[root],
    y[v] = up[v] (1 - decay[v]^2) + decay[v] y[parent], parents first."""
    B, L, C = up.shape
    y = torch.empty_like(up)
    _down(_np(up), _np(decay), _np(order), _np(parent), y.numpy(), channel_block(B, C),
          _one(up))
    return y


def scan_backward(grad_y: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
                  level_offsets: Tensor, up: Tensor, y: Tensor, mode: str
                  ) -> tuple[Tensor, Tensor]:
    """(grad_x, grad_decay), grad_decay zero at the root."""
    return _backward(grad_y, decay, order, parent, up, y, mode, torch.empty_like(grad_y), False)


def scan_backward_inplace(grad_y: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
                          level_offsets: Tensor, up: Tensor, y: Tensor, mode: str
                          ) -> tuple[Tensor, Tensor]:
    """``scan_backward`` writing grad_x into grad_y's memory (contiguous, consumed)."""
    return _backward(grad_y, decay, order, parent, up, y, mode, grad_y, True)


def _backward(grad_y: Tensor, decay: Tensor, order: Tensor, parent: Tensor, up: Tensor,
              y: Tensor, mode: str, grad_x: Tensor, in_place: bool) -> tuple[Tensor, Tensor]:
    B, L, C = grad_y.shape
    grad_decay = torch.empty_like(grad_y)
    block = channel_block(B, C)
    g = grad_y.numpy() if in_place else _np(grad_y)
    if mode == "full":
        _backward_full(g, _np(decay), _np(order), _np(parent), _np(up), _np(y), grad_x.numpy(),
                       grad_decay.numpy(), block, _one(grad_y), in_place)
    else:
        _backward_subtree(g, _np(decay), _np(order), _np(parent), _np(up), grad_x.numpy(),
                          grad_decay.numpy(), block, in_place)
    return grad_x, grad_decay
