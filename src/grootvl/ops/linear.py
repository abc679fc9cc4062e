"""``linear(x, weight, bias) = x Wᵀ + b`` for the layers, through oneDNN on the CPU.

On the CPU, ``F.linear`` in float32 runs the BLAS torch was built with (MKL in the PyPI
wheels). GrootV's products are narrow (80 to 640 channels on one side, up to 25 088 rows on
the other), and for those oneDNN's matmul, which torch also ships, was faster on the
machine measured (2 cores of an AMD EPYC, AVX-512): ``benchmarks/bench_linear.py`` prints
both per product shape and a GrootV-T training step with each, side by side; run it to see
what another CPU does.

Only the products whose result is a new activation go through oneDNN: the forward
``x Wᵀ`` and the input gradient ``g W``. The weight gradient ``gᵀ x`` sums over all rows
(tens of thousands); for that shape oneDNN was slower, so it stays with ``torch.mm``. The
results equal ``F.linear``'s up to the order of float32 sums (relative differences of about
1e-7), like any two BLAS libraries.

Everything else takes ``F.linear``: other devices and dtypes, autocast, ``torch.compile``
(Inductor picks its own kernels), tracing, and torch builds without oneDNN.
``USE_ONEDNN = False`` turns the path off (the benchmark's comparison).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["linear", "product", "product_into", "uses_onednn", "USE_ONEDNN"]

#: Route CPU float32 products through oneDNN (where torch was built with it).
USE_ONEDNN = True
_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                              "_linear_pointwise")


def uses_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether ``linear(x, weight)`` takes the oneDNN path (else it is ``F.linear``)."""
    return (USE_ONEDNN and _AVAILABLE and isinstance(x, Tensor) and x.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.dim() >= 2
            and weight.numel() > 0  # oneDNN has no empty (K or N = 0) product
            and not torch.is_autocast_enabled("cpu") and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling())


def product(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x Wᵀ + b`` without autograd; ``weight`` (N, K) may be any strided view (e.g. the
    transpose of a (K, N) weight, for an input gradient)."""
    if uses_onednn(x, weight):
        return _onednn_product(x, weight, bias)
    return F.linear(x, weight, bias)


def _onednn_product(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The oneDNN call itself, for callers that checked ``uses_onednn`` already."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def product_into(x: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor) -> Tensor:
    """``x Wᵀ + b`` for 2-D x without autograd, written into ``out`` (a block of a larger
    result). oneDNN has no out= form: its block is copied over, which for blocks sized to
    stay in cache costs less than what it saves on the product."""
    if uses_onednn(x, weight):
        return out.copy_(_onednn_product(x, weight, bias))
    if bias is None:
        return torch.mm(x, weight.t(), out=out)
    return torch.addmm(bias, x, weight.t(), out=out)


class _Linear(torch.autograd.Function):
    """Saves what ``F.linear``'s autograd saves: the input and the weight. Applied only where
    ``uses_onednn`` holds (checked by ``linear``), so neither pass checks again."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_product(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_product(grad, weight.t(), None)
        rows = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_w = rows.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = rows.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``: x (..., K), weight (N, K), bias (N,) or None.

    Differentiable. On the CPU in float32 the forward product and the input gradient run
    through oneDNN (see the module docstring); anywhere else this is ``F.linear``.
    """
    if not uses_onednn(x, weight):
        return F.linear(x, weight, bias)
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"linear: x has {x.shape[-1]} features but weight is "
                         f"{tuple(weight.shape)}; weight must be (out_features, {x.shape[-1]})")
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _Linear.apply(x, weight, bias)
    return _onednn_product(x, weight, bias)
