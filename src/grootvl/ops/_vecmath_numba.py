"""float32 exp / softplus / silu for numba loops that LLVM can vectorise.

numba lowers ``math.exp`` and ``math.log1p`` to scalar libm calls (no vector math library
is linked), which leaves a fused element-wise kernel several times slower than PyTorch's
vectorised ops. These versions use only arithmetic, min/max, floor and bit casts, so a loop
over them compiles to AVX2/AVX-512 code. Accuracy: within 2 ulp of the correctly rounded
float32 result on the ranges the Tree SSM uses (tests/test_ssm_elementwise.py measures it
against float64).

Callers must compile with ``error_model="numpy"``: under numba's default Python error model
every division is checked for zero, and that branch alone keeps a loop scalar (silu
measured 7x slower).

The approximations are the classic Cody-Waite range reduction with minimax polynomials
(coefficients as published in Cephes, S. L. Moshier).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

__all__ = ["exp", "softplus", "softplus_and_sigmoid", "silu", "exp_f32", "softplus_f32",
           "softplus_and_sigmoid_f32", "silu_f32"]

f32 = np.float32
_LOG2E = f32(1.44269504088896341)
_LN2_HI = f32(0.693359375)  # ln 2 split so that n * _LN2_HI is exact for |n| < 2^9
_LN2_LO = f32(-2.12194440e-4)
_EXP_LO = f32(-87.3)  # exp(_EXP_LO) is the smallest normal float32 (about 1.2e-38)
_EXP_HI = f32(88.7)
_SQRT_HALF = f32(0.70710678118654752)


@intrinsic
def _float32_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _bits_of_float32(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def exp_f32(x):
    """exp(x) for float32 x; inputs are clamped to [-87.3, 88.7] (normal float32 results)."""
    x = min(max(x, _EXP_LO), _EXP_HI)
    n = np.floor(x * _LOG2E + f32(0.5))
    r = x - n * _LN2_HI - n * _LN2_LO  # |r| <= ln(2) / 2
    p = f32(1.9875691500e-4)
    p = p * r + f32(1.3981999507e-3)
    p = p * r + f32(8.3334519073e-3)
    p = p * r + f32(4.1665795894e-2)
    p = p * r + f32(1.6666665459e-1)
    p = p * r + f32(5.0000001201e-1)
    p = p * r * r + r + f32(1)
    return p * _float32_from_bits(np.int32(np.int32(n) + np.int32(127)) << np.int32(23))


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def _log_f32(u):
    """log(u) for finite float32 u >= 1 (what softplus needs)."""
    bits = _bits_of_float32(u)
    e = ((bits >> np.int32(23)) & np.int32(0xFF)) - np.int32(127)
    m = _float32_from_bits((bits & np.int32(0x7FFFFF)) | np.int32(0x3F800000))  # [1, 2)
    big = m > f32(2) * _SQRT_HALF
    m = m * f32(0.5) if big else m  # m in [sqrt(1/2), sqrt(2))
    ef = f32(e) + (f32(1) if big else f32(0))
    f = m - f32(1)
    z = f * f
    y = f32(7.0376836292e-2)
    y = y * f - f32(1.1514610310e-1)
    y = y * f + f32(1.1676998740e-1)
    y = y * f - f32(1.2420140846e-1)
    y = y * f + f32(1.4249322787e-1)
    y = y * f - f32(1.6668057665e-1)
    y = y * f + f32(2.0000714765e-1)
    y = y * f - f32(2.4999993993e-1)
    y = y * f + f32(3.3333331174e-1)
    y = y * f * z
    y = y + ef * _LN2_LO - f32(0.5) * z
    return f + y + ef * _LN2_HI


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def softplus_and_sigmoid_f32(t):
    """(softplus(t), sigmoid(t)) from one exp: sigmoid(t) = w / (1 + w) with w = exp(t), the
    derivative of softplus. Above 20 softplus is t and the sigmoid 1 to float32 precision."""
    w = exp_f32(min(t, f32(20)))
    u = f32(1) + w
    d = u - f32(1)
    # log1p(w) = log(u) * w / (u - 1): exact rounding of u cancels (Goldberg); tiny w -> w
    small = d == f32(0)
    sp = w if small else _log_f32(u) * (w / (d if not small else f32(1)))
    return (t if t > f32(20) else sp), w / u


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def softplus_f32(t):
    """log(1 + exp(t)), and t itself above 20 (PyTorch's softplus threshold)."""
    return softplus_and_sigmoid_f32(t)[0]


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def silu_f32(z):
    """z * sigmoid(z)."""
    return z / (f32(1) + exp_f32(-z))


def exp(x):
    """exp for numba code: exp_f32 on float32, libm on float64."""
    return math.exp(x)


def softplus(t):
    """softplus (threshold 20) for numba code: softplus_f32 on float32, libm on float64."""
    return t if t > 20 else math.log1p(math.exp(t))


def softplus_and_sigmoid(t):
    """(softplus(t), sigmoid(t)) for numba code, sharing one exp (float32 and float64)."""
    w = math.exp(min(t, 20))
    return (t if t > 20 else math.log1p(w)), w / (1 + w)


def silu(z):
    """silu for numba code: silu_f32 on float32, libm on float64."""
    return z / (1 + math.exp(-z))


@overload(exp, inline="always")
def _exp_overload(x):
    if x == types.float32:
        return lambda x: exp_f32(x)
    return lambda x: math.exp(x)


@overload(softplus, inline="always")
def _softplus_overload(t):
    if t == types.float32:
        return lambda t: softplus_f32(t)
    return lambda t: t if t > 20.0 else math.log1p(math.exp(t))


@overload(softplus_and_sigmoid, inline="always")
def _softplus_and_sigmoid_overload(t):
    if t == types.float32:
        return lambda t: softplus_and_sigmoid_f32(t)

    def f64(t):
        w = math.exp(min(t, 20.0))
        return (t if t > 20.0 else math.log1p(w)), w / (1.0 + w)
    return f64


@overload(silu, inline="always")
def _silu_overload(z):
    if z == types.float32:
        return lambda z: silu_f32(z)
    return lambda z: z / (1.0 + math.exp(-z))
