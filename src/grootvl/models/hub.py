"""Share GrootV weights in timm's Hugging Face Hub layout.

``export_for_hub`` reads a checkpoint (a release ``.pth``, a ``grootvl train`` checkpoint or a
``.safetensors`` file), rebuilds the model it holds and writes, through timm's own
``save_for_hf``, the folder timm loads back: ``config.json`` (architecture, its keyword
arguments, ``pretrained_cfg``), ``model.safetensors`` and a model card ``README.md``. Then

    import grootvl, timm
    model = timm.create_model("local-dir:DIR", pretrained=True)

rebuilds the same model with the same weights; ``push_to_hub`` publishes the folder through
timm's ``push_to_hf_hub`` (``hf-hub:REPO``). ``import grootvl`` is needed on the loading side
because it is what registers the ``grootv_*`` architectures with timm.

Which model a checkpoint holds: the architecture (channels, depths, classes, input channels,
MLP ratio, head width) is read off the weights' shapes; the name and the options that leave
no trace in the weights (e.g. ``tree_sharing``, ``tree_cost``) come from the training config
stored in ``grootvl train`` checkpoints, or from the caller.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .weights import load_checkpoint, read_checkpoint_file, read_state_dict

__all__ = ["HubExport", "export_for_hub", "grootv_kwargs_from_state", "push_to_hub"]

VARIANTS = ("grootv_tiny", "grootv_small", "grootv_base")
# Options that choose an implementation for the device at hand rather than the architecture:
# a file meant for any machine should not pin them.
_RUNTIME_ONLY = ("scan_impl", "tree_impl")
_HUB_FILES = ("config.json", "model.safetensors", "README.md")


@dataclass
class HubExport:
    """What ``export_for_hub`` built: the model, and what ``config.json`` / the card record."""

    model: nn.Module
    architecture: str
    model_kwargs: dict[str, Any]
    model_config: dict[str, Any] = field(default_factory=dict)
    data_config: dict[str, Any] | None = None
    model_card: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def grootv_kwargs_from_state(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """GrootV constructor arguments that a state dict's shapes fix: channels, depths,
    num_classes, in_chans, mlp_ratio, head_scale. Raises ValueError for other state dicts."""
    stem = state.get("patch_embed.conv1.weight")
    head_conv = state.get("conv_head.0.weight")
    if stem is None or head_conv is None or "patch_embed.conv2.weight" not in state:
        raise ValueError("not a GrootV state dict (no patch_embed.conv1/conv2 or conv_head weights)")
    channels = int(state["patch_embed.conv2.weight"].shape[0])
    depths: dict[int, int] = {}
    for key in state:
        m = re.match(r"levels\.(\d+)\.blocks\.(\d+)\.", key)
        if m:
            depths[int(m[1])] = max(depths.get(int(m[1]), 0), int(m[2]) + 1)
    depth_list = tuple(depths.get(i, 0) for i in range(max(depths, default=-1) + 1))
    last = channels * 2 ** (len(depth_list) - 1)
    kwargs: dict[str, Any] = dict(channels=channels, depths=depth_list, in_chans=int(stem.shape[1]))
    head = state.get("head.weight")
    kwargs["num_classes"] = int(head.shape[0]) if head is not None else 0
    kwargs["head_scale"] = _ratio(int(head_conv.shape[0]), last)
    fc1 = state.get("levels.0.blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        kwargs["mlp_ratio"] = _ratio(int(fc1.shape[0]), channels)
    return kwargs


def _ratio(width: int, base: int) -> float:
    """A float r with int(base * r) == width (how GrootV derives widths from ratios)."""
    ratio = width / base
    return ratio if int(base * ratio) == width else (width + 0.5) / base


def export_for_hub(checkpoint: str | PathLike, output_dir: str | PathLike, *,
                   model_name: str | None = None, use_ema: bool = False,
                   model_kwargs: Mapping[str, Any] | None = None,
                   num_classes: int | None = None, overwrite: bool = False) -> HubExport:
    """Write ``checkpoint``'s model to ``output_dir`` in timm's hub layout; see the module doc.

    Args:
        checkpoint: ``.pth`` (release or ``grootvl train``) or ``.safetensors`` file.
        output_dir: folder to write; must not exist or be empty unless ``overwrite``.
        model_name: timm architecture (``grootv_tiny`` ...); default: the training config's,
            else the registered variant whose channels and depths the weights have.
        use_ema: export the EMA weights (``model_ema``) instead of ``model``.
        model_kwargs: constructor options on top of those read from the checkpoint, e.g.
            ``{"tree_sharing": "stage"}``; they must agree with the weights.
        num_classes: a new classifier with this many outputs (0: none), freshly initialised;
            the checkpoint's own classifier is dropped. Default: the checkpoint's.
        overwrite: allow writing into a non-empty ``output_dir``.
    Raises:
        FileNotFoundError, ValueError, RuntimeError with a one-line message for bad input.
    """
    built = build_from_checkpoint(checkpoint, model_name=model_name, use_ema=use_ema,
                                  model_kwargs=model_kwargs, num_classes=num_classes)
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"output {output} is a file; pass a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"output folder {output} is not empty; choose a new folder or overwrite it")
    from timm.models import save_for_hf
    from timm.models._hub import generate_readme

    save_for_hf(built.model, str(output), model_config=built.model_config,
                safe_serialization=True, data_config=built.data_config)
    card = {**built.model_card, "usage": _usage(f"local-dir:{output}")}
    (output / "README.md").write_text(generate_readme(card, output.name), encoding="utf-8")
    return built


def push_to_hub(built: HubExport, repo_id: str, *, private: bool = False,
                commit_message: str = "Add GrootV weights", token: str | None = None) -> Any:
    """Publish an export with timm's ``push_to_hf_hub`` (safetensors only; the model card is
    added when the repository has none). Returns huggingface_hub's commit info."""
    from timm.models import push_to_hf_hub

    return push_to_hf_hub(built.model, repo_id, commit_message=commit_message, token=token,
                          private=private, model_config=built.model_config,
                          model_card={**built.model_card, "usage": _usage(f"hf-hub:{repo_id}")},
                          safe_serialization=True,
                          data_config=built.data_config)


def build_from_checkpoint(checkpoint: str | PathLike, *, model_name: str | None = None,
                          use_ema: bool = False, model_kwargs: Mapping[str, Any] | None = None,
                          num_classes: int | None = None) -> HubExport:
    """The model a checkpoint holds, with its weights loaded, and its hub metadata."""
    import timm

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if num_classes is not None and num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    ckpt = read_checkpoint_file(path)
    state, source = read_state_dict(ckpt, use_ema=use_ema)
    train_cfg = _training_config(ckpt)
    train_model = train_cfg.get("model") or {}
    inferred = grootv_kwargs_from_state(state)
    name = model_name or train_model.get("name") or _matching_variant(inferred)
    if name not in VARIANTS:
        raise ValueError(f"model {name!r} is not a GrootV architecture; use one of {VARIANTS}")
    kwargs = _differing(inferred, _variant_kwargs(name))
    kwargs.update(train_model.get("kwargs") or {})
    kwargs.update(model_kwargs or {})
    for key in _RUNTIME_ONLY:
        kwargs.pop(key, None)
    saved_classes = inferred["num_classes"]
    new_head = num_classes is not None and num_classes != saved_classes
    kwargs["num_classes"] = num_classes if new_head else saved_classes
    kwargs["in_chans"] = inferred["in_chans"]
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} does not accept the options {kwargs}: {exc}") from exc
    try:
        load_checkpoint(model, state, strict=True, reset_classifier=new_head)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        raise RuntimeError(f"the weights of {path} do not fit {name} with {kwargs}: "
                           + "; ".join(line.strip() for line in first[1:3])) from None
    model.eval()
    model_config: dict[str, Any] = {}
    classes = ckpt.get("classes") if train_cfg else None
    if classes and not new_head and len(classes) == saved_classes:
        model_config["label_names"] = [str(c) for c in classes]
    card = _model_card(name, kwargs, path, source, use_ema, train_cfg, new_head)
    return HubExport(model, name, {k: v for k, v in kwargs.items()}, model_config,
                     _data_config(train_cfg, kwargs["in_chans"]), card, source)


def _training_config(ckpt: Mapping[str, Any]) -> Mapping[str, Any]:
    """The run config a ``grootvl train`` snapshot carries (its ``config`` entry, with a
    ``model`` section); ``{}`` for release checkpoints and bare state dicts."""
    config = ckpt.get("config")
    if isinstance(config, dict) and isinstance(config.get("model"), Mapping):
        return config
    return {}


@functools.lru_cache(maxsize=None)
def _variant_kwargs(name: str) -> dict[str, Any]:
    """The state-dict-visible arguments of a registered variant (built on the meta device;
    callers must not modify the result)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return grootv_kwargs_from_state(model.state_dict())


def _matching_variant(inferred: Mapping[str, Any]) -> str:
    for name in VARIANTS:
        ref = _variant_kwargs(name)
        if (ref["channels"], ref["depths"]) == (inferred["channels"], inferred["depths"]):
            return name
    return VARIANTS[0]  # another size: the tiny variant with explicit channels and depths


def _differing(inferred: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in inferred.items()
            if k in ("num_classes", "in_chans") or reference.get(k) != v}


def _data_config(train_cfg: Mapping[str, Any], in_chans: int) -> dict[str, Any] | None:
    """The preprocessing a ``grootvl train`` run used, for ``pretrained_cfg``."""
    data = train_cfg.get("data") or {}
    if not data.get("img_size"):
        return None
    size = int(data["img_size"])
    config: dict[str, Any] = {"input_size": (in_chans, size, size)}
    for key in ("mean", "std", "crop_pct", "interpolation"):
        if data.get(key) is not None:
            config[key] = tuple(data[key]) if isinstance(data[key], list) else data[key]
    return config


def _usage(location: str) -> str:
    return ("The architecture is registered with timm by the `grootvl` package "
            "(`pip install grootvl`), so import it first:\n\n```python\nimport grootvl  # "
            "registers grootv_* with timm\nimport timm\n\nmodel = timm.create_model("
            f"\"{location}\", pretrained=True).eval()\n```\n")


def _model_card(name: str, kwargs: Mapping[str, Any], path: Path, source: str, use_ema: bool,
                train_cfg: Mapping[str, Any], new_head: bool) -> dict[str, Any]:
    weights = "The EMA weights" if use_ema else "The weights"
    origin = (f"a `grootvl train` run ({path.name})" if train_cfg
              else f"the file {path.name}" + (f" (entry `{source}`)" if source else ""))
    description = (f"GrootV ({name}) image classifier: a tree-topology state space model "
                   f"(GrootVL, arXiv:2406.02395). {weights} exported from {origin}"
                   + (", with a new, untrained classifier." if new_head else "."))
    options = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    details = {"Model Type": "Image classification / feature backbone",
               "Architecture": f"{name} ({options})",
               "Papers": "GrootVL: Tree Topology is All You Need in State Space Model "
                         "(arXiv:2406.02395)"}
    # the released GrootV weights are MIT-licensed; a training run's are its author's to license
    return {"description": description, "details": details,
            "license": "other" if train_cfg else "mit",
            "tags": ["image-classification", "timm", "grootvl"]}
