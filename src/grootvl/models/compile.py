"""``torch.compile`` for GrootV models, for training and inference (what ``--compile`` uses).

``torch.compile(model)`` with default arguments works on GrootV: the tree construction and
tree scan are custom ops (one opaque node each, with fake implementations of static shape
while compiling), so a GrootV block traces into one graph with no break, and dynamic shapes
(e.g. a changing batch size) compile too. ``compile_model`` adds two things a trainer wants:

* it compiles **in place** (``nn.Module.compile``), so ``state_dict`` keys, EMA copies and
  checkpoints are those of the plain model (no ``_orig_mod.`` prefix);
* ``regional=True`` compiles each GrootV block on its own with ``fullgraph=True`` instead of
  the whole model: the blocks of a stage share one compiled graph, and a graph break inside a
  block is an error instead of a silent slowdown. Known limitation (PyTorch 2.14): blocks of
  different stages share one code object, so Dynamo makes their spatial sizes dynamic, and
  Inductor then fails to compile the *training* graph ("cannot determine truth value of
  Relational", in its stride ordering of view outputs); regional inference works. Train
  with the default whole-model compilation, whose graphs only have a dynamic batch size.

Compiled CPU inference uses torch compositions of the element-wise SSM stages (fused by
Inductor) rather than grootvl's fused numba kernels, which Dynamo cannot trace.
"""
from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["compile_model"]


def compile_model(model: nn.Module, *, regional: bool = False, **compile_kwargs: Any) -> nn.Module:
    """Compile ``model`` in place with ``torch.compile`` and return it.

    Args:
        model: any ``nn.Module``; ``regional`` applies to GrootV models (and any model that
            holds ``GrootVBlock`` modules, e.g. a dense-prediction backbone).
        regional: compile every ``GrootVBlock`` separately with ``fullgraph=True`` (the
            stem, downsampling layers and head stay eager; inference only, see above).
            Default: the whole model as one compiled region.
        **compile_kwargs: passed to ``torch.compile`` (``mode``, ``dynamic``, ``backend``...).

    Returns:
        ``model`` itself, compiled: train, evaluate and save it as usual.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compile_model needs an nn.Module, got {type(model).__name__}")
    if not regional:
        model.compile(**compile_kwargs)
        return model
    from .grootv import GrootVBlock

    blocks = [m for m in model.modules() if isinstance(m, GrootVBlock)]
    if not blocks:
        raise ValueError(f"regional=True compiles GrootV blocks, but {type(model).__name__} has "
                         "none; use regional=False to compile the whole model")
    compile_kwargs.setdefault("fullgraph", True)
    for block in blocks:
        block.compile(**compile_kwargs)
    return model
