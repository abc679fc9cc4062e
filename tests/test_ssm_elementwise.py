"""discretize / ssm_output: the fused numba kernels against their torch compositions."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numba import njit

from grootvl.ops._vecmath_numba import exp, silu, softplus, softplus_and_sigmoid
from grootvl.ops.ssm_elementwise import discretize, ssm_output


def _inputs(dtype, shape=(2, 37, 24), rank=3):
    g = torch.Generator().manual_seed(0)
    d = shape[-1]
    rand = lambda *s: torch.randn(*s, dtype=dtype, generator=g)  # noqa: E731
    x_dbl = rand(*shape[:-1], rank + 2)  # B and C are strided slices of it, as in the layer
    return dict(h=rand(*shape) * 3 + 1, c=x_dbl[..., -1:], x=rand(*shape), z=rand(*shape) * 4,
                skip=rand(d), h_norm=(rand(d), rand(d), 1e-5), out_norm=(rand(d), rand(d), 1e-6)), \
        dict(dt=x_dbl[..., :rank], dt_weight=rand(d, rank) * 2, dt_bias=rand(d) - 1, x=rand(*shape),
             b=x_dbl[..., -2:-1], a=-rand(d).exp())


@njit(cache=True)
def _apply(values, which, out):
    for i in range(values.shape[0]):
        v = values[i]
        if which == 0:
            out[i] = exp(v)
        elif which == 1:
            out[i] = softplus(v)
        elif which == 2:
            out[i] = silu(v)
        else:  # the softplus of softplus_and_sigmoid is softplus' own (which 1); its sigmoid:
            out[i] = softplus_and_sigmoid(v)[1]


@pytest.mark.parametrize("which, fn, ulps", [(0, torch.exp, 1.5), (1, F.softplus, 4), (2, F.silu, 4),
                                             (3, torch.sigmoid, 4)])
def test_float32_vector_math_is_within_a_few_ulp(which, fn, ulps):
    values = np.concatenate([np.linspace(-87, 88, 200_001), np.random.default_rng(0).normal(0, 5, 100_000),
                             [0.0, 20.0, 20.001, -20.0, 1e-30]]).astype(np.float32)
    if which in (2, 3):
        values = values[values > -80]  # the tails underflow differently; they are ~0 there
    got = np.empty_like(values)
    _apply(values, which, got)
    exact = fn(torch.from_numpy(values).double())
    rel = (torch.from_numpy(got).double() - exact).abs() / exact.abs().clamp_min(1e-37)
    assert rel.max().item() <= ulps * 2.0 ** -24


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_numba_matches_torch_with_strided_coefficients(dtype, tol):
    out_args, disc_args = _inputs(dtype)
    assert not out_args["c"].is_contiguous() and not disc_args["b"].is_contiguous()
    assert not disc_args["dt"].is_contiguous()
    torch.testing.assert_close(ssm_output(**out_args, impl="numba"), ssm_output(**out_args),
                               rtol=tol, atol=tol)
    for got, expected in zip(discretize(**disc_args, impl="numba"), discretize(**disc_args)):
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


def test_numba_writes_into_the_given_buffers():
    out_args, disc_args = _inputs(torch.float64)
    expected_u, expected_decay = discretize(**disc_args)
    spare = torch.full_like(disc_args["x"], float("nan"))
    u, decay = discretize(**disc_args, impl="numba", u_out=spare)
    assert u is spare
    torch.testing.assert_close(u, expected_u, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(decay, expected_decay, rtol=1e-12, atol=1e-12)
    expected = ssm_output(**out_args)
    h = out_args["h"]
    assert ssm_output(**out_args, impl="numba", out=h) is h
    torch.testing.assert_close(h, expected, rtol=1e-12, atol=1e-12)


def test_torch_impls_are_differentiable():
    out_args, disc_args = _inputs(torch.float64, shape=(1, 3, 5))
    h = out_args.pop("h").requires_grad_(True)
    assert torch.autograd.gradcheck(lambda h: ssm_output(h, **out_args), (h,))
    dt = disc_args.pop("dt").detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda dt: discretize(dt, **disc_args), (dt,))


def test_numba_refuses_what_it_cannot_do():
    out_args, disc_args = _inputs(torch.float32)
    with pytest.raises(TypeError, match="one dtype"):
        ssm_output(**{**out_args, "x": out_args["x"].double()}, impl="numba")
    with pytest.raises(TypeError, match="float32 or float64"):
        discretize(**{k: v.bfloat16() for k, v in disc_args.items()}, impl="numba")
    with pytest.raises(RuntimeError, match="no backward"):
        ssm_output(**{**out_args, "z": out_args["z"].requires_grad_(True)}, impl="numba")
    with pytest.raises(ValueError, match=r"\(\.\.\., 1\)"):
        discretize(**{**disc_args, "b": disc_args["b"].expand(2, 37, 24)}, impl="numba")
    with pytest.raises(ValueError, match=r"dt must be \(\.\.\., 3\)"):
        discretize(**{**disc_args, "dt": disc_args["dt"][..., :2]}, impl="numba")
    with pytest.raises(ValueError, match="must match"):
        ssm_output(**{**out_args, "x": out_args["x"][:, :5]}, impl="numba")
    with pytest.raises(ValueError, match="impl must be"):
        ssm_output(**out_args, impl="triton")


_RUN_ALL_KERNELS = """
import sys, torch
from grootvl.ops.ssm_elementwise import silu_project_discretize, ssm_output
from grootvl.ops.ssm_elementwise_backward import output_backward, silu_project_discretize_backward
g = torch.Generator().manual_seed(0)
r = lambda *s: torch.randn(*s, generator=g)
n, D, R = 300, 40, 3
pre, h, z, grad_out, grad_u, grad_decay = (r(n, D) for _ in range(6))
proj, dt_weight, dt_bias, a, skip = r(R + 2, D), r(D, R), r(D), -r(D).exp(), r(D)
h_norm, out_norm = (r(D), r(D), 1e-5), (r(D), r(D), 1e-6)
x, x_dbl, u, decay = silu_project_discretize(pre, proj, dt_weight, dt_bias, a, impl="numba")
out = ssm_output(h, x_dbl[:, -1:], pre, z, skip, h_norm, out_norm, impl="numba", silu_x=True)
grad_x_dbl = torch.zeros_like(x_dbl)
grads = output_backward(grad_out, h, x_dbl, pre, z, skip, h_norm, out_norm, grad_x_dbl,
                        impl="numba")
grads_in = silu_project_discretize_backward(grad_u, grad_decay, grads[2].clone(), grad_x_dbl,
                                           decay, x_dbl, pre, proj, dt_weight, dt_bias, a,
                                           impl="numba")
torch.save([x_dbl, u, decay, out, *grads, grad_x_dbl, *grads_in], sys.argv[1])
"""


def test_numba_kernels_give_the_same_bits_compiled_fresh_or_from_the_cache(tmp_path):
    # A kernel numba compiles in the calling process can be optimised together with its
    # callers; one loaded from the on-disk cache cannot. Sums whose order LLVM chose per
    # loop then differed in the last bits between a first run and every later run.
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    results = []
    for run in ("fresh", "cached"):
        path = tmp_path / f"{run}.pt"
        subprocess.run([sys.executable, "-c", _RUN_ALL_KERNELS, str(path)], env=env, check=True)
        results.append(torch.load(path))
    assert any((tmp_path / "cache").rglob("*.nbc")), "the second run did not find a cache"
    for fresh, cached in zip(*results):
        assert torch.equal(fresh, cached)
