"""ssm_output: the fused numba output stage against its torch composition."""
import pytest
import torch

from grootvl.ops.ssm_output import ssm_output


def _inputs(dtype, shape=(2, 37, 24), rank=3):
    g = torch.Generator().manual_seed(0)
    d = shape[-1]
    rand = lambda *s: torch.randn(*s, dtype=dtype, generator=g)  # noqa: E731
    x_dbl = rand(*shape[:-1], rank + 2)
    return dict(h=rand(*shape) * 3 + 1, c=x_dbl[..., -1:], x=rand(*shape), z=rand(*shape),
                skip=rand(d), h_norm=(rand(d), rand(d), 1e-5), out_norm=(rand(d), rand(d), 1e-6))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_numba_matches_torch_with_strided_c(dtype, tol):
    args = _inputs(dtype)
    assert not args["c"].is_contiguous()
    expected = ssm_output(**args)
    torch.testing.assert_close(ssm_output(**args, impl="numba"), expected, rtol=tol, atol=tol)


def test_numba_writes_into_h_when_asked():
    args = _inputs(torch.float64)
    expected = ssm_output(**args)
    h = args["h"]
    out = ssm_output(**args, impl="numba", out=h)
    assert out is h
    torch.testing.assert_close(h, expected, rtol=1e-12, atol=1e-12)


def test_torch_impl_is_differentiable():
    args = _inputs(torch.float64, shape=(1, 3, 5))
    args["h"].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda h: ssm_output(h, *list(args.values())[1:]), (args["h"],))


def test_numba_refuses_what_it_cannot_do():
    args = _inputs(torch.float32)
    with pytest.raises(TypeError, match="one dtype"):
        ssm_output(**{**args, "x": args["x"].double()}, impl="numba")
    with pytest.raises(TypeError, match="float32 or float64"):
        ssm_output(**{k: (v.bfloat16() if torch.is_tensor(v) else v) for k, v in args.items()},
                   impl="numba")
    with pytest.raises(RuntimeError, match="no backward"):
        ssm_output(**{**args, "z": args["z"].requires_grad_(True)}, impl="numba")
    with pytest.raises(ValueError, match="must match"):
        ssm_output(**{**args, "x": args["x"][:, :5]}, impl="numba")
    with pytest.raises(ValueError, match="impl must be"):
        ssm_output(**args, impl="triton")
