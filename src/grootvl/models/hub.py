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
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..errors import UserError, shown
from ..files import CheckpointError, first_line, read_checkpoint
from .factory import check_model_options, create_model, resolve_variant
from .weights import fit_weights, grootv_depths, state_dict_of

__all__ = ["HubExport", "build_from_checkpoint", "check_output_folder", "export_for_hub",
           "grootv_kwargs_from_state", "push_to_hub"]

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
    depth_list = grootv_depths(state)
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
        :class:`~grootvl.errors.UserError`, one line naming the file or the option, for bad
        input: :class:`~grootvl.files.CheckpointError` (also a ``ValueError``) for a checkpoint
        that cannot be read, holds no GrootV weights or weights that do not fit the options.
    """
    output = check_output_folder(output_dir, overwrite)
    built = build_from_checkpoint(checkpoint, model_name=model_name, use_ema=use_ema,
                                  model_kwargs=model_kwargs, num_classes=num_classes)
    from timm.models import save_for_hf
    from timm.models._hub import generate_readme

    card = {**built.model_card, "usage": _usage(f"local-dir:{output}")}
    try:
        save_for_hf(built.model, str(output), model_config=built.model_config,
                    safe_serialization=True, data_config=built.data_config)
        (output / "README.md").write_text(generate_readme(card, output.name), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"output folder {output} cannot be written ({first_line(exc)})") from None
    return built


def check_output_folder(output_dir: str | PathLike, overwrite: bool = False,
                        what: str = "output folder", fix: str = "overwrite=True") -> Path:
    """``output_dir`` as a folder an export may write: a :class:`~grootvl.errors.UserError`
    naming it as ``what`` if it is a file, or a non-empty folder without ``overwrite``
    (``fix`` says how to allow that)."""
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise UserError(f"{what} {output} is a file; pass a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise UserError(f"{what} {output} is not empty; choose a new or empty folder, or pass "
                        f"{fix} to write into it")
    return output


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
    """The model a checkpoint holds, with its weights loaded, and its hub metadata (the
    arguments and errors of :func:`export_for_hub`)."""
    path = Path(checkpoint)
    where = f"checkpoint {path}"
    if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 0):
        raise UserError(f"num_classes must be an integer >= 0 (0: no classifier), got "
                        f"{shown(num_classes)}")
    ckpt = read_checkpoint(path)
    state, source = state_dict_of(ckpt, use_ema, where)
    try:
        inferred = grootv_kwargs_from_state(state)
    except ValueError as exc:
        raise CheckpointError(f"{where} holds no GrootV weights ({exc})") from None
    train_cfg = _training_config(ckpt)
    saved_name, saved_kwargs = _saved_model(train_cfg, where)
    name = resolve_variant(model_name or saved_name or _matching_variant(inferred))
    if name not in VARIANTS:
        raise UserError(f"model {name!r} is not a GrootV architecture; use one of "
                        f"{', '.join(VARIANTS)}")
    kwargs = _differing(inferred, _variant_kwargs(name))
    kwargs.update(saved_kwargs)
    kwargs.update(model_kwargs or {})
    for key in (*_RUNTIME_ONLY, "num_classes", "in_chans"):
        kwargs.pop(key, None)
    saved_classes = inferred["num_classes"]
    new_head = num_classes is not None and num_classes != saved_classes
    kwargs = {"num_classes": num_classes if new_head else saved_classes,
              "in_chans": inferred["in_chans"], **kwargs}
    options = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    # a refused option names where options come from (create_model's message is the run config's)
    check_model_options(name, kwargs, "--set / model_kwargs, or the checkpoint's model.kwargs")
    model = create_model(name, **kwargs)
    fit_weights(model, ckpt, where, use_ema, f"{name} ({options})", new_classifier=new_head)
    model.eval()
    model_config: dict[str, Any] = {}
    classes = ckpt.get("classes") if train_cfg else None
    if classes is not None and not (isinstance(classes, list)
                                    and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{where}: its 'classes' entry is {shown(classes)}, not a list of "
                              "class names; the snapshot is damaged")
    if classes and not new_head and len(classes) == saved_classes:
        model_config["label_names"] = list(classes)
    card = _model_card(name, options, path, source, use_ema, train_cfg, new_head)
    return HubExport(model, name, kwargs, model_config,
                     _data_config(train_cfg, kwargs["in_chans"], where), card, source)


def _training_config(ckpt: Mapping[str, Any]) -> Mapping[str, Any]:
    """The run config a ``grootvl train`` snapshot carries (its ``config`` entry, with a
    ``model`` section); ``{}`` for release checkpoints and bare state dicts."""
    config = ckpt.get("config") if isinstance(ckpt, Mapping) else None
    if isinstance(config, dict) and isinstance(config.get("model"), Mapping):
        return config
    return {}


def _saved_model(train_cfg: Mapping[str, Any], where: str) -> tuple[str | None, dict[str, Any]]:
    """``(model.name, model.kwargs)`` of a training config (``(None, {})`` without one)."""
    model = train_cfg.get("model") or {}
    name, kwargs = model.get("name"), model.get("kwargs") or {}
    if (name is not None and not isinstance(name, str)) or not isinstance(kwargs, Mapping):
        raise CheckpointError(f"{where}: its saved config's model.name / model.kwargs are "
                              f"{shown(name)} / {shown(kwargs)}, not a name and a mapping; the "
                              "snapshot is damaged (pass --model and --set, or use another one)")
    return name, dict(kwargs)


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


def _data_config(train_cfg: Mapping[str, Any], in_chans: int, where: str) -> dict[str, Any] | None:
    """The preprocessing a ``grootvl train`` run used, for ``pretrained_cfg``."""
    data = train_cfg.get("data") or {}
    if not isinstance(data, Mapping) or not data.get("img_size"):
        return None
    checks = {"img_size": lambda v: isinstance(v, int) and 0 < v <= 8192,
              "mean": _numbers, "std": _numbers, "crop_pct": lambda v: _number(v) and 0 < v <= 1,
              "interpolation": lambda v: isinstance(v, str)}
    for key, fits in checks.items():
        if data.get(key) is not None and (isinstance(data[key], bool) or not fits(data[key])):
            raise CheckpointError(f"{where}: its saved config's data.{key} is "
                                  f"{shown(data[key])}; the snapshot is damaged")
    size = data["img_size"]
    config: dict[str, Any] = {"input_size": (in_chans, size, size)}
    for key in ("mean", "std", "crop_pct", "interpolation"):
        if data.get(key) is not None:
            config[key] = tuple(data[key]) if isinstance(data[key], list) else data[key]
    return config


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and len(value) in (1, 3) and all(map(_number, value))


def _usage(location: str) -> str:
    return ("The architecture is registered with timm by the `grootvl` package "
            "(`pip install grootvl`), so import it first:\n\n```python\nimport grootvl  # "
            "registers grootv_* with timm\nimport timm\n\nmodel = timm.create_model("
            f"\"{location}\", pretrained=True).eval()\n```\n")


def _model_card(name: str, options: str, path: Path, source: str, use_ema: bool,
                train_cfg: Mapping[str, Any], new_head: bool) -> dict[str, Any]:
    weights = "The EMA weights" if use_ema else "The weights"
    origin = (f"a `grootvl train` run ({path.name})" if train_cfg
              else f"the file {path.name}" + (f" (entry `{source}`)" if source else ""))
    description = (f"GrootV ({name}) image classifier: a tree-topology state space model "
                   f"(GrootVL, arXiv:2406.02395). {weights} exported from {origin}"
                   + (", with a new, untrained classifier." if new_head else "."))
    details = {"Model Type": "Image classification / feature backbone",
               "Architecture": f"{name} ({options})",
               "Papers": "GrootVL: Tree Topology is All You Need in State Space Model "
                         "(arXiv:2406.02395)"}
    # the released GrootV weights are MIT-licensed; a training run's are its author's to license
    return {"description": description, "details": details,
            "license": "other" if train_cfg else "mit",
            "tags": ["image-classification", "timm", "grootvl"]}
