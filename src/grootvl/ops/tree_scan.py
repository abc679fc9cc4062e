"""``tree_scan``: the public tree scan operator and its custom ops.

The operator's semantics are in docs/design.md, "Tree scan semantics"; the passes of each
implementation in "Forward and backward passes".

Two ``torch.library`` custom ops carry the work so the scan is opaque to ``torch.compile``
and differentiable through a closed-form backward rather than autograd through a loop:

* ``grootvl::tree_scan`` (x, decay, order, parent, level_offsets, mode, impl) -> (y, up):
  ``up`` (the up pass) is saved for backward; for mode "subtree" it equals y, so an empty
  tensor is returned in its place and y is saved instead.
* ``grootvl::tree_scan_backward`` (grad_y, decay, order, parent, level_offsets, up, y, mode,
  impl) -> (grad_x, grad_decay).

Each implementation is a backend module in this package exposing ``scan_forward``,
``scan_backward`` and ``scan_down`` (the full scan from a saved up pass, which
``selective_tree_scan``'s backward uses; see the module docstrings); they are imported
lazily on first use.
"""
from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import torch
from torch import Tensor

from .tree import Tree, check_tree_matches

__all__ = ["tree_scan", "available_impls", "default_impl"]

MODES = ("full", "subtree")
_BACKENDS = {
    "reference": "grootvl.ops.scan_reference",
    "torch": "grootvl.ops.scan_torch",
    "numba": "grootvl.ops.scan_numba",
    "triton": "grootvl.ops.scan_triton",
}
_CPU_ONLY = {"numba"}
_CUDA_ONLY = {"triton"}
_loaded: dict[str, ModuleType] = {}
_warned_no_triton = False


def _backend(impl: str) -> ModuleType:
    if impl not in _loaded:
        try:
            _loaded[impl] = importlib.import_module(_BACKENDS[impl])
        except ImportError as err:
            raise RuntimeError(
                f"tree_scan impl={impl!r} is not available: importing {_BACKENDS[impl]} "
                f"failed ({err}). Pass impl='torch' to use the portable implementation."
            ) from err
    return _loaded[impl]


def available_impls() -> list[str]:
    """Names of the backends that import on this machine."""
    names = []
    for name in _BACKENDS:
        try:
            _backend(name)
        except RuntimeError:
            continue
        names.append(name)
    return names


def default_impl(device: torch.device) -> str:
    """Fastest backend for a device: CPU numba, CUDA triton (torch, with a warning, if absent)."""
    global _warned_no_triton
    if device.type == "cpu":
        return "numba"
    if device.type == "cuda":
        try:
            _backend("triton")
            return "triton"
        except RuntimeError as err:
            if not _warned_no_triton:
                _warned_no_triton = True
                warnings.warn(f"{err} Falling back to impl='torch' on CUDA, which is much "
                              "slower.", RuntimeWarning, stacklevel=3)
    return "torch"


def _triton_interpreted(impl: str) -> bool:
    """Triton's interpreter runs its kernels on CPU tensors (read at kernel definition)."""
    return impl == "triton" and os.environ.get("TRITON_INTERPRET") == "1"


def _half_inputs(impl: str) -> bool:
    """Whether a backend takes fp16/bf16 x and decay directly (and computes in float32)."""
    return bool(getattr(_backend(impl), "HALF_INPUTS", False))


def _drop_padded_levels(level_offsets: Tensor, num_vertices: int) -> Tensor:
    """level_offsets cut to (B, D+1): trees built while compiling carry L+1 columns (see
    ``grootvl.ops.tree``), and the level-by-level backends loop over every column."""
    if level_offsets.shape[1] != num_vertices + 1 or level_offsets.numel() == 0:
        return level_offsets
    depth = int((level_offsets < num_vertices).sum(dim=1).max())  # a row's levels start < L
    return level_offsets[:, :depth + 1]


# --------------------------------------------------------------------------- custom ops

@torch.library.custom_op("grootvl::tree_scan", mutates_args=())
def _tree_scan_op(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
                  level_offsets: Tensor, mode: str, impl: str) -> tuple[Tensor, Tensor]:
    out_dtype = torch.promote_types(x.dtype, torch.float32)
    if x.numel() == 0:
        y = torch.zeros(x.shape, dtype=out_dtype, device=x.device)
        return y, (y.new_empty(0) if mode == "subtree" else y.clone())
    level_offsets = _drop_padded_levels(level_offsets, x.shape[1])
    y, up = _backend(impl).scan_forward(x, decay, order, parent, level_offsets, mode)
    if mode == "subtree":
        return y, y.new_empty(0)  # outputs may not alias: backward uses y as up
    return y, up


@_tree_scan_op.register_fake
def _(x, decay, order, parent, level_offsets, mode, impl):
    y = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    return y, (y.new_empty(0) if mode == "subtree" else torch.empty_like(y))


@torch.library.custom_op("grootvl::tree_scan_backward", mutates_args=())
def _tree_scan_backward_op(grad_y: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
                           level_offsets: Tensor, up: Tensor, y: Tensor, mode: str, impl: str
                           ) -> tuple[Tensor, Tensor]:
    if grad_y.numel() == 0:
        return torch.zeros_like(grad_y), torch.zeros_like(grad_y)
    level_offsets = _drop_padded_levels(level_offsets, grad_y.shape[1])
    return _backend(impl).scan_backward(grad_y, decay, order, parent, level_offsets, up, y, mode)


@_tree_scan_backward_op.register_fake
def _(grad_y, decay, order, parent, level_offsets, up, y, mode, impl):
    return torch.empty_like(grad_y), torch.empty_like(grad_y)


def _setup_context(ctx, inputs, output):
    x, decay, order, parent, level_offsets, mode, impl = inputs
    y, up = output
    ctx.mode, ctx.impl = mode, impl
    ctx.x_dtype, ctx.decay_dtype = x.dtype, decay.dtype
    ctx.save_for_backward(decay, order, parent, level_offsets, y if mode == "subtree" else up, y)
    ctx.mark_non_differentiable(up)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the unused `up` output


def _backward(ctx, grad_y, grad_up):
    if grad_y is None:
        return (None,) * 7
    decay, order, parent, level_offsets, up, y = ctx.saved_tensors
    grad_x, grad_decay = _tree_scan_backward_op(
        grad_y.contiguous().to(y.dtype), decay, order, parent, level_offsets, up, y,
        ctx.mode, ctx.impl)
    return (grad_x.to(ctx.x_dtype), grad_decay.to(ctx.decay_dtype),
            None, None, None, None, None)


_tree_scan_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("grootvl::tree_scan_inplace", mutates_args=("x", "decay"))
def _tree_scan_inplace_op(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
                          level_offsets: Tensor, mode: str, impl: str) -> None:
    """Forward only: y is left in decay (mode 'full') or x (mode 'subtree')."""
    if x.numel():
        level_offsets = _drop_padded_levels(level_offsets, x.shape[1])
        _backend(impl).scan_forward_inplace(x, decay, order, parent, level_offsets, mode)


@_tree_scan_inplace_op.register_fake
def _(x, decay, order, parent, level_offsets, mode, impl):
    return None


# --------------------------------------------------------------------------- public API

def _byte_span(t: Tensor) -> tuple[int, int, int]:
    """(storage address, first byte, end byte) of the memory ``t`` can touch."""
    if t.numel() == 0:
        return 0, 0, 0
    last = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
    start = t.storage_offset() * t.element_size()
    return t.untyped_storage().data_ptr(), start, start + (last + 1) * t.element_size()


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` may overlap in memory (same storage, intersecting byte ranges)."""
    ptr_a, start_a, end_a = _byte_span(a)
    ptr_b, start_b, end_b = _byte_span(b)
    return ptr_a != 0 and ptr_a == ptr_b and start_a < end_b and start_b < end_a


def _inputs_alias(x: Tensor, decay: Tensor, tree: Tree) -> bool:
    """The in-place scan reads and writes x and decay as separate buffers: if they (or the
    tree's tensors) share memory, it would read values it has already overwritten."""
    others = (decay, tree.order, tree.parent, tree.level_offsets)
    return (any(_shares_memory(x, t) for t in others)
            or any(_shares_memory(decay, t) for t in others[1:]))


def tree_scan(x: Tensor, decay: Tensor, tree: Tree, mode: str = "full",
              impl: str | None = None, overwrite_inputs: bool = False) -> Tensor:
    """Propagate ``x`` over ``tree`` with per-edge ``decay``, in O(L) per channel.

    y[i] = sum over j of S(i, j) x[j] (docs/design.md, "Tree scan semantics"), S(i, j) the
    product of the decays of the child ends of the edges on the tree path i..j.

    Args:
        x: (B, L, C) inputs, channels-last, floating point.
        decay: (B, L, C) decay of each vertex's edge to its parent: any finite value (the
            recurrences need no range; the models produce values in (0, 1]); the root's entry
            is unused.
        tree: a ``grootvl.ops.Tree`` with batch size B on L vertices.
        mode: "full" (every vertex sees every other vertex) or "subtree" (each vertex sees its
            descendants and itself; causal for a tree rooted at the last token).
        impl: "reference" (dense O(L^2), tests only), "torch", "numba" (CPU) or "triton"
            (CUDA); None picks the fastest for x's device.
        overwrite_inputs: allow the scan to use x's and decay's memory as its work space
            (their contents are undefined afterwards, and the result may share memory with
            one of them). Saves two (B, L, C) allocations and a copy pass; used by backends
            that support it (numba) when no gradient is needed, ignored otherwise, and
            ignored when x and decay share memory (e.g. the same tensor): the scan then
            runs out of place and leaves both untouched.

    Returns:
        (B, L, C) tensor in x's dtype. float16/bfloat16 inputs are computed in float32.
        Differentiable in x and decay.
    """
    if not isinstance(x, Tensor) or not isinstance(decay, Tensor):
        raise TypeError("tree_scan: x and decay must be tensors")
    if x.dim() != 3:
        raise ValueError(f"tree_scan: x must be (B, L, C), got shape {tuple(x.shape)}")
    if decay.shape != x.shape:
        raise ValueError(f"tree_scan: decay has shape {tuple(decay.shape)} but x has "
                         f"{tuple(x.shape)}; they must match (B, L, C)")
    for name, t in (("x", x), ("decay", decay)):
        if not t.is_floating_point():
            raise TypeError(f"tree_scan: {name} must be a floating point tensor, got {t.dtype}; "
                            f"convert it with {name}.float()")
    if decay.device != x.device:
        raise ValueError(f"tree_scan: decay is on {decay.device} but x is on {x.device}; "
                         "put them on the same device")
    if mode not in MODES:
        raise ValueError(f"tree_scan: mode must be one of {MODES}, got {mode!r}")
    check_tree_matches(tree, x, "x")  # types, shapes and devices of the tree's tensors
    if impl is None:
        impl = default_impl(x.device)
    if impl not in _BACKENDS:
        raise ValueError(f"tree_scan: unknown impl {impl!r}; choose one of {list(_BACKENDS)} "
                         "or None for the fastest on the device")
    if impl in _CPU_ONLY and x.device.type != "cpu":
        raise ValueError(f"tree_scan: impl={impl!r} runs on CPU only, but x is on {x.device}")
    if impl in _CUDA_ONLY and x.device.type != "cuda" and not _triton_interpreted(impl):
        raise ValueError(f"tree_scan: impl={impl!r} runs on CUDA only, but x is on {x.device} "
                         "(on CPU it runs in Triton's interpreter when TRITON_INTERPRET=1 is set "
                         "before Python starts; slow, for checking kernels)")

    out_dtype = torch.promote_types(x.dtype, decay.dtype)
    compute = torch.promote_types(out_dtype, torch.float32)
    if compute != out_dtype and _half_inputs(impl) and x.dtype == decay.dtype:
        compute = x.dtype  # the backend reads half precision itself and returns float32
    if (overwrite_inputs and hasattr(_backend(impl), "scan_forward_inplace")
            and x.dtype == decay.dtype == compute and x.is_contiguous() and decay.is_contiguous()
            and not (torch.is_grad_enabled() and (x.requires_grad or decay.requires_grad))
            and not torch.compiler.is_compiling()
            and not _inputs_alias(x, decay, tree)):
        _tree_scan_inplace_op(x, decay, tree.order.contiguous(), tree.parent.contiguous(),
                              tree.level_offsets.contiguous(), mode, impl)
        return (decay if mode == "full" else x).to(out_dtype)
    y, _ = _tree_scan_op(x.to(compute).contiguous(), decay.to(compute).contiguous(),
                         tree.order.contiguous(), tree.parent.contiguous(),
                         tree.level_offsets.contiguous(), mode, impl)
    return y.to(out_dtype)
