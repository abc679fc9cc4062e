"""When layer code may look past a module call: overwrite a module's output in place, or run
an ``nn.Linear``'s product itself (``linear_of``). Both are safe only when nobody else sees
the call or its output.

On CPU a fresh (B, H, W, 4C) float32 temporary at GrootV-T's first stage is 30 MiB: the
allocation and the page faults of its first touch cost about as much as the element-wise op
that fills it. Without autograd a block can instead apply the GELU in the memory of fc1's
output and add the residual into the memory of its branch's output. Those outputs are
temporaries of the block unless somebody else holds them, which only a forward hook can do
(e.g. one that records intermediate features); tracers and compilers record ops, and some
of them (``grootvl.flops``' jit trace) count them by name, so they see the plain path.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module

from ..ops.linear import linear, uses_onednn

__all__ = ["may_overwrite_outputs", "linear_of"]


def may_overwrite_outputs(*modules: nn.Module) -> bool:
    """True when the outputs of ``modules`` are the caller's private temporaries.

    That is: autograd is off (its saved tensors would be invalidated), nothing is being
    traced or compiled, and no forward hook is registered on the modules or globally.
    """
    if (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or _module._global_forward_hooks):
        return False
    return not any(m._forward_hooks for m in modules)


def linear_of(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for an ``nn.Linear``, through ``grootvl.ops.linear`` where that takes
    oneDNN (CPU, float32, eager). The module runs as itself otherwise, and whenever it is a
    subclass or replacement (e.g. a LoRA wrapper) or a forward (pre-)hook on it or a global
    one must see the call; tracers (torch.fx, jit) and compilers always see the module."""
    if (type(module) is nn.Linear and uses_onednn(x, module.weight)
            and not (module._forward_hooks or module._forward_pre_hooks)
            and not (_module._global_forward_hooks or _module._global_forward_pre_hooks)):
        return linear(x, module.weight, module.bias)
    return module(x)
