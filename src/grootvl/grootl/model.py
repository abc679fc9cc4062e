"""Turn a Hugging Face ``MambaForCausalLM`` into GrootL in place (docs/design.md,
"GrootL").

The model keeps its weights, its class hierarchy and every transformers feature (Trainer,
``generate``, ``save_pretrained``, peft); two classes are swapped for small subclasses:

* each ``MambaMixer`` becomes ``GrootLMambaMixer`` (chain scan + tree_scale * tree scan);
* the ``MambaForCausalLM`` becomes ``GrootLMambaForCausalLM``, whose forward learns the
  context length (from ``context_length=`` or from the labels) and whose ``generate`` treats
  the prompt as the context.

The setting travels in the config as ``config.grootl = {"tree_scale": ...}``; after
``MambaForCausalLM.from_pretrained(dir)`` one call to ``enable_tree_scanning(model)``
restores it (or use ``load_grootl(dir)``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import MambaForCausalLM
from transformers.models.mamba.modeling_mamba import MambaMixer

from .mixer import GrootLMambaMixer, GrootLState

DEFAULT_TREE_SCALE = 0.3
IGNORE_INDEX = -100


def context_length_from_labels(labels: Tensor) -> int:
    """Number of leading positions whose label is -100 (the prompt), minimum over the batch."""
    labels = labels.reshape(labels.shape[0], -1) if labels.dim() > 1 else labels.unsqueeze(0)
    supervised = labels != IGNORE_INDEX
    first = torch.where(supervised.any(dim=1), supervised.int().argmax(dim=1),
                        torch.full_like(labels[:, 0], labels.shape[1]))
    return int(first.min()) if first.numel() else 0


class GrootLMambaForCausalLM(MambaForCausalLM):
    """``MambaForCausalLM`` with GrootL tree scanning; made by ``enable_tree_scanning``.

    Extra keyword of ``forward`` and ``generate``: ``context_length`` (int, or one int per
    row): the number of leading tokens that form the context (prompt), inside which the text
    tree may link non-adjacent tokens; each in [0, sequence length] (anything else, e.g. a
    float or a list of another length than the batch, is an error, never clamped). Without
    it, ``forward`` takes it from ``labels`` (the leading -100 positions, minimum over the
    batch) and otherwise treats the whole sequence as continuation (the chain); ``generate``
    uses the prompt length.
    """

    _grootl: GrootLState

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache=None, labels=None,
                *args, context_length: int | Sequence[int] | Tensor | None = None, **kwargs):
        if context_length is None and labels is not None:
            context_length = context_length_from_labels(labels)
        self._grootl.context_length = context_length
        try:
            return super().forward(input_ids, attention_mask, inputs_embeds, cache, labels, *args, **kwargs)
        finally:
            # Gradient checkpointing re-runs the mixers during backward: keep the context
            # until the next forward sets its own.
            if not (self.training and _checkpointing(self)):
                self._grootl.context_length = None

    def generate(self, inputs: Tensor | None = None, *args,
                 context_length: int | Sequence[int] | Tensor | None = None, **kwargs):
        """``GenerationMixin.generate`` with the prompt as context (default: its full length).

        The prompt is scanned with its tree; each new token then advances the cached state by
        one recurrence step, so greedy output equals the argmax of a full forward over the
        final sequence with ``context_length`` = prompt length.
        """
        if context_length is None:
            prompt = inputs if inputs is not None else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
            if isinstance(prompt, Tensor) and prompt.dim() >= 2:
                context_length = prompt.shape[1]
        return super().generate(inputs, *args, context_length=context_length, **kwargs)


def _checkpointing(model) -> bool:
    flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    return bool(getattr(model, flag))


def _unwrap(model):
    """The ``MambaForCausalLM`` inside a peft wrapper (or the model itself)."""
    seen = model
    if hasattr(seen, "get_base_model"):
        seen = seen.get_base_model()
    if not isinstance(seen, MambaForCausalLM):
        raise TypeError(
            f"enable_tree_scanning expects a transformers MambaForCausalLM (or a peft model wrapping one), "
            f"got {type(model).__name__}; load it with MambaForCausalLM.from_pretrained(...)"
        )
    return seen


def _resolve_tree_scale(config, tree_scale: float | None) -> float:
    if tree_scale is None:
        saved = getattr(config, "grootl", None)
        tree_scale = saved.get("tree_scale", DEFAULT_TREE_SCALE) if isinstance(saved, dict) else DEFAULT_TREE_SCALE
    if isinstance(tree_scale, bool) or not isinstance(tree_scale, (int, float)) or not math.isfinite(tree_scale) \
            or tree_scale < 0:
        raise ValueError(f"tree_scale must be a finite float >= 0 (0 gives plain Mamba), got {tree_scale!r}")
    return float(tree_scale)


def enable_tree_scanning(model, tree_scale: float | None = None, scan_impl: str | None = None,
                         tree_impl: str | None = None):
    """Make a ``MambaForCausalLM`` (random or pre-trained, any size) a GrootL model, in place.

    Args:
        model: a ``transformers.MambaForCausalLM``, or a peft model wrapping one.
        tree_scale: weight of the tree scan added to the chain scan (the paper uses 0.3; 0
            reproduces plain Mamba exactly). None: ``config.grootl["tree_scale"]`` when the
            model was saved as GrootL, else 0.3.
        scan_impl / tree_impl: ``impl`` passed to ``tree_scan`` / tree construction (None =
            fastest for the device). Not saved.

    Returns:
        ``model`` itself. Calling it again only changes the settings.
    """
    base = _unwrap(model)
    scale = _resolve_tree_scale(base.config, tree_scale)
    state = getattr(base, "_grootl", None)
    if not isinstance(state, GrootLState):
        state = GrootLState()
    state.tree_scale, state.scan_impl, state.tree_impl = scale, scan_impl, tree_impl
    for module in base.modules():
        if isinstance(module, MambaMixer):
            if type(module) is MambaMixer:
                module.__class__ = GrootLMambaMixer
            elif not isinstance(module, GrootLMambaMixer):
                raise TypeError(f"cannot enable tree scanning on mixer subclass {type(module).__name__}")
            module._grootl = state
    if type(base) is MambaForCausalLM:
        base.__class__ = GrootLMambaForCausalLM
    elif not isinstance(base, GrootLMambaForCausalLM):
        raise TypeError(f"cannot enable tree scanning on {type(base).__name__}, a subclass of MambaForCausalLM")
    base._grootl = state
    base.config.grootl = {"tree_scale": scale}
    return model


def is_grootl(model) -> bool:
    """Whether ``model`` (or the model a peft wrapper holds) has tree scanning enabled."""
    try:
        return isinstance(_unwrap(model), GrootLMambaForCausalLM)
    except TypeError:
        return False


def load_grootl(path: str, tree_scale: float | None = None, **from_pretrained_kwargs) -> GrootLMambaForCausalLM:
    """``MambaForCausalLM.from_pretrained(path, ...)`` followed by ``enable_tree_scanning``."""
    model = MambaForCausalLM.from_pretrained(path, **from_pretrained_kwargs)
    return enable_tree_scanning(model, tree_scale=tree_scale)
