"""Base command lines (tiny, fast, valid) and the edits that turn them into attacks.

A base is ``(command, [(flag, value), ...])``; ``value`` True is a bare flag. Placeholders in
braces are filled by the worker: ``{out}`` (a fresh path in the case's folder), ``{case}``
(the case's folder) and the fixture paths (``{data}``, ``{run}``...; see ``fixtures.py``).
"""
from __future__ import annotations

import re

TINY_KWARGS = "model.kwargs={channels: 8, depths: [1, 1, 1, 1]}"
TINY_SET = ["--set", "channels=8", "--set", "depths=[1, 1, 1, 1]"]
BACKBONE_JSON = '{"depths": [1, 1, 1, 1], "channels": 8}'

TRAIN = ("train", [
    ("--data", "{data}"), ("--output", "{out}"), ("--set", TINY_KWARGS), ("--img-size", "32"),
    ("--epochs", "1"), ("--warmup-epochs", "0"), ("--batch-size", "4"),
    ("--limit-train-steps", "1"), ("--limit-val-steps", "1"), ("--workers", "0"),
    ("--threads", "1"), ("--progress", "none"), ("--device", "cpu")])
# dedicated flag of each config key the base sets (a flag wins over --set, so an attack
# through --set on one of these keys drops the flag)
TRAIN_FLAG_OF_KEY = {"sched.epochs": "--epochs", "sched.warmup_epochs": "--warmup-epochs",
                     "train.batch_size": "--batch-size", "data.img_size": "--img-size",
                     "train.limit_train_steps": "--limit-train-steps",
                     "train.limit_val_steps": "--limit-val-steps", "data.num_workers": "--workers",
                     "train.threads": "--threads", "train.progress": "--progress",
                     "train.device": "--device", "data.path": "--data", "model.kwargs": "--set"}

EVAL = ("eval", [("--checkpoint", "{run}/last.pth"), ("--data", "{data}"), ("--batch-size", "4"),
                 ("--workers", "0"), ("--device", "cpu")])

DEMO = ("demo", [("--data-dir", "{digits}"), ("--output", "{out}"), ("--set", TINY_KWARGS),
                 ("--epochs", "1"), ("--batch-size", "8"), ("--limit-train-steps", "1"),
                 ("--limit-val-steps", "1"), ("--threads", "1"), ("--progress", "none")])

MODEL_OPTS = [("--model", "grootv_tiny"), ("--set", TINY_SET[1]), ("--set", TINY_SET[3]),
              ("--num-classes", "2")]
VISUALIZE = ("visualize", [("--image", "{img_ok}"), ("--output", "{out}"), *MODEL_OPTS,
                           ("--img-size", "32")])
BENCHMARK = ("benchmark", [*MODEL_OPTS, ("--img-size", "32"), ("--batch-size", "2"),
                           ("--warmup", "0"), ("--iters", "1"), ("--device", "cpu"),
                           ("--mode", "inference")])
FLOPS = ("flops", [*MODEL_OPTS, ("--img-size", "32")])

_DENSE_RUNTIME = [("--workers", "0"), ("--device", "cpu"), ("--amp", "none"),
                  ("--progress", "none")]
DET_TRAIN = ("det-train", [
    ("--data", "{coco}"), ("--model", "tiny"), ("--backbone-kwargs", BACKBONE_JSON),
    ("--output", "{out}"), ("--epochs", "1"), ("--batch-size", "2"), ("--lr", "3e-4"),
    ("--warmup-iters", "2"), ("--lr-steps", []), ("--min-size", "64"), ("--max-size", "64"),
    ("--fpn-channels", "16"), ("--box-head-dim", "32"), ("--mask-head-channels", "16"),
    ("--detector-kwargs", '{"box_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 100, '
     '"rpn_post_nms_top_n_test": 50, "box_detections_per_img": 10}'),
    *_DENSE_RUNTIME, ("--log-every", "1")])
DET_EVAL = ("det-eval", [("--checkpoint", "{det_run}/last.pth"), ("--data", "{coco}"),
                         ("--output", "{out}"), *_DENSE_RUNTIME])
SEG_TRAIN = ("seg-train", [
    ("--data", "{ade}"), ("--num-classes", "4"), ("--model", "tiny"),
    ("--backbone-kwargs", BACKBONE_JSON), ("--decoder-channels", "16"), ("--crop-size", "64"),
    ("--scale", ["96", "64"]), ("--output", "{out}"), ("--epochs", "1"), ("--batch-size", "2"),
    ("--lr", "2e-3"), ("--warmup-iters", "2"), *_DENSE_RUNTIME, ("--log-every", "1")])
SEG_EVAL = ("seg-eval", [("--checkpoint", "{seg_run}/last.pth"), ("--data", "{ade}"),
                         ("--output", "{out}"), *_DENSE_RUNTIME])

_HF_TRAINER = ["--", "--max_steps", "1", "--use_cpu", "true", "--report_to", "none",
               "--save_strategy", "no", "--logging_steps", "1"]
LM_FINETUNE = ("lm-finetune", [("--model", "{lm_model}"), ("--data", "{lm_data}"),
                               ("--output-dir", "{out}"), ("--max-length", "384"),
                               ("--batch-size", "2"), ("--warmup-steps", "0"), ("--bf16", "no")])
LM_FINETUNE_TAIL = _HF_TRAINER
LM_MERGE = ("lm-merge", [("--base", "{lm_model}"), ("--adapter", "{lm_adapter}"),
                         ("--output-dir", "{out}")])
LM_DEMO = ("lm-demo", [("--output-dir", "{out}"), ("--quick", True)])


def build(base, replace: dict | None = None, drop=(), extra=(), tail=()) -> list[str]:
    """The base's argv with ``replace`` (flag -> new value; None removes the flag; a flag the
    base lacks is appended), ``drop`` (flags removed) and ``extra`` tokens appended."""
    command, pairs = base
    replace = dict(replace or {})
    out = [command]
    for flag, value in pairs:
        if flag in drop:
            continue
        if flag in replace:
            value = replace.pop(flag)
            if value is None:
                continue
        out.extend(_tokens(flag, value))
    for flag, value in replace.items():
        if value is not None:
            out.extend(_tokens(flag, value))
    return out + list(extra) + list(tail)


def _tokens(flag: str, value) -> list[str]:
    if value is True:
        return [flag]
    if isinstance(value, list):
        return [flag, *value]
    # "--flag=-1": argparse would read a bare "-1" after a flag as a value anyway, but "-inf"
    # and "-1e30" look like options to it; the = form passes every value through.
    if isinstance(value, str) and value.startswith("-"):
        return [f"{flag}={value}"]
    return [flag, value]


PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)\}")


def fill(text: str, values: dict) -> str:
    """``text`` with each ``{name}`` replaced by ``values[name]`` (KeyError if missing);
    other braces (YAML flow mappings, JSON) are left alone."""
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def flag_regex(flag: str) -> str:
    """What an error about ``--batch-size`` / ``train.batch_size`` must mention."""
    words = re.split(r"[-_.]", flag.lstrip("-").split(".")[-1])
    return r"[-_. ]?".join(re.escape(w) for w in words if w)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+\[\]-]+", "_", text).strip("_")[:40] or "empty"
