"""The element-wise stages of a Tree SSM layer around the tree scan
(docs/design.md, "The TreeSSM layer").

    discretize:  Δ = softplus(W_Δ dt + b_Δ),  u = Δ · B · x,  decay = exp(Δ · A)
    ssm_output:  out = LayerNorm_out(LayerNorm_h(h) · C + D · x) · silu(z)

x, h, z, u, decay are (B, L, D) channels-last; dt is the rank-R input of the Δ projection
(B, L, R); B and C are one number per position ((B, L, 1)); dt, B and C may be strided
slices of the x_proj output. A, D and b_Δ have one value per channel.

Composed from torch ops each stage is four to seven passes over (B, L, D) memory with a
fresh allocation per intermediate. In the first stage of GrootV-T those are 16 MB each,
larger than the caches, and the element-wise work costs about as much as the layer's matrix
products. ``impl="numba"`` does each stage in one pass per row with the row in L1 cache,
writing into buffers of the caller's choice; it has no backward, so training uses
``impl="torch"``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange
from torch import Tensor

from ._vecmath_numba import exp, silu, softplus

__all__ = ["discretize", "silu_project_discretize", "ssm_output"]

IMPLS = ("torch", "numba")
# error_model="numpy" (x / 0 gives inf, as in torch): numba's default Python error model
# checks every division for zero, and that branch stops LLVM from vectorising the loop.
# Sums over a row (LayerNorm statistics, dot products) are vectorised only if LLVM may
# reassociate them, and then LLVM picks the summation order, per loop. A summing loop that
# also did other work came out differently when its kernel was compiled in the running
# process (optimised together with the kernels that call it) than when it was loaded from
# numba's on-disk cache: the last bits of a gradient depended on whether the cache was
# warm. So "reassoc" is given only to _REDUCE functions whose loops do nothing but sum
# (_dots, _mean_rstd, _sum, ...); every other kernel only contracts multiply-adds.
# tests/test_ssm_elementwise.py checks fresh and cached runs bit for bit. Results depend
# on the vector width (one order per machine), not on the thread count (each row is summed
# by one thread).
_FASTMATH = {"contract"}
_REDUCE = {"contract", "reassoc", "nsz"}


# --------------------------------------------------------------------------- numba kernels
# prange bodies only call plain @njit functions: loops written directly in a prange body
# next to inlined helpers miscompiled with numba 0.68 (see scan_numba.py).
#
# Each row is computed into a per-chunk scratch row before the results are written: the
# outputs may share memory with the inputs (decay with dt, out with h), and LLVM only
# vectorises a loop when its runtime check finds the arrays it reads and writes disjoint.

_ROWS_PER_CHUNK = 64


# Small products of a row with a weight matrix (R + 2 or R rows of D) are written out with
# channels innermost, so they vectorise, and four weight rows per sweep: a sweep loads and
# stores its running row once per four multiply-adds instead of once per multiply-add,
# which is what bounds them (the data are in L1 cache).

@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _add_combination(out, coef, rows):
    """out += coef @ rows; rows is (J, n)."""
    J = coef.shape[0]
    j = 0
    while j + 4 <= J:
        c0, c1, c2, c3 = coef[j], coef[j + 1], coef[j + 2], coef[j + 3]
        w0, w1, w2, w3 = rows[j], rows[j + 1], rows[j + 2], rows[j + 3]
        for k in range(out.shape[0]):
            out[k] += c0 * w0[k] + c1 * w1[k] + c2 * w2[k] + c3 * w3[k]
        j += 4
    for jj in range(j, J):
        c, w = coef[jj], rows[jj]
        for k in range(out.shape[0]):
            out[k] += c * w[k]


@njit(cache=True, fastmath=_REDUCE, error_model="numpy")
def _dots(out, rows, v):
    """out[j] = rows[j] · v; rows is (J, n)."""
    real = v.dtype.type
    J = rows.shape[0]
    j = 0
    while j + 4 <= J:
        w0, w1, w2, w3 = rows[j], rows[j + 1], rows[j + 2], rows[j + 3]
        s0 = s1 = s2 = s3 = real(0)
        for k in range(v.shape[0]):
            vk = v[k]
            s0 += w0[k] * vk
            s1 += w1[k] * vk
            s2 += w2[k] * vk
            s3 += w3[k] * vk
        out[j], out[j + 1], out[j + 2], out[j + 3] = s0, s1, s2, s3
        j += 4
    for jj in range(j, J):
        w = rows[jj]
        total = real(0)
        for k in range(v.shape[0]):
            total += w[k] * v[k]
        out[jj] = total


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _dt_projection_row(dt, weight_t, bias, delta):
    """delta = dt @ weight_t + bias, Δ before its softplus."""
    for k in range(delta.shape[0]):
        delta[k] = bias[k]
    _add_combination(delta, dt, weight_t)


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _discretize_row(dt, weight_t, bias, x, b, a, u, decay, delta):
    _dt_projection_row(dt, weight_t, bias, delta)
    for k in range(delta.shape[0]):
        delta[k] = softplus(delta[k])
    for k in range(delta.shape[0]):
        u[k] = delta[k] * b * x[k]
        decay[k] = exp(delta[k] * a[k])


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _discretize_chunk(dt, weight_t, bias, x, b, a, u, decay, r0, r1):
    delta = np.empty(x.shape[1], x.dtype)
    for i in range(r0, r1):
        _discretize_row(dt[i], weight_t, bias, x[i], b[i], a, u[i], decay[i], delta)


@njit(parallel=True, cache=True, error_model="numpy")
def _discretize_rows(dt, weight_t, bias, x, b, a, u, decay):
    n = x.shape[0]
    for j in prange((n + _ROWS_PER_CHUNK - 1) // _ROWS_PER_CHUNK):
        _discretize_chunk(dt, weight_t, bias, x, b, a, u, decay, j * _ROWS_PER_CHUNK,
                          min(n, (j + 1) * _ROWS_PER_CHUNK))


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _silu_project_row(pre, proj, x, x_dbl, project):
    for k in range(pre.shape[0]):
        x[k] = silu(pre[k])
    if project:  # R + 2 dot products: a matmul this narrow runs far below peak in BLAS
        _dots(x_dbl, proj, x)


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _copy_row(src, dst):
    for k in range(src.shape[0]):
        dst[k] = src[k]


@njit(cache=True, error_model="numpy")
def _silu_project_discretize_chunk(pre, proj, weight_t, bias, a, x, x_dbl, u, decay, project,
                                   write_x, r0, r1):
    # x is staged in a scratch row and written last: x may be pre's memory (in place)
    R = weight_t.shape[0]
    delta = np.empty(pre.shape[1], pre.dtype)
    x_row = np.empty(pre.shape[1], pre.dtype)
    for i in range(r0, r1):
        _silu_project_row(pre[i], proj, x_row, x_dbl[i], project)
        _discretize_row(x_dbl[i, :R], weight_t, bias, x_row, x_dbl[i, R], a, u[i], decay[i],
                        delta)
        if write_x:
            _copy_row(x_row, x[i])


@njit(parallel=True, cache=True, error_model="numpy")
def _silu_project_discretize_rows(pre, proj, weight_t, bias, a, x, x_dbl, u, decay, project,
                                  write_x):
    n = pre.shape[0]
    for j in prange((n + _ROWS_PER_CHUNK - 1) // _ROWS_PER_CHUNK):
        _silu_project_discretize_chunk(pre, proj, weight_t, bias, a, x, x_dbl, u, decay,
                                       project, write_x, j * _ROWS_PER_CHUNK,
                                       min(n, (j + 1) * _ROWS_PER_CHUNK))


@njit(cache=True, fastmath=_REDUCE, error_model="numpy")
def _sum(row):
    total = row.dtype.type(0)
    for k in range(row.shape[0]):
        total += row[k]
    return total


@njit(cache=True, fastmath=_REDUCE, error_model="numpy")
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


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _output_row(h, c, x, z, skip, w1, b1, eps1, w2, b2, eps2, out, y, silu_x):
    m1, r1 = _mean_rstd(h, eps1)
    if silu_x:  # x holds the scan input before its silu
        for k in range(h.shape[0]):
            y[k] = ((h[k] - m1) * r1 * w1[k] + b1[k]) * c + skip[k] * silu(x[k])
    else:
        for k in range(h.shape[0]):
            y[k] = ((h[k] - m1) * r1 * w1[k] + b1[k]) * c + skip[k] * x[k]
    m2, r2 = _mean_rstd(y, eps2)
    for k in range(h.shape[0]):
        out[k] = ((y[k] - m2) * r2 * w2[k] + b2[k]) * silu(z[k])


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _output_chunk(h, c, x, z, skip, w1, b1, eps1, w2, b2, eps2, out, silu_x, r0, r1):
    y = np.empty(h.shape[1], h.dtype)
    for i in range(r0, r1):
        _output_row(h[i], c[i], x[i], z[i], skip, w1, b1, eps1, w2, b2, eps2, out[i], y,
                    silu_x)


@njit(parallel=True, cache=True, error_model="numpy")
def _output_rows(h, c, x, z, skip, w1, b1, eps1, w2, b2, eps2, out, silu_x):
    n = h.shape[0]
    for j in prange((n + _ROWS_PER_CHUNK - 1) // _ROWS_PER_CHUNK):
        _output_chunk(h, c, x, z, skip, w1, b1, eps1, w2, b2, eps2, out, silu_x,
                      j * _ROWS_PER_CHUNK, min(n, (j + 1) * _ROWS_PER_CHUNK))


# --------------------------------------------------------------------------- checks

def _check_impl(op: str, impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")


def _check_numba(op: str, tensors: dict[str, Tensor], dtype: torch.dtype) -> None:
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op} impl='numba' computes in float32 or float64, got {dtype}; "
                        "use impl='torch'")
    for name, t in tensors.items():
        if t.device.type != "cpu":
            raise ValueError(f"{op} impl='numba' runs on CPU tensors, but {name} is on "
                             f"{t.device}; use impl='torch'")
        if t.dtype != dtype:
            raise TypeError(f"{op} impl='numba' needs one dtype, but {name} is {t.dtype} "
                            f"and the others {dtype}")
        if t.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(f"{op} impl='numba' has no backward, but {name} requires "
                               "grad; use impl='torch' for training")


def _check_shapes(op: str, rows: dict[str, Tensor], per_position: dict[str, Tensor],
                  per_channel: dict[str, Tensor]) -> None:
    shape = next(iter(rows.values())).shape
    ok = (all(t.shape == shape for t in rows.values())
          and all(t.shape == (*shape[:-1], 1) for t in per_position.values())
          and all(t.shape == shape[-1:] for t in per_channel.values()))
    if not ok:
        got = ", ".join(f"{n} {tuple(t.shape)}" for d in (rows, per_position, per_channel)
                        for n, t in d.items())
        raise ValueError(f"{op}: {', '.join(rows)} must match (..., D), "
                         f"{', '.join(per_position)} be (..., 1) and "
                         f"{', '.join(per_channel)} (D,); got {got}")


def _rows(t: Tensor, width: int, name: str) -> np.ndarray:
    """(N, width) numpy view of t, which must not need a copy (results are written into it)."""
    r = t.reshape(-1, width)
    if r.data_ptr() != t.data_ptr() or (r.numel() and r.stride(-1) != 1):
        raise ValueError(f"{name} must be a tensor whose rows of {width} are contiguous")
    return r.detach().numpy()


def _numpy(*tensors: Tensor) -> list[np.ndarray]:
    return [t.detach().contiguous().numpy() for t in tensors]


# --------------------------------------------------------------------------- public ops

def discretize(dt: Tensor, dt_weight: Tensor, dt_bias: Tensor, x: Tensor, b: Tensor,
               a: Tensor, impl: str = "torch", u_out: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
    """(u, decay) = (Δ · b · x, exp(Δ · a)) with Δ = softplus(dt @ dt_weight.T + dt_bias).

    Args:
        dt: (..., R) input of the Δ projection. dt_weight: (D, R). dt_bias: (D,).
        x: (..., D) scan input. b: (..., 1) input coefficient B. a: (D,) A (negative).
        impl: ``"torch"`` (differentiable, any device) or ``"numba"`` (CPU inference, without
            materialising Δ).
        u_out: where ``impl="numba"`` writes u, e.g. a dead temporary of x's shape: a fresh
            buffer of this size costs a page fault per 4 KiB on first touch, about as much
            as the kernel itself.
    """
    _check_impl("discretize", impl)
    if impl == "torch":
        # contiguous: on a strided slice the matmul is several times slower (and the bias
        # is added in a separate pass); the copy is only R values per position
        delta = F.softplus(F.linear(dt.contiguous(), dt_weight, dt_bias))
        return delta * b * x, torch.mul(delta, a).exp()  # exp's backward needs only its output
    D, R = dt_weight.shape
    _check_shapes("discretize", {"x": x}, {"b": b}, {"a": a, "dt_bias": dt_bias})
    if dt.shape != (*x.shape[:-1], R):
        raise ValueError(f"discretize: dt must be (..., {R}) for a ({D}, {R}) dt_weight with x "
                         f"{tuple(x.shape)}, got {tuple(dt.shape)}")
    _check_numba("discretize", {"dt": dt, "dt_weight": dt_weight, "dt_bias": dt_bias, "x": x,
                                "b": b, "a": a}, x.dtype)
    u = torch.empty(x.shape, dtype=x.dtype) if u_out is None else u_out
    decay = torch.empty(x.shape, dtype=x.dtype)
    _discretize_rows(*_numpy(dt.reshape(-1, R), dt_weight.t(), dt_bias, x.reshape(-1, D),
                             b.reshape(-1), a), _rows(u, D, "u"), _rows(decay, D, "decay"))
    return u, decay


def silu_project_discretize(pre: Tensor, proj_weight: Tensor, dt_weight: Tensor,
                            dt_bias: Tensor, a: Tensor, x_dbl: Tensor | None = None,
                            impl: str = "torch", x_out: Tensor | None = None,
                            u_out: Tensor | None = None, keep_x: bool = True
                            ) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    """x = silu(pre), x_dbl = x @ proj_weight.T = [dt (R), b, c], then ``discretize``.

    Args:
        pre: (..., D) scan input before its silu. proj_weight: (R + 2, D) (x_proj).
        dt_weight: (D, R). dt_bias: (D,). a: (D,) A (negative).
        x_dbl: (..., R + 2) x_proj's output when already known (backward recomputes only
            u and decay); None computes it.
        impl: ``"torch"`` (differentiable, any device) or ``"numba"`` (CPU, one pass per row).
        x_out, u_out: where ``impl="numba"`` writes x and u (x_out may be ``pre`` itself);
            new tensors if None (see ``discretize`` on why reusing dead buffers pays).
        keep_x: False returns None for x: ``impl="numba"`` then never writes it (the later
            stages take ``pre`` and apply the silu in their own pass).

    Returns:
        (x, x_dbl, u, decay).
    """
    _check_impl("silu_project_discretize", impl)
    D, R = dt_weight.shape
    if impl == "torch":
        x = F.silu(pre)
        x_dbl = F.linear(x, proj_weight) if x_dbl is None else x_dbl
        return (x if keep_x else None, x_dbl,
                *discretize(x_dbl[..., :R], dt_weight, dt_bias, x, x_dbl[..., R:R + 1], a))
    if proj_weight.shape != (R + 2, D):
        raise ValueError(f"silu_project_discretize: proj_weight must be ({R + 2}, {D}) for a "
                         f"({D}, {R}) dt_weight, got {tuple(proj_weight.shape)}")
    _check_shapes("silu_project_discretize", {"pre": pre}, {}, {"a": a, "dt_bias": dt_bias})
    _check_numba("silu_project_discretize", {"pre": pre, "proj_weight": proj_weight,
                                             "dt_weight": dt_weight, "dt_bias": dt_bias, "a": a},
                 pre.dtype)
    project = x_dbl is None
    if project:
        x_dbl = torch.empty((*pre.shape[:-1], R + 2), dtype=pre.dtype)
    if keep_x:
        x = torch.empty(pre.shape, dtype=pre.dtype) if x_out is None else x_out
        x_rows = _rows(x, D, "x")
    else:
        x, x_rows = None, pre.new_empty((0, D)).numpy()
    u = torch.empty(pre.shape, dtype=pre.dtype) if u_out is None else u_out
    decay = torch.empty(pre.shape, dtype=pre.dtype)
    x_dbl_rows = _rows(x_dbl, R + 2, "x_dbl") if project else _numpy(x_dbl.reshape(-1, R + 2))[0]
    _silu_project_discretize_rows(*_numpy(pre.reshape(-1, D), proj_weight, dt_weight.t(),
                                          dt_bias, a),
                                  x_rows, x_dbl_rows, _rows(u, D, "u"),
                                  _rows(decay, D, "decay"), project, keep_x)
    return x, x_dbl, u, decay


def ssm_output(h: Tensor, c: Tensor, x: Tensor, z: Tensor, skip: Tensor,
               h_norm: tuple[Tensor, Tensor, float], out_norm: tuple[Tensor, Tensor, float],
               impl: str = "torch", out: Tensor | None = None, silu_x: bool = False) -> Tensor:
    """``LayerNorm_out(LayerNorm_h(h) · c + skip · x) · silu(z)`` over the last dimension.

    Args:
        h: (..., D) scan output. x: (..., D) scan input. z: (..., D) gate before its silu.
        c: (..., 1) output coefficient C. skip: (D,) the skip weight D.
        h_norm, out_norm: (weight, bias, eps) of the two LayerNorms.
        impl: ``"torch"`` (differentiable, any device) or ``"numba"`` (CPU inference).
        out: where ``impl="numba"`` writes the result (may be ``h``); a new tensor if None.
        silu_x: x is the scan input before its silu (applied here, in the same pass).
    """
    _check_impl("ssm_output", impl)
    if impl == "torch":
        x = F.silu(x) if silu_x else x
        y = torch.addcmul(x * skip, F.layer_norm(h, h.shape[-1:], *h_norm), c)
        return F.layer_norm(y, y.shape[-1:], *out_norm) * F.silu(z)
    _check_shapes("ssm_output", {"h": h, "x": x, "z": z}, {"c": c}, {"skip": skip})
    _check_numba("ssm_output", {"h": h, "c": c, "x": x, "z": z, "skip": skip,
                                "h_norm": h_norm[0], "out_norm": out_norm[0]}, h.dtype)
    D = h.shape[-1]
    out = torch.empty(h.shape, dtype=h.dtype) if out is None else out
    _output_rows(*_numpy(h.reshape(-1, D), c.reshape(-1), x.reshape(-1, D), z.reshape(-1, D),
                         skip, *h_norm[:2]), h_norm[2], *_numpy(*out_norm[:2]), out_norm[2],
                 _rows(out, D, "out"), silu_x)
    return out
