"""``torch.compile`` for GrootV models, for training and inference.

``torch.compile(model)`` with default arguments works on GrootV: the tree construction and
tree scan are custom ops (one opaque node each, with fake implementations of static shape
while compiling), so a GrootV block traces into one graph with no break, and dynamic shapes
(e.g. a changing batch size) compile too. ``compile_model`` adds two things a trainer wants:

* it compiles **in place** (``nn.Module.compile``), so ``state_dict`` keys, EMA copies and
  checkpoints are those of the plain model (no ``_orig_mod.`` prefix), and asks Inductor for
  exact view strides, without which a changing image size fails to compile (see
  ``_require_exact_view_strides``); ``grootvl train --compile`` (``train.compile``) compiles
  the whole model in place;
* ``regional=True`` compiles each GrootV block on its own, with ``fullgraph=True`` (a graph
  break inside a block is an error instead of a silent slowdown) and dynamic sizes: the
  blocks of every stage share one compiled graph for training and one for inference, while
  the stem, downsampling layers and head stay eager.

Compiled CPU inference uses torch compositions of the element-wise SSM stages (fused by
Inductor) rather than grootvl's fused numba kernels, which Dynamo cannot trace.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .blocks import GrootVBlock

__all__ = ["compile_model"]


def compile_model(model: nn.Module, *, regional: bool = False, **compile_kwargs: Any) -> nn.Module:
    """Compile ``model`` in place with ``torch.compile`` and return it.

    Args:
        model: any ``nn.Module``; ``regional`` applies to GrootV models (and any model that
            holds ``GrootVBlock`` modules, e.g. a dense-prediction backbone).
        regional: compile every ``GrootVBlock`` separately, with ``fullgraph=True`` and
            ``dynamic=True`` unless given (the stem, downsampling layers and head stay eager).
            Default: the whole model as one compiled region.
        **compile_kwargs: passed to ``torch.compile`` (``mode``, ``dynamic``, ``backend``...).

    Returns:
        ``model`` itself, compiled: train, evaluate and save it as usual.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compile_model needs an nn.Module, got {type(model).__name__}")
    if not regional:
        if compile_kwargs.get("backend", "inductor") == "inductor":
            _require_exact_view_strides(compile_kwargs)  # for a changing image size
        model.compile(**compile_kwargs)
        return model
    blocks = [m for m in model.modules() if isinstance(m, GrootVBlock)]
    if not blocks:
        raise ValueError(f"regional=True compiles GrootV blocks, but {type(model).__name__} has "
                         "none; use regional=False to compile the whole model")
    compile_kwargs.setdefault("fullgraph", True)
    # Every stage has other sizes (H, W, C): one dynamic graph serves them all, instead of a
    # static one per stage and then recompilations as Dynamo discovers which sizes change.
    compile_kwargs.setdefault("dynamic", True)
    if compile_kwargs.get("backend", "inductor") == "inductor":
        _require_exact_view_strides(compile_kwargs)
    for block in blocks:
        block.compile(**compile_kwargs)
    return model


def _require_exact_view_strides(compile_kwargs: dict[str, Any]) -> None:
    """Add Inductor's ``strict_output_strides`` to ``compile_kwargs``' options (folding a
    ``mode`` into them: torch.compile takes one or the other).

    Why: with dynamic spatial sizes, the training graph of a block saves a view for backward
    (the permuted input of the depthwise convolution, strides (H*W*D, 1, W*D, D)). By default
    Inductor keeps only the stride *order* of view outputs, and orders the strides by comparing
    symbolic expressions without its shape environment, which fails ("cannot determine truth
    value of Relational", PyTorch 2.14). Matching the strides exactly skips that comparison.
    An Inductor without the option (PyTorch 2.11 has none) gets ``compile_kwargs`` unchanged:
    torch.compile refuses options it does not know.
    """
    import torch._inductor

    if not _inductor_has_option("strict_output_strides"):
        return
    options = dict(compile_kwargs.pop("options", None) or {})
    mode = compile_kwargs.pop("mode", None)
    if mode is not None:
        options = {**torch._inductor.list_mode_options(mode, compile_kwargs.get("dynamic")),
                   **options}
    options.setdefault("strict_output_strides", True)
    compile_kwargs["options"] = options


def _inductor_has_option(name: str) -> bool:
    import torch._inductor.config

    return hasattr(torch._inductor.config, name)
