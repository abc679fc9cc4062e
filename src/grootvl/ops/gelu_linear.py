"""``gelu_linear(x, weight, bias) = F.linear(F.gelu(x), weight, bias)``, keeping only x.

In an MLP (fc1 -> GELU -> fc2) autograd keeps fc1's output for the GELU's backward and the
GELU's output for fc2's weight gradient: two tensors of the hidden width (4x the channels in
GrootV and ConvNeXt), the largest activations of the block. This op keeps x alone and
recomputes GELU(x) in backward (one element-wise pass, cheap next to the two matrix products
that backward runs anyway). A ``torch.library`` custom op: opaque to ``torch.compile``,
whose backward (plain ATen ops) it traces.

On the CPU both directions run over blocks of rows whose hidden activations (GELU(x) and
its gradient, each of the hidden width) fit in cache, instead of making full-size
temporaries that go out to memory and back: the forward result is the unblocked one bit for
bit, and so is the input gradient (its product runs through ``ops.linear``, as the layers'
own products do); the weight gradient is summed block by block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .linear import product, product_into
from .tree import autocast_dtype, autocast_off

__all__ = ["gelu_linear"]


#: Bytes of hidden activations per block of rows on the CPU.
BLOCK_BYTES = 4 << 20


def row_blocks(rows: int, width: int, itemsize: int, block_bytes: int | None = None
               ) -> list[slice]:
    """Slices of ``rows`` rows, each holding about ``block_bytes`` (default ``BLOCK_BYTES``)
    of activations ``width`` wide, and at least 256 rows."""
    step = max(256, (BLOCK_BYTES if block_bytes is None else block_bytes) // (width * itemsize))
    return [slice(i, i + step) for i in range(0, rows, step)]


@torch.library.custom_op("grootvl::gelu_linear", mutates_args=())
def _gelu_linear_op(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    with autocast_off(x.device):  # the wrapper cast the inputs already
        if x.device.type != "cpu":
            return F.linear(F.gelu(x), weight, bias)
        rows = x.reshape(-1, x.shape[-1])
        out = rows.new_empty((rows.shape[0], weight.shape[0]))
        for part in row_blocks(*rows.shape, rows.element_size()):
            product_into(F.gelu(rows[part]), weight, bias, out[part])
        return out.view(*x.shape[:-1], weight.shape[0])


@_gelu_linear_op.register_fake
def _(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight)


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    rows = grad.reshape(-1, grad.shape[-1])
    grad_bias = rows.sum(0) if ctx.has_bias else None
    if x.device.type != "cpu":
        hidden = F.gelu(x).reshape(-1, x.shape[-1])  # recomputed: not kept from the forward
        grad_weight = rows.T @ hidden
        return torch.ops.aten.gelu_backward(grad @ weight, x), grad_weight, grad_bias
    x_rows = x.reshape(-1, x.shape[-1])
    grad_x = torch.empty_like(x_rows)
    grad_weight = None
    for part in row_blocks(*x_rows.shape, x_rows.element_size()):
        hidden = F.gelu(x_rows[part])  # recomputed: not kept from the forward
        if grad_weight is None:
            grad_weight = rows[part].T @ hidden
        else:
            grad_weight.addmm_(rows[part].T, hidden)
        torch.ops.aten.gelu_backward.grad_input(product(rows[part], weight.t()), x_rows[part],
                                                grad_input=grad_x[part])
    if grad_weight is None:  # no rows
        grad_weight = torch.zeros_like(weight)
    return grad_x.view(x.shape), grad_weight, grad_bias


_gelu_linear_op.register_autograd(_backward, setup_context=_setup_context)


def gelu_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(F.gelu(x), weight, bias)`` (exact, erf GELU) that keeps only x for backward.

    Args:
        x: (..., K) input (e.g. the output of an MLP's first linear layer).
        weight: (N, K). bias: (N,) or None.

    Under autocast the product runs in the autocast dtype, as ``F.linear`` would.
    """
    dtype = autocast_dtype(x.device)
    if dtype is not None:
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"gelu_linear: x has {x.shape[-1]} features but weight is "
                         f"{tuple(weight.shape)}; weight must be (out_features, {x.shape[-1]})")
    return _gelu_linear_op(x, weight, bias)
