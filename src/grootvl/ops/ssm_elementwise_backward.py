"""Backward passes of the element-wise stages of a Tree SSM layer (see ``ssm_elementwise``).

They take only what the memory-lean ``selective_tree_scan`` keeps for backward (the scan
input before its silu, the gate before its silu, x_proj's small output, the scan output h)
and recompute every cheap intermediate (silu, Δ, the LayerNorms, the gate) on the way:

    output_backward:   out = LN_out(LN_h(h) · c + skip · x) · silu(z), x = silu(pre)
                       ->  gradients of h, c, x, z, skip and both norms' weight and bias
                       (and out itself, which the output projection's weight gradient needs)
    silu_project_discretize_backward:
                       x = silu(pre), [dt, b, c] = x W_xᵀ, Δ = softplus(dt W_Δᵀ + b_Δ),
                       u = Δ · b · x, decay = exp(Δ · a)  ->  gradients of pre, W_x, W_Δ,
                       b_Δ, a (grad_x from the output stage and grad_c come in)

Rows are (..., D) channels-last; per-position scalars (b, c) are single columns of x_proj's
output ``x_dbl`` = [dt (R), b, c]. ``impl="torch"`` composes ATen ops (any device; the
LayerNorm backward is ATen's own); ``impl="numba"`` is one pass per row on CPU, each row
computed in L1 cache, with per-chunk partial sums for the parameter gradients.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange
from torch import Tensor

from ._vecmath_numba import exp, silu, softplus_and_sigmoid
from .ssm_elementwise import (_FASTMATH, _REDUCE, _ROWS_PER_CHUNK, _add_combination, _dots,
                              _dt_projection_row, _mean_rstd, _sum)

__all__ = ["output_backward", "silu_project_discretize_backward"]

IMPLS = ("torch", "numba")
_NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}
aten = torch.ops.aten


# --------------------------------------------------------------------------- numba kernels
# As in ssm_elementwise: prange bodies only call plain @njit functions, every constant is in
# the row's dtype, rows are staged through scratch rows so that loops vectorise, and sums
# over a row are left to the _REDUCE helpers (a per-element term goes to a scratch row
# first) so that their order does not depend on how numba compiled the caller.

@njit(cache=True, fastmath=_REDUCE, error_model="numpy")
def _sum_and_dot(g, x):
    """(Σ g, Σ g·x) over a row."""
    s1 = g.dtype.type(0)
    s2 = g.dtype.type(0)
    for k in range(g.shape[0]):
        s1 += g[k]
        s2 += g[k] * x[k]
    return s1, s2


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _norm_input_grad_row(g_hat, xhat, rstd, out):
    """LayerNorm's input gradient from the gradient of the normalised row (g_hat) and the
    normalised row (xhat): rstd (g_hat - mean(g_hat) - xhat mean(g_hat xhat)). out may be
    g_hat."""
    real = xhat.dtype.type
    inv_n = real(1) / real(xhat.shape[0])
    s1, s2 = _sum_and_dot(g_hat, xhat)
    s1 *= inv_n
    s2 *= inv_n
    for k in range(xhat.shape[0]):
        out[k] = rstd * (g_hat[k] - s1 - xhat[k] * s2)


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _output_backward_row(g, h, c, pre, z, skip, w1, b1, eps1, w2, b2, eps2,
                         out, grad_h, grad_x, grad_z, acc, hhat, yhat, tmp, out_row, x):
    """One row, x = silu(pre) recomputed into the scratch row ``x``; returns grad_c. acc rows
    += grads of w1, b1, w2, b2, skip. ``out`` may be ``g``'s memory: it is staged in
    ``out_row`` and written once g is read."""
    real = h.dtype.type
    one = real(1)
    m1, r1 = _mean_rstd(h, eps1)
    for k in range(h.shape[0]):
        hhat[k] = (h[k] - m1) * r1
    for k in range(h.shape[0]):
        x[k] = silu(pre[k])
    for k in range(h.shape[0]):
        tmp[k] = (hhat[k] * w1[k] + b1[k]) * c + skip[k] * x[k]
    m2, r2 = _mean_rstd(tmp, eps2)
    for k in range(h.shape[0]):
        yh = (tmp[k] - m2) * r2
        yhat[k] = yh
        zk = z[k]
        sig = one / (one + exp(-zk))
        gate = zk * sig
        n2 = yh * w2[k] + b2[k]
        gk = g[k]
        out_row[k] = n2 * gate
        grad_z[k] = gk * n2 * (sig * (one + zk * (one - sig)))
        g_n2 = gk * gate
        acc[2, k] += g_n2 * yh
        acc[3, k] += g_n2
        tmp[k] = g_n2 * w2[k]
    _norm_input_grad_row(tmp, yhat, r2, tmp)  # tmp: grad of y = LN_h(h) c + skip x
    for k in range(h.shape[0]):  # yhat is dead: it takes grad_c's terms
        g_y = tmp[k]
        hh = hhat[k]
        yhat[k] = g_y * (hh * w1[k] + b1[k])
        acc[4, k] += g_y * x[k]
        grad_x[k] = g_y * skip[k]
        g_n1 = g_y * c
        acc[0, k] += g_n1 * hh
        acc[1, k] += g_n1
        tmp[k] = g_n1 * w1[k]
        out[k] = out_row[k]
    _norm_input_grad_row(tmp, hhat, r1, grad_h)
    return _sum(yhat)


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _output_backward_chunk(g, h, x_dbl, col_c, pre, z, skip, w1, b1, eps1, w2, b2, eps2,
                           out, grad_h, grad_x, grad_z, grad_x_dbl, acc, r0, r1):
    n = h.shape[1]
    hhat = np.empty(n, h.dtype)
    yhat = np.empty(n, h.dtype)
    tmp = np.empty(n, h.dtype)
    out_row = np.empty(n, h.dtype)
    x = np.empty(n, h.dtype)
    for i in range(r0, r1):
        grad_x_dbl[i, col_c] = _output_backward_row(
            g[i], h[i], x_dbl[i, col_c], pre[i], z[i], skip, w1, b1, eps1, w2, b2, eps2,
            out[i], grad_h[i], grad_x[i], grad_z[i], acc, hhat, yhat, tmp, out_row, x)


@njit(parallel=True, cache=True, error_model="numpy")
def _output_backward_rows(g, h, x_dbl, col_c, pre, z, skip, w1, b1, eps1, w2, b2, eps2,
                          out, grad_h, grad_x, grad_z, grad_x_dbl, acc):
    n = h.shape[0]
    for j in prange((n + _ROWS_PER_CHUNK - 1) // _ROWS_PER_CHUNK):
        _output_backward_chunk(g, h, x_dbl, col_c, pre, z, skip, w1, b1, eps1, w2, b2, eps2,
                               out, grad_h, grad_x, grad_z, grad_x_dbl, acc[j],
                               j * _ROWS_PER_CHUNK, min(n, (j + 1) * _ROWS_PER_CHUNK))


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _discretize_backward_row(gu, gl, lam, x_dbl, weight_t, bias, pre, a, grad_x,
                             grad_x_dbl, acc, delta_pre, gpre, x, sig):
    """grad_x += Δ · b · grad_u and grad_x_dbl[:R + 1] = gradients of dt and b, for one row;
    x = silu(pre) and its sigmoid go to the scratch rows x and sig, the gradient of Δ's
    pre-activation to gpre. acc rows += grads of a and b_Δ."""
    real = pre.dtype.type
    one = real(1)
    threshold = real(20)  # softplus' threshold: above it softplus is the identity
    R = weight_t.shape[0]
    b = x_dbl[R]
    _dt_projection_row(x_dbl[:R], weight_t, bias, delta_pre)
    for k in range(pre.shape[0]):
        s = one / (one + exp(-pre[k]))
        sig[k] = s
        x[k] = pre[k] * s
    for k in range(pre.shape[0]):
        p = delta_pre[k]
        delta, sp = softplus_and_sigmoid(p)  # sp: softplus' derivative
        guk = gu[k]
        g_lam = gl[k] * lam[k]
        g_delta = guk * b * x[k] + g_lam * a[k]
        delta_pre[k] = guk * delta * x[k]  # read above: now grad_b's term
        grad_x[k] += guk * delta * b
        acc[0, k] += g_lam * delta
        gp = g_delta if p > threshold else g_delta * sp
        gpre[k] = gp
        acc[1, k] += gp
    _dots(grad_x_dbl[:R], weight_t, gpre)
    grad_x_dbl[R] = _sum(delta_pre)


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _silu_input_backward_row(gx, gp, proj, pre, sig, tmp):
    """gx = (gx + gp @ proj) · silu'(pre) in place, with sig = sigmoid(pre)."""
    one = pre.dtype.type(1)
    for k in range(pre.shape[0]):
        tmp[k] = gx[k]
    _add_combination(tmp, gp, proj)
    for k in range(pre.shape[0]):
        s = sig[k]
        gx[k] = tmp[k] * (s * (one + pre[k] * (one - s)))


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _add_outer(acc, coef, vecs, q):
    """acc[j] += Σ_t coef[t, j] · vecs[t] over the first q (≤ 4) rows: the weight gradients
    of q positions at once, so each acc row is loaded and stored once per q products."""
    for j in range(acc.shape[0]):
        _add_combination(acc[j], coef[:q, j], vecs[:q])


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _input_backward_chunk(gu, gl, lam, x_dbl, weight_t, bias, proj, pre, a, grad_x,
                          grad_x_dbl, acc, r0, r1):
    n = pre.shape[1]
    R = weight_t.shape[0]
    delta_pre = np.empty(n, pre.dtype)
    tmp = np.empty(n, pre.dtype)
    gpre = np.empty((4, n), pre.dtype)
    x = np.empty((4, n), pre.dtype)
    sig = np.empty((4, n), pre.dtype)
    for i in range(r0, r1, 4):
        q = min(4, r1 - i)
        for t in range(q):
            _discretize_backward_row(gu[i + t], gl[i + t], lam[i + t], x_dbl[i + t], weight_t,
                                     bias, pre[i + t], a, grad_x[i + t],
                                     grad_x_dbl[i + t], acc, delta_pre, gpre[t], x[t], sig[t])
        _add_outer(acc[2:2 + R], x_dbl[i:i + q, :R], gpre, q)
        for t in range(q):  # x also feeds x_proj
            _silu_input_backward_row(grad_x[i + t], grad_x_dbl[i + t], proj, pre[i + t], sig[t],
                                     tmp)
        _add_outer(acc[2 + R:], grad_x_dbl[i:i + q], x, q)


@njit(parallel=True, cache=True, error_model="numpy")
def _input_backward_rows(gu, gl, lam, x_dbl, weight_t, bias, proj, pre, a, grad_x,
                         grad_x_dbl, acc):
    n = pre.shape[0]
    for j in prange((n + _ROWS_PER_CHUNK - 1) // _ROWS_PER_CHUNK):
        _input_backward_chunk(gu, gl, lam, x_dbl, weight_t, bias, proj, pre, a, grad_x,
                              grad_x_dbl, acc[j], j * _ROWS_PER_CHUNK,
                              min(n, (j + 1) * _ROWS_PER_CHUNK))


# --------------------------------------------------------------------------- helpers

def _check_impl(op: str, impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")


def _rows(t: Tensor) -> np.ndarray:
    """(N, D) numpy array of a CPU tensor, copied only if its rows are not contiguous."""
    return t.detach().reshape(-1, t.shape[-1]).contiguous().numpy()


def _chunks(rows: int) -> int:
    return (rows + _ROWS_PER_CHUNK - 1) // _ROWS_PER_CHUNK


# --------------------------------------------------------------------------- public ops

def output_backward(grad_out: Tensor, h: Tensor, x_dbl: Tensor, pre: Tensor, z: Tensor,
                    skip: Tensor, h_norm: tuple[Tensor, Tensor, float],
                    out_norm: tuple[Tensor, Tensor, float], grad_x_dbl: Tensor,
                    impl: str = "torch") -> tuple[Tensor, ...]:
    """Backward of ``ssm_output`` with x = silu(pre) and c = x_dbl[..., -1], recomputing its
    intermediates.

    Args:
        grad_out: (..., D) gradient of out. h, z: (..., D) as in ``ssm_output``.
        pre: (..., D) the scan input before its silu.
        x_dbl: (..., R + 2) x_proj output whose last column is c. skip: (D,).
        h_norm, out_norm: (weight, bias, eps) of the two LayerNorms.
        grad_x_dbl: (..., R + 2) buffer; its last column receives grad_c.
        impl: ``"torch"`` (any device) or ``"numba"`` (CPU; writes ``out`` into grad_out's
            memory, which must be a contiguous tensor of the compute dtype).

    Returns:
        (out, grad_h, grad_x, grad_z, grad_skip, grad_h_norm_weight, grad_h_norm_bias,
        grad_out_norm_weight, grad_out_norm_bias); ``out`` is the recomputed forward result,
        grad_x the gradient of x = silu(pre).
    """
    _check_impl("output_backward", impl)
    D = h.shape[-1]
    if impl == "torch":
        x = F.silu(pre)
        c = x_dbl[..., -1:]
        n1, m1, r1 = aten.native_layer_norm(h, [D], *h_norm)
        y = torch.addcmul(x * skip, n1, c)
        n2, m2, r2 = aten.native_layer_norm(y, [D], *out_norm)
        gate = F.silu(z)
        grad_z = aten.silu_backward(grad_out * n2, z)
        g_y, g_w2, g_b2 = aten.native_layer_norm_backward(
            grad_out * gate, y, [D], m2, r2, out_norm[0], out_norm[1], [True, True, True])
        grad_x_dbl[..., -1:] = (g_y * n1).sum(-1, keepdim=True)
        grad_skip = (g_y * x).reshape(-1, D).sum(0)
        g_h, g_w1, g_b1 = aten.native_layer_norm_backward(
            g_y * c, h, [D], m1, r1, h_norm[0], h_norm[1], [True, True, True])
        return n2 * gate, g_h, g_y * skip, grad_z, grad_skip, g_w1, g_b1, g_w2, g_b2
    shape = h.shape
    grad_h, grad_x, grad_z = (torch.empty(shape, dtype=h.dtype) for _ in range(3))
    if not grad_out.is_contiguous() or grad_out.dtype != h.dtype:
        raise ValueError("output_backward impl='numba' writes out into grad_out: it must be a "
                         f"contiguous {h.dtype} tensor")
    out = grad_out
    acc = np.zeros((_chunks(h.numel() // D), 5, D), _NP_DTYPE[h.dtype])
    gxd = grad_x_dbl.view(-1, x_dbl.shape[-1]).numpy()
    _output_backward_rows(
        _rows(grad_out), _rows(h), _rows(x_dbl), x_dbl.shape[-1] - 1, _rows(pre), _rows(z),
        skip.detach().numpy(), h_norm[0].detach().numpy(), h_norm[1].detach().numpy(),
        h_norm[2], out_norm[0].detach().numpy(), out_norm[1].detach().numpy(), out_norm[2],
        _rows(out), _rows(grad_h), _rows(grad_x), _rows(grad_z), gxd, acc)
    sums = torch.from_numpy(acc.sum(0))
    return out, grad_h, grad_x, grad_z, sums[4], sums[0], sums[1], sums[2], sums[3]


def silu_project_discretize_backward(grad_u: Tensor, grad_decay: Tensor, grad_x: Tensor,
                                     grad_x_dbl: Tensor, decay: Tensor, x_dbl: Tensor,
                                     pre: Tensor, proj_weight: Tensor, dt_weight: Tensor,
                                     dt_bias: Tensor, a: Tensor, impl: str = "torch"
                                     ) -> tuple[Tensor, ...]:
    """Backward of ``silu_project_discretize``: x = silu(pre), x_dbl = x W_xᵀ = [dt, b, c],
    u = Δ · b · x, decay = exp(Δ · a), Δ = softplus(dt W_Δᵀ + b_Δ).

    Args:
        grad_u, grad_decay: (..., D) gradients of u and decay (``decay``: its forward value).
        grad_x: (..., D) the gradient x gets from elsewhere (the output stage's skip term).
        grad_x_dbl: (..., R + 2) whose last column holds grad_c; columns :R + 1 receive the
            gradients of dt and b.
        pre: (..., D). proj_weight: (R + 2, D). dt_weight: (D, R). dt_bias, a: (D,).
        impl: ``"torch"`` (any device) or ``"numba"`` (CPU, one pass per row; grad_pre is
            written into grad_x's memory).

    Returns:
        (grad_pre, grad_proj_weight, grad_dt_weight, grad_dt_bias, grad_a).
    """
    _check_impl("silu_project_discretize_backward", impl)
    D, R = dt_weight.shape
    if impl == "torch":
        x = F.silu(pre)
        dt, b = x_dbl[..., :R], x_dbl[..., R:R + 1]
        pre_delta = F.linear(dt, dt_weight, dt_bias)
        delta = F.softplus(pre_delta)
        g_pre = aten.softplus_backward(grad_u * b * x + grad_decay * decay * a, pre_delta, 1, 20)
        grad_x_dbl[..., R:R + 1] = (grad_u * delta * x).sum(-1, keepdim=True)
        grad_x = torch.addcmul(grad_x, grad_u * delta, b)
        grad_x_dbl[..., :R] = g_pre @ dt_weight
        g_pre_rows = g_pre.reshape(-1, D)
        grad_a = (grad_decay * decay * delta).reshape(-1, D).sum(0)
        grad_wdt = g_pre_rows.T @ dt.reshape(-1, R)
        rows = grad_x_dbl.reshape(-1, R + 2)
        grad_pre = aten.silu_backward(torch.addmm(grad_x.reshape(-1, D), rows, proj_weight)
                                      .view(grad_x.shape), pre)
        return grad_pre, rows.T @ x.reshape(-1, D), grad_wdt, g_pre_rows.sum(0), grad_a
    acc = np.zeros((_chunks(pre.numel() // D), 2 * R + 4, D), _NP_DTYPE[pre.dtype])
    gx = grad_x.view(-1, D).numpy()
    _input_backward_rows(
        _rows(grad_u), _rows(grad_decay), _rows(decay), _rows(x_dbl),
        dt_weight.detach().t().contiguous().numpy(), dt_bias.detach().numpy(),
        proj_weight.detach().contiguous().numpy(), _rows(pre), a.detach().numpy(), gx,
        grad_x_dbl.view(-1, R + 2).numpy(), acc)
    sums = torch.from_numpy(acc.sum(0))
    return grad_x, sums[2 + R:], sums[2:2 + R].T, sums[1], sums[0]
