"""The MLP of a GrootV block: Linear -> GELU -> Linear."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.gelu_linear import gelu_linear
from .inplace import may_overwrite_outputs

__all__ = ["GeluMlp"]


class GeluMlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with timm's ``Mlp`` names (``fc1``, ``act``, ``fc2``), so the
    released checkpoints load unchanged.

    With autograd, GELU and ``fc2`` run as one ``gelu_linear`` op that keeps only fc1's
    output for backward (autograd would keep both the GELU's input and its output, each of
    the hidden width); the numbers are the same.
    """

    #: With autograd, use ``gelu_linear`` (False: GELU and fc2 as separate autograd ops).
    lean_backward: bool = True

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.fc1(x)
        # a torch.fx Proxy (symbolic tracing) takes the plain path: the op's argument checks
        # branch on devices and shapes, which tracing cannot follow
        if torch.is_grad_enabled() and self.lean_backward and isinstance(hidden, Tensor):
            return gelu_linear(hidden, self.fc2.weight, self.fc2.bias)
        if (isinstance(hidden, Tensor) and type(self.act) is nn.GELU
                and may_overwrite_outputs(self.fc1, self.act)):
            return self.fc2(torch.ops.aten.gelu_(hidden, approximate=self.act.approximate))
        return self.fc2(self.act(hidden))
