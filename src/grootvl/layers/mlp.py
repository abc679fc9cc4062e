"""The MLP of a GrootV block: Linear -> GELU -> Linear."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.gelu_linear import gelu_linear, row_blocks
from ..ops.linear import product, product_into
from .inplace import linear_of, may_overwrite_outputs

__all__ = ["GeluMlp"]


class GeluMlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with timm's ``Mlp`` names (``fc1``, ``act``, ``fc2``), so the
    released checkpoints load unchanged.

    With autograd, GELU and ``fc2`` run as one ``gelu_linear`` op that keeps only fc1's
    output for backward (autograd would keep both the GELU's input and its output, each of
    the hidden width); the numbers are the same.

    Without autograd on the CPU (and no forward hook on the three modules, see
    ``layers.inplace``), rows go through fc1, GELU (in place) and fc2 in blocks whose hidden
    activations fit in cache: the 4x-wide hidden tensor never makes a round trip through
    memory (at GrootV-T's first stage it would be 30 MiB). Same numbers.
    """

    #: With autograd, use ``gelu_linear`` (False: GELU and fc2 as separate autograd ops).
    lean_backward: bool = True
    #: Bytes of hidden activations per block on the CPU inference path.
    inference_block_bytes: int = 4 << 20

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: Tensor) -> Tensor:
        if self._blockwise(x):
            return self._blockwise_forward(x)
        hidden = linear_of(self.fc1, x)
        # a torch.fx Proxy (symbolic tracing) takes the plain path: the op's argument checks
        # branch on devices and shapes, which tracing cannot follow
        if torch.is_grad_enabled() and self.lean_backward and isinstance(hidden, Tensor):
            return gelu_linear(hidden, self.fc2.weight, self.fc2.bias)
        return self.fc2(self.act(hidden))

    def _blockwise(self, x: Tensor) -> bool:
        return (isinstance(x, Tensor) and x.device.type == "cpu"
                and type(self.fc1) is nn.Linear and type(self.fc2) is nn.Linear
                and type(self.act) is nn.GELU and x.dtype == self.fc1.weight.dtype
                and not torch.is_autocast_enabled("cpu")
                and may_overwrite_outputs(self.fc1, self.act, self.fc2))

    def _blockwise_forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = rows.new_empty((rows.shape[0], self.fc2.out_features))
        for part in row_blocks(rows.shape[0], self.fc1.out_features, x.element_size(),
                               self.inference_block_bytes):
            hidden = product(rows[part], self.fc1.weight, self.fc1.bias)
            torch.ops.aten.gelu_(hidden, approximate=self.act.approximate)
            product_into(hidden, self.fc2.weight, self.fc2.bias, out[part])
        return out.view(*x.shape[:-1], self.fc2.out_features)
