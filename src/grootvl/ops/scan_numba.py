"""Tree scan on the CPU with numba (DESIGN.md §2).

Parallel over jobs = (batch row, block of channels). A job walks its tree vertex by vertex in
(reverse) breadth-first order; per vertex it updates a contiguous block of channels of the
channels-last rows, which LLVM vectorises. A block is one or two cache lines wide, so the
job's working set (a few arrays x L rows x block) stays in L2 between the passes.

Memory: forward allocates y and up only (subtree: y only). Backward allocates grad_x and
grad_decay only; grad_decay first holds the up pass of grad_y (up_g), and each vertex's
decay gradient overwrites its up_g entry in the down pass right after that entry's last read.
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

__all__ = ["scan_forward", "scan_backward", "channel_block"]

_BLOCK_BYTES = 128  # channels per job: two cache lines of a channels-last row


def channel_block(batch: int, channels: int, itemsize: int) -> int:
    """Channels per job: about _BLOCK_BYTES wide, but small enough to give every thread work."""
    block = max(1, _BLOCK_BYTES // itemsize)
    threads = numba.get_num_threads()
    while block > 8 and batch * -(-channels // block) < 2 * threads:
        block //= 2
    return min(block, channels)


@njit(cache=True, inline="always")
def _down_pass(ub, lb, yb, ob, pb, c0, c1):
    r = ob[0]
    for c in range(c0, c1):
        yb[r, c] = ub[r, c]
    for i in range(1, ob.shape[0]):  # parents before children
        v = ob[i]
        p = pb[v]
        for c in range(c0, c1):
            lv = lb[v, c]
            yb[v, c] = ub[v, c] * (1 - lv * lv) + lv * yb[p, c]


@njit(parallel=True, cache=True)
def _forward(x, lam, order, parent, up, y, block, full):
    B, L, C = x.shape
    nblk = (C + block - 1) // block
    for job in prange(B * nblk):
        b = job // nblk
        c0 = (job % nblk) * block
        c1 = min(c0 + block, C)
        xb, lb, ub, yb, ob, pb = x[b], lam[b], up[b], y[b], order[b], parent[b]
        for v in range(L):
            for c in range(c0, c1):
                ub[v, c] = xb[v, c]
        for i in range(L - 1, 0, -1):  # up pass: children before parents
            v = ob[i]
            p = pb[v]
            for c in range(c0, c1):
                ub[p, c] += lb[v, c] * ub[v, c]
        if full:
            _down_pass(ub, lb, yb, ob, pb, c0, c1)


@njit(parallel=True, cache=True)
def _backward_full(g, lam, order, parent, up, y, grad_x, grad_lam, block):
    B, L, C = g.shape
    nblk = (C + block - 1) // block
    for job in prange(B * nblk):
        b = job // nblk
        c0 = (job % nblk) * block
        c1 = min(c0 + block, C)
        gb, lb, ob, pb = g[b], lam[b], order[b], parent[b]
        ub, yb, zb, ugb = up[b], y[b], grad_x[b], grad_lam[b]
        for v in range(L):
            for c in range(c0, c1):
                ugb[v, c] = gb[v, c]
        for i in range(L - 1, 0, -1):  # up pass of g -> up_g (held in grad_lam)
            v = ob[i]
            p = pb[v]
            for c in range(c0, c1):
                ugb[p, c] += lb[v, c] * ugb[v, c]
        r = ob[0]
        for c in range(c0, c1):
            zb[r, c] = ugb[r, c]
            ugb[r, c] = 0
        for i in range(1, L):  # down pass of up_g -> z = grad_x; decay gradient over up_g
            v = ob[i]
            p = pb[v]
            for c in range(c0, c1):
                lv = lb[v, c]
                ug = ugb[v, c]
                u = ub[v, c]
                zp = zb[p, c]
                zb[v, c] = ug * (1 - lv * lv) + lv * zp
                ugb[v, c] = ug * (yb[p, c] - lv * u) + u * (zp - lv * ug)


@njit(parallel=True, cache=True)
def _backward_subtree(g, lam, order, parent, up, grad_x, grad_lam, block):
    B, L, C = g.shape
    nblk = (C + block - 1) // block
    for job in prange(B * nblk):
        b = job // nblk
        c0 = (job % nblk) * block
        c1 = min(c0 + block, C)
        gb, lb, ob, pb = g[b], lam[b], order[b], parent[b]
        ub, ab, glb = up[b], grad_x[b], grad_lam[b]
        r = ob[0]
        for c in range(c0, c1):
            ab[r, c] = gb[r, c]
            glb[r, c] = 0
        for i in range(1, L):  # a[v] = g[v] + lam[v] a[parent]; d/d lam[v] = a[parent] up[v]
            v = ob[i]
            p = pb[v]
            for c in range(c0, c1):
                ap = ab[p, c]
                ab[v, c] = gb[v, c] + lb[v, c] * ap
                glb[v, c] = ap * ub[v, c]


def _np(t: Tensor) -> np.ndarray:
    if t.device.type != "cpu":
        raise ValueError(f"the numba tree scan runs on CPU tensors, got one on {t.device}")
    return t.detach().contiguous().numpy()


def scan_forward(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor, level_offsets: Tensor,
                 mode: str) -> tuple[Tensor, Tensor]:
    """(y, up); for mode 'subtree' y is up (the same tensor)."""
    B, L, C = x.shape
    full = mode == "full"
    up = torch.empty_like(x)
    y = torch.empty_like(x) if full else up
    block = channel_block(B, C, x.element_size())
    _forward(_np(x), _np(decay), _np(order), _np(parent), up.numpy(), y.numpy(), block, full)
    return y, up


def scan_backward(grad_y: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
                  level_offsets: Tensor, up: Tensor, y: Tensor, mode: str
                  ) -> tuple[Tensor, Tensor]:
    """(grad_x, grad_decay), grad_decay zero at the root."""
    B, L, C = grad_y.shape
    grad_x = torch.empty_like(grad_y)
    grad_decay = torch.empty_like(grad_y)
    block = channel_block(B, C, grad_y.element_size())
    if mode == "full":
        _backward_full(_np(grad_y), _np(decay), _np(order), _np(parent), _np(up), _np(y),
                       grad_x.numpy(), grad_decay.numpy(), block)
    else:
        _backward_subtree(_np(grad_y), _np(decay), _np(order), _np(parent), _np(up),
                          grad_x.numpy(), grad_decay.numpy(), block)
    return grad_x, grad_decay
