"""GrootL: tree scanning inside Mamba language models (docs/design.md, "GrootL").

``enable_tree_scanning(model)`` turns a Hugging Face ``MambaForCausalLM`` into GrootL in
place; the model then trains with Trainer/peft, generates with ``generate`` and is scored by
lm-evaluation-harness as ``--model grootl`` (see ``grootvl.grootl.lm_eval_model``).
Fine-tuning, merging and the embedded demo live in ``finetune`` and ``demo``.
"""
from .model import (
    GrootLMambaForCausalLM,
    context_length_from_labels,
    enable_tree_scanning,
    is_grootl,
    load_grootl,
)
from .mixer import GrootLMambaMixer
from .tokenizer import byte_tokenizer

__all__ = [
    "GrootLMambaForCausalLM",
    "GrootLMambaMixer",
    "byte_tokenizer",
    "context_length_from_labels",
    "enable_tree_scanning",
    "is_grootl",
    "load_grootl",
]
