"""LoRA fine-tuning of (GrootL) Mamba on Alpaca-format data, and merging the adapter.

Alpaca format: a JSON list (or JSON lines) of {"instruction", "input", "output"}. The prompt
(instruction and input, in the Alpaca template) is masked out of the loss with label -100, so
the GrootL forward takes the prompt as its context. Training runs through Hugging Face
``Trainer``: bf16, torchrun and DeepSpeed are Trainer's own options.
"""
from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from unittest import mock

import torch
from torch import Tensor

from .model import IGNORE_INDEX, is_grootl

# The paper's LoRA (docs/design.md, "GrootL"): r 8, alpha 16, dropout 0 on x_proj, embeddings,
# in_proj and out_proj.
LORA_TARGETS = ("x_proj", "embeddings", "in_proj", "out_proj")

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_WITHOUT_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(example: dict) -> str:
    """The Alpaca prompt for an example (the part masked out of the loss)."""
    if "instruction" not in example:
        raise KeyError(f"Alpaca example needs an 'instruction' field, got fields {sorted(example)}")
    template = PROMPT_WITH_INPUT if example.get("input") else PROMPT_WITHOUT_INPUT
    return template.format(instruction=example["instruction"], input=example.get("input", ""))


def load_alpaca(path: str | Path) -> list[dict]:
    """Read Alpaca examples from a JSON list or a JSON-lines file."""
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        examples = json.loads(text)
    else:
        examples = [json.loads(line) for line in text.splitlines() if line.strip()]
    for index, example in enumerate(examples):
        missing = {"instruction", "output"} - set(example)
        if missing:
            raise ValueError(f"{path}: example {index} lacks field(s) {sorted(missing)}; Alpaca format needs "
                             "'instruction', 'output' and optionally 'input'")
    return examples


def tokenize_alpaca(examples: Iterable[dict], tokenizer, max_length: int = 512) -> list[dict]:
    """Token ids and labels (-100 over the prompt) per example, ending with the eos token.

    Sequences are cut to ``max_length``; an example whose response is cut away entirely is
    dropped (it would have no supervised token).
    """
    rows = []
    for example in examples:
        prompt = tokenizer(alpaca_prompt(example), add_special_tokens=False)["input_ids"]
        answer = tokenizer(example["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        input_ids = (prompt + answer)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt) + answer)[:max_length]
        if any(label != IGNORE_INDEX for label in labels):
            rows.append({"input_ids": input_ids, "labels": labels})
    return rows


class SupervisedCollator:
    """Right-pads ``input_ids`` (pad id), ``labels`` (-100) and builds the attention mask."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: Sequence[dict]) -> dict[str, Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


@contextlib.contextmanager
def _lora_on_out_proj_allowed(model):
    """Let peft put LoRA on a GrootL mixer's ``out_proj``.

    peft refuses ``out_proj`` on Mamba because transformers' fused CUDA kernel reads
    ``out_proj.weight`` directly, bypassing the adapter. The GrootL mixer calls ``out_proj``
    as a module, so the adapter is applied; for any other model the check stays.
    """
    import peft.tuners.tuners_utils as tuners_utils

    original = tuners_utils._check_lora_target_modules_mamba

    def check(peft_config, target_model, target_name):
        if target_name == "out_proj" and is_grootl(model):
            return None
        return original(peft_config, target_model, target_name)

    with mock.patch.object(tuners_utils, "_check_lora_target_modules_mamba", check):
        yield


def lora_config(r: int = 8, alpha: int = 16, dropout: float = 0.0, targets: Sequence[str] = LORA_TARGETS):
    """The paper's LoRA setting (docs/design.md, "GrootL") as a ``peft.LoraConfig``."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                      task_type="CAUSAL_LM")


def add_lora(model, config=None):
    """Wrap a (GrootL) ``MambaForCausalLM`` in a peft LoRA model (default: ``lora_config()``)."""
    from peft import get_peft_model

    with _lora_on_out_proj_allowed(model):
        return get_peft_model(model, config or lora_config())


def load_adapter(model, adapter_dir: str | Path, is_trainable: bool = False):
    """``PeftModel.from_pretrained`` for a (GrootL) Mamba base model."""
    from peft import PeftModel

    with _lora_on_out_proj_allowed(model):
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)


def merge_lora(peft_model):
    """Merge the LoRA weights into a plain ``MambaForCausalLM`` with the same logits.

    Mamba ties the output head to the input embeddings, but LoRA only adapts the embedding
    lookup; the head keeps the base weights. Merging into the shared tensor would change the
    head too, so the head is untied first (``config.tie_word_embeddings = False``).
    """
    base = peft_model.get_base_model()
    embeddings = base.get_input_embeddings()
    head = base.get_output_embeddings()
    embedding_weight = getattr(embeddings, "base_layer", embeddings).weight
    untie = head is not None and head.weight is embedding_weight and hasattr(embeddings, "base_layer")
    if untie:
        head.weight = torch.nn.Parameter(embedding_weight.detach().clone(), requires_grad=head.weight.requires_grad)
    merged = peft_model.merge_and_unload()
    if untie:
        merged.config.tie_word_embeddings = False
        if hasattr(merged.config, "get_text_config"):
            merged.config.get_text_config().tie_word_embeddings = False
    return merged


def bf16_supported() -> bool:
    """bf16 training where the hardware runs it natively (CUDA with bf16 support)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def masked_loss(model, rows: Sequence[dict], pad_token_id: int, batch_size: int = 8) -> float:
    """Mean token cross-entropy over the supervised (non -100) tokens of ``rows``."""
    collate = SupervisedCollator(pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in collate(rows[start:start + batch_size]).items()}
            labels = batch.pop("labels")
            logits = model(**batch, labels=labels).logits.float()
            targets = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets,
                                                    ignore_index=IGNORE_INDEX, reduction="sum")
            total += float(nll)
            count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(count, 1)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def training_arguments(output_dir: str | Path, extra_args: Sequence[str] = (), **overrides):
    """``TrainingArguments`` with the paper's fine-tuning defaults (docs/design.md, "GrootL").

    lr 2e-5 constant after 20 warm-up steps, 1 epoch, bf16 where supported, no checkpoints
    saved mid-run. ``overrides`` replace defaults; ``extra_args`` are Trainer command-line
    flags (``--deepspeed ds.json``, ``--gradient_checkpointing true``...), applied last.
    """
    from transformers import HfArgumentParser, TrainingArguments

    settings = {
        "learning_rate": 2e-5,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": 20,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 4,
        "bf16": bf16_supported(),
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "remove_unused_columns": False,
        "disable_tqdm": True,
    }
    settings.update(overrides)
    flags = ["--output_dir", str(output_dir)]
    for key, value in settings.items():
        flags += [f"--{key}", str(value)]
    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(args=flags + list(extra_args))
    return args


def train_lora(model, tokenizer, rows: Sequence[dict], args, lora=None, eval_rows: Sequence[dict] | None = None):
    """Add LoRA to ``model`` and train it with ``Trainer`` on tokenized Alpaca ``rows``.

    Returns ``(peft_model, trainer)``; the adapter is saved by ``peft_model.save_pretrained``.
    """
    from transformers import Trainer

    peft_model = add_lora(model, lora)
    trainer = Trainer(
        model=peft_model,
        args=args,
        train_dataset=list(rows),
        eval_dataset=list(eval_rows) if eval_rows else None,
        data_collator=SupervisedCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    trainer.train()
    return peft_model, trainer
