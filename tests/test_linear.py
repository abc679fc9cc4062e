"""grootvl.ops.linear: the layers' products through oneDNN on the CPU, and where they are not."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import grootvl  # noqa: F401  (registers the models)
from grootvl.layers.inplace import linear_of
from grootvl.ops import linear as L
from grootvl.ops.linear import linear, product, product_into, uses_onednn

pytestmark = pytest.mark.skipif(not L._AVAILABLE, reason="torch built without oneDNN")


def _saved_storages(fn) -> set[int]:
    ptrs = set()

    def pack(t):
        ptrs.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return ptrs


@pytest.mark.parametrize("shape", [(37, 24), (2, 5, 7, 24)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_f_linear_with_its_gradients(shape, with_bias):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=gen, requires_grad=True)
    w = torch.randn(40, 24, generator=gen, requires_grad=True)
    b = torch.randn(40, generator=gen, requires_grad=True) if with_bias else None
    g = torch.randn(*shape[:-1], 40, generator=gen)
    assert uses_onednn(x, w)
    inputs = (x, w) if b is None else (x, w, b)
    out = linear(x, w, b)
    ref = F.linear(x, w, b)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # it keeps what F.linear's autograd keeps: the input and the weight
    assert _saved_storages(lambda: linear(x, w, b)) == _saved_storages(lambda: F.linear(x, w, b))


def test_linear_computes_only_the_gradients_asked_for():
    x = torch.randn(9, 6, requires_grad=True)
    w = torch.randn(4, 6)  # frozen
    (gx,) = torch.autograd.grad(linear(x, w).sum(), (x,))
    torch.testing.assert_close(gx, torch.ones(9, 4) @ w)
    w.requires_grad_(True)
    (gw,) = torch.autograd.grad(linear(x.detach(), w).sum(), (w,))
    torch.testing.assert_close(gw, torch.ones(9, 4).t() @ x.detach())


def test_linear_is_f_linear_outside_the_cpu_float32_eager_path(monkeypatch):
    x64, w64 = torch.randn(8, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    assert not uses_onednn(x64, w64)
    assert torch.equal(linear(x64, w64), F.linear(x64, w64))
    assert torch.autograd.gradcheck(linear, (x64.requires_grad_(), w64.requires_grad_()))
    x, w = torch.randn(8, 5), torch.randn(3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_onednn(x, w)
        assert linear(x, w).dtype == torch.bfloat16
    monkeypatch.setattr(L, "USE_ONEDNN", False)
    assert not uses_onednn(x, w) and torch.equal(linear(x, w), F.linear(x, w))


def test_linear_handles_empty_and_strided_inputs():
    w, b = torch.randn(4, 6, requires_grad=True), torch.randn(4, requires_grad=True)
    for x in (torch.zeros(0, 6), torch.zeros(3, 0, 6), torch.randn(1, 6).expand(5, 6),
              torch.randn(6, 5).t(), torch.randn(2, 3, 12)[..., ::2]):
        x = x.detach().requires_grad_()
        out, ref = linear(x, w, b), F.linear(x, w, b)
        torch.testing.assert_close(out, ref)
        got = torch.autograd.grad(out.sum(), (x, w, b))
        want = torch.autograd.grad(ref.sum(), (x, w, b))
        for g, r in zip(got, want):
            torch.testing.assert_close(g, r)
    # no features in or out: F.linear's answer (oneDNN has no empty product)
    for k, n in ((0, 4), (6, 0)):
        x, w = torch.randn(5, k), torch.randn(n, k)
        assert not uses_onednn(x, w)
        assert torch.equal(linear(x, w, torch.ones(n)), F.linear(x, w, torch.ones(n)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_bias", [True, False])
def test_product_into_blocks_of_rows_equals_one_product(dtype, with_bias):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(70, 24, dtype=dtype, generator=gen)
    w = torch.randn(10, 24, dtype=dtype, generator=gen)
    b = torch.randn(10, dtype=dtype, generator=gen) if with_bias else None
    out = torch.full((70, 10), float("nan"), dtype=dtype)
    for start in range(0, 70, 32):  # blocks of 32 rows, the last partial
        product_into(x[start:start + 32], w, b, out[start:start + 32])
    assert torch.equal(out, product(x, w, b))
    torch.testing.assert_close(out, F.linear(x, w, b))


def test_linear_names_a_shape_mismatch():
    with pytest.raises(ValueError, match=r"x has 5 features but weight is \(3, 4\)"):
        linear(torch.randn(2, 5), torch.randn(3, 4))


def test_a_hooked_or_replaced_linear_module_runs_as_itself():
    fc = torch.nn.Linear(6, 4)
    x = torch.randn(3, 6)
    calls = []
    handle = fc.register_forward_hook(lambda *args: calls.append(1))
    linear_of(fc, x)
    assert calls == [1]
    handle.remove()
    linear_of(fc, x)
    assert calls == [1]  # hookless: the product ran directly

    class Scaled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    scaled = Scaled(6, 4)
    torch.testing.assert_close(linear_of(scaled, x), 2 * F.linear(x, scaled.weight, scaled.bias))


@pytest.mark.parametrize("training", [True, False])
def test_grootv_with_onednn_products_matches_the_blas_ones(monkeypatch, training):
    """The whole model, both ways: logits and (training) every gradient agree to float32
    rounding."""
    torch.manual_seed(0)
    model = timm.create_model("grootv_tiny", num_classes=10, drop_path_rate=0.0).train(training)
    x = torch.randn(2, 3, 64, 64)
    results = []
    for use in (True, False):
        monkeypatch.setattr(L, "USE_ONEDNN", use)
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(training):
            out = model(x)
            if training:
                out.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()] if training else []
        results.append((out.detach(), grads))
    (out, grads), (ref, ref_grads) = results
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
