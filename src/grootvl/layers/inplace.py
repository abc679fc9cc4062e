"""When inference code may overwrite a module's output in place.

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

__all__ = ["may_overwrite_outputs"]


def may_overwrite_outputs(*modules: nn.Module) -> bool:
    """True when the outputs of ``modules`` are the caller's private temporaries.

    That is: autograd is off (its saved tensors would be invalidated), nothing is being
    traced or compiled, and no forward hook is registered on the modules or globally.
    """
    if (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or _module._global_forward_hooks):
        return False
    return not any(m._forward_hooks for m in modules)
