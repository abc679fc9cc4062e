"""The output stage of a Tree SSM layer, fused on the CPU for inference (DESIGN.md §4).

    out = LayerNorm_out(LayerNorm_h(h) * c + skip * x) * z

``h`` (B, L, D) is the tree scan's result, ``c`` (B, L, 1) the per-position output
coefficient C, ``x`` the scan input, ``skip`` the per-channel D and ``z`` the gate. Composed
from torch ops this is seven passes over (B, L, D) memory and three fresh (B, L, D)
allocations; in the first stage of GrootV-T each is 16 MB, larger than the caches, so the
element-wise work costs about as much as the layer's matrix products. ``impl="numba"`` does
it in one pass per row, with the row in L1 cache, and writes into a buffer of the caller's
choice (usually ``h``). It has no backward: training uses ``impl="torch"``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange
from torch import Tensor

__all__ = ["ssm_output"]

# reassoc lets LLVM vectorise the mean and variance sums (the result then depends on the
# vector width, not on the thread count: each row is summed by one thread).
_FASTMATH = {"contract", "reassoc", "nsz"}


@njit(cache=True, fastmath=_FASTMATH)
def _mean_rstd(row, eps):
    # constants in the row's dtype: a Python int or float would promote float32 math to float64
    real = row.dtype.type
    n = real(row.shape[0])
    total = real(0)
    for k in range(row.shape[0]):
        total += row[k]
    mean = total / n
    sq = real(0)
    for k in range(row.shape[0]):
        d = row[k] - mean
        sq += d * d
    return mean, real(1) / np.sqrt(sq / n + real(eps))


@njit(cache=True, fastmath=_FASTMATH)
def _output_row(h, c, x, z, skip, w1, b1, eps1, w2, b2, eps2, out):
    # out may be h: every h[k] is read before out[k] is written
    m1, r1 = _mean_rstd(h, eps1)
    for k in range(h.shape[0]):
        out[k] = ((h[k] - m1) * r1 * w1[k] + b1[k]) * c + skip[k] * x[k]
    m2, r2 = _mean_rstd(out, eps2)
    for k in range(h.shape[0]):
        out[k] = ((out[k] - m2) * r2 * w2[k] + b2[k]) * z[k]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _output_rows(h, c, x, z, skip, w1, b1, eps1, w2, b2, eps2, out):
    for i in prange(h.shape[0]):
        _output_row(h[i], c[i], x[i], z[i], skip, w1, b1, eps1, w2, b2, eps2, out[i])


def _torch(h, c, x, z, skip, h_norm, out_norm):
    h = F.layer_norm(h, h.shape[-1:], *h_norm)
    y = torch.addcmul(x * skip, h, c)
    return F.layer_norm(y, y.shape[-1:], *out_norm) * z


def _check_numba(tensors: dict[str, Tensor], dtype: torch.dtype) -> None:
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"ssm_output impl='numba' computes in float32 or float64, got {dtype}; "
                        "use impl='torch'")
    for name, t in tensors.items():
        if t.device.type != "cpu":
            raise ValueError(f"ssm_output impl='numba' runs on CPU tensors, but {name} is on "
                             f"{t.device}; use impl='torch'")
        if t.dtype != dtype:
            raise TypeError(f"ssm_output impl='numba' needs one dtype, but {name} is {t.dtype} "
                            f"and h is {dtype}")
        if t.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(f"ssm_output impl='numba' has no backward, but {name} requires "
                               "grad; use impl='torch' for training")


def ssm_output(h: Tensor, c: Tensor, x: Tensor, z: Tensor, skip: Tensor,
               h_norm: tuple[Tensor, Tensor, float], out_norm: tuple[Tensor, Tensor, float],
               impl: str = "torch", out: Tensor | None = None) -> Tensor:
    """``LayerNorm_out(LayerNorm_h(h) * c + skip * x) * z`` over the last dimension.

    Args:
        h, x, z: (..., D) tensors. c: (..., 1). skip: (D,).
        h_norm, out_norm: (weight, bias, eps) of the two LayerNorms.
        impl: ``"torch"`` (differentiable, any device) or ``"numba"`` (CPU inference, one
            fused pass; float32/float64; the last dimension of h, x, z must be contiguous).
        out: where ``impl="numba"`` writes the result (may be ``h``); a new tensor if None.
    """
    if impl == "torch":
        return _torch(h, c, x, z, skip, h_norm, out_norm)
    if impl != "numba":
        raise ValueError(f"ssm_output impl must be 'torch' or 'numba', got {impl!r}")
    D = h.shape[-1]
    if c.shape[-1] != 1 or x.shape != h.shape or z.shape != h.shape or skip.shape != (D,):
        raise ValueError(f"ssm_output: h {tuple(h.shape)}, x {tuple(x.shape)} and z "
                         f"{tuple(z.shape)} must match, c must be (..., 1) (got "
                         f"{tuple(c.shape)}) and skip ({D},) (got {tuple(skip.shape)})")
    params = (skip, *h_norm[:2], *out_norm[:2])
    _check_numba({"c": c, "x": x, "z": z, "skip": skip, "h_norm": h_norm[0],
                  "out_norm": out_norm[0]}, h.dtype)
    out = torch.empty_like(h, memory_format=torch.contiguous_format) if out is None else out
    rows = [t.reshape(-1, D) for t in (h, x, z, out)]
    if rows[3].data_ptr() != out.data_ptr() or rows[3].stride(-1) != 1:
        raise ValueError("ssm_output: out must be a tensor whose (..., D) rows are contiguous")
    hr, xr, zr, outr = (r.detach().numpy() for r in rows)
    skip, w1, b1, w2, b2 = (p.detach().contiguous().numpy() for p in params)
    _output_rows(hr, c.reshape(-1).detach().numpy(), xr, zr, skip, w1, b1, h_norm[2], w2, b2,
                 out_norm[2], outr)
    return out
