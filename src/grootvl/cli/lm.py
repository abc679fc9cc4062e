"""``grootvl lm-finetune``, ``lm-merge`` and ``lm-demo``: GrootL language-model commands.

Multi-GPU and DeepSpeed are Hugging Face Trainer's own: launch with
``torchrun --nproc_per_node N -m grootvl lm-finetune ...`` and pass Trainer flags after
``--`` (e.g. ``-- --deepspeed ds_config.json --gradient_checkpointing true``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError
from .common import cli_command, input_file, options_validator, output_folder

GROOTL_ADAPTER_FILE = "grootl_adapter.json"


def register(subparsers) -> None:
    finetune = subparsers.add_parser(
        "lm-finetune", help="LoRA fine-tuning of a Mamba LM with GrootL tree scanning on Alpaca JSON",
        description="LoRA (r 8, alpha 16, dropout 0 on x_proj, embeddings, in_proj, out_proj) fine-tuning of a "
        "Hugging Face Mamba causal LM with GrootL tree scanning, on Alpaca-format JSON "
        "(instruction, input, output; the prompt is masked out of the loss). Trainer flags go after '--'.",
    )
    finetune.add_argument("--model", required=True, help="local Hugging Face MambaForCausalLM directory (with tokenizer)")
    finetune.add_argument("--data", required=True, help="Alpaca-format JSON list or JSON-lines file")
    finetune.add_argument("--output-dir", required=True, help="where the LoRA adapter and tokenizer are saved")
    finetune.add_argument("--tree-scale", type=float, default=0.3,
                          help="weight of the tree scan (default 0.3; 0 fine-tunes plain Mamba + LoRA)")
    finetune.add_argument("--max-length", type=int, default=512, help="tokens per example (default 512)")
    finetune.add_argument("--lr", type=float, default=2e-5, help="learning rate, constant after warm-up (2e-5)")
    finetune.add_argument("--warmup-steps", type=int, default=20)
    finetune.add_argument("--epochs", type=float, default=1.0)
    finetune.add_argument("--batch-size", type=int, default=4, help="per device")
    finetune.add_argument("--grad-accum", type=int, default=1)
    finetune.add_argument("--bf16", choices=("auto", "yes", "no"), default="auto",
                          help="bf16 training; auto = where the GPU supports it")
    finetune.add_argument("--lora-r", type=int, default=8)
    finetune.add_argument("--lora-alpha", type=int, default=16)
    finetune.add_argument("trainer_args", nargs="*", help="after '--': extra Hugging Face TrainingArguments flags")
    finetune.set_defaults(func=cli_command("lm-finetune")(run_finetune), validate=options_validator(
        "FinetuneOptions", {"tree_scale": "--tree-scale", "max_length": "--max-length",
                            "lr": "--lr", "warmup_steps": "--warmup-steps", "epochs": "--epochs",
                            "batch_size": "--batch-size", "grad_accum": "--grad-accum",
                            "lora_r": "--lora-r", "lora_alpha": "--lora-alpha"}))

    merge = subparsers.add_parser(
        "lm-merge", help="merge a LoRA adapter into a plain GrootL model directory",
        description="Load the base model, enable tree scanning with the adapter's tree_scale, merge the LoRA "
        "weights and save a stand-alone model (reload with grootvl.grootl.load_grootl).",
    )
    merge.add_argument("--base", required=True, help="base MambaForCausalLM directory")
    merge.add_argument("--adapter", required=True, help="output directory of lm-finetune")
    merge.add_argument("--output-dir", required=True)
    merge.add_argument("--tree-scale", type=float, default=None, help="override the adapter's tree_scale")
    merge.set_defaults(func=cli_command("lm-merge")(run_merge), validate=options_validator(
        "MergeOptions", {"tree_scale": "--tree-scale"}))

    demo = subparsers.add_parser(
        "lm-demo", help="offline demo: pre-train a byte-level Mamba, LoRA vs GrootL fine-tuning, table + PNG",
        description="Pre-trains a small byte-level Mamba on pydoc_data.topics, fine-tunes it with LoRA with and "
        "without GrootL on Alpaca examples derived from it, and reports held-out losses (stdout, JSON, PNG).",
    )
    demo.add_argument("--output-dir", default="runs/lm-demo")
    demo.add_argument("--pretrain-steps", type=int, default=None)
    demo.add_argument("--finetune-steps", type=int, default=None)
    demo.add_argument("--tree-scale", type=float, default=None)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quick", action="store_true", help="a few steps only (smoke test, numbers meaningless)")
    demo.set_defaults(func=cli_command("lm-demo")(run_demo_command), validate=options_validator(
        "LmDemoOptions", {"pretrain_steps": "--pretrain-steps", "finetune_steps": "--finetune-steps",
                          "tree_scale": "--tree-scale", "seed": "--seed"}))


def _load_tokenizer(path: str, flag: str):
    from transformers import AutoTokenizer

    tokenizer = _from_folder(flag, path, "tokenizer", AutoTokenizer.from_pretrained)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _from_folder(flag: str, path, what: str, load, *args, **kwargs):
    """``load(*args, path, **kwargs)`` (a Hugging Face ``from_pretrained``): whatever a
    damaged or foreign folder makes it raise becomes one line naming ``flag`` and the folder."""
    from ..files import first_line

    try:
        return load(*args, str(path), **kwargs)
    except UserError:
        raise
    except Exception as exc:  # OSError, ValueError, SafetensorError, JSON errors...
        raise UserError(f"{flag} {path}: the {what} in it cannot be loaded "
                        f"({first_line(exc)})") from None


def _require_dir(flag: str, path: str, marker: str, fix: str) -> None:
    """A ``UserError`` naming ``flag`` unless ``path`` is a folder holding ``marker``: the
    commands take local folders only, and transformers would treat anything else as a Hub id."""
    if not Path(path).is_dir():
        raise UserError(f"{flag} {path}: no such folder; {fix}")
    if not (Path(path) / marker).is_file():
        raise UserError(f"{flag} {path}: the folder has no {marker}; {fix}")


_MODEL_FIX = ("pass a local MambaForCausalLM folder (config.json, weights and tokenizer files, as "
              "written by save_pretrained); nothing is downloaded")


def _load_examples(args: argparse.Namespace, tokenizer) -> list:
    from ..grootl.finetune import load_alpaca, tokenize_alpaca

    input_file(args.data, "--data", "an Alpaca-format JSON list or JSON-lines file "
               "(instruction, input, output)")
    try:
        examples = load_alpaca(args.data)
    except (ValueError, TypeError, AttributeError) as exc:  # bad JSON or missing fields
        raise UserError(f"--data {args.data}: not Alpaca-format JSON ({exc})") from exc
    except OSError as exc:
        raise UserError(f"--data {args.data} cannot be read ({exc.strerror or exc})") from None
    if not examples:
        raise UserError(f"--data {args.data}: the file holds no example; it needs a JSON list or "
                        "JSON lines of {\"instruction\", \"input\", \"output\"} objects")
    rows = tokenize_alpaca(examples, tokenizer, args.max_length)
    if not rows:
        raise UserError(f"--data {args.data}: none of its {len(examples)} examples keeps a response "
                        f"token within --max-length {args.max_length}; raise --max-length or "
                        "shorten the prompts")
    return rows


def run_finetune(args: argparse.Namespace) -> int:
    from transformers import MambaForCausalLM

    from ..grootl import enable_tree_scanning
    from ..grootl.finetune import bf16_supported, lora_config, train_lora, training_arguments

    _require_dir("--model", args.model, "config.json", _MODEL_FIX)
    output_folder(args.output_dir, "--output-dir")
    tokenizer = _load_tokenizer(args.model, "--model")
    rows = _load_examples(args, tokenizer)
    bf16 = {"auto": bf16_supported(), "yes": True, "no": False}[args.bf16]
    training = training_arguments(
        args.output_dir, extra_args=args.trainer_args, learning_rate=args.lr, warmup_steps=args.warmup_steps,
        num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, bf16=bf16,
    )
    model = enable_tree_scanning(_from_folder("--model", args.model, "model",
                                              MambaForCausalLM.from_pretrained),
                                 tree_scale=args.tree_scale)
    peft_model, trainer = train_lora(model, tokenizer, rows, training,
                                     lora=lora_config(r=args.lora_r, alpha=args.lora_alpha))
    if trainer.is_world_process_zero():
        out = Path(args.output_dir)
        peft_model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / GROOTL_ADAPTER_FILE).write_text(json.dumps({"tree_scale": args.tree_scale, "base": args.model}))
        print(f"saved LoRA adapter to {out}; merge with: grootvl lm-merge --base {args.model} --adapter {out} "
              f"--output-dir MERGED")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from transformers import MambaForCausalLM

    from ..grootl import enable_tree_scanning
    from ..grootl.finetune import load_adapter, merge_lora

    _require_dir("--base", args.base, "config.json", "pass the local MambaForCausalLM folder the adapter "
                 "was trained on (the --model of lm-finetune); nothing is downloaded")
    _require_dir("--adapter", args.adapter, "adapter_config.json",
                 "pass the --output-dir of a finished grootvl lm-finetune run")
    output_folder(args.output_dir, "--output-dir")
    tree_scale = args.tree_scale if args.tree_scale is not None else _saved_tree_scale(args.adapter)
    model = enable_tree_scanning(_from_folder("--base", args.base, "model",
                                              MambaForCausalLM.from_pretrained),
                                 tree_scale=tree_scale)
    merged = merge_lora(_from_folder("--adapter", args.adapter, "LoRA adapter", load_adapter,
                                     model))
    merged.save_pretrained(args.output_dir)
    has_tokenizer = (Path(args.adapter) / "tokenizer_config.json").exists()
    _load_tokenizer(*((args.adapter, "--adapter") if has_tokenizer else (args.base, "--base"))) \
        .save_pretrained(args.output_dir)
    print(f"merged model (tree_scale {merged.config.grootl['tree_scale']}) saved to {args.output_dir}; "
          "load with grootvl.grootl.load_grootl(DIR)")
    return 0


def _saved_tree_scale(adapter: str) -> float | None:
    """The tree_scale lm-finetune recorded with an adapter (None: the GrootL default),
    checked like the --tree-scale option."""
    from ..engine.config import validate_values
    from .options import MergeOptions

    settings_file = Path(adapter) / GROOTL_ADAPTER_FILE
    if not settings_file.exists():
        return None
    try:
        saved = json.loads(settings_file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--adapter {adapter}: {GROOTL_ADAPTER_FILE} is not readable JSON "
                        f"({exc}); pass --tree-scale to say what the adapter was trained "
                        "with") from None
    value = saved.get("tree_scale") if isinstance(saved, dict) else None
    return validate_values(MergeOptions, {"tree_scale": (value, str(settings_file))}).tree_scale


def run_demo_command(args: argparse.Namespace) -> int:
    from ..grootl.demo import DemoConfig, run_demo

    output_folder(args.output_dir, "--output-dir")
    config = DemoConfig(seed=args.seed)
    if args.quick:
        config.pretrain_steps, config.finetune_steps = 3, 2
    for field, value in (("pretrain_steps", args.pretrain_steps), ("finetune_steps", args.finetune_steps),
                         ("tree_scale", args.tree_scale)):
        if value is not None:
            setattr(config, field, value)
    run_demo(args.output_dir, config)
    return 0
