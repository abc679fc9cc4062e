"""YAML run configs: packaged or user files, ``base:`` inheritance and ``key=value`` overrides.

A config is a nested dict of sections (``model``, ``data``, ``optim``...). A file may name a
``base`` config (packaged name or path, relative to the file) whose values it overrides.
Overrides use dotted keys: ``optim.base_lr=1e-3``; values are parsed as YAML
(``true``, ``[0.9, 0.99]``, ``null``). Keys must already exist in the schema (the
defaults), so a typo is an error naming the closest valid keys rather than a silent no-op.
"""
from __future__ import annotations

import copy
import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import UserError

PACKAGED_CONFIGS = "grootvl.configs"


def packaged_config_names() -> list[str]:
    """Names accepted by ``--config`` without a path (e.g. ``grootv_tiny``)."""
    root = resources.files(PACKAGED_CONFIGS)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, origin: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config {origin} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"config {origin} must be a mapping of sections, got {type(data).__name__}")
    return data


def _locate(name_or_path: str, relative_to: Path | None = None) -> tuple[str, Path | None]:
    """Text and folder of a config given as packaged name or file path."""
    candidates = [Path(name_or_path)]
    if relative_to is not None:
        candidates.insert(0, relative_to / name_or_path)
    for path in candidates:
        if path.is_file():
            return path.read_text(), path.parent
    stem = name_or_path[:-5] if name_or_path.endswith(".yaml") else name_or_path
    res = resources.files(PACKAGED_CONFIGS) / f"{stem}.yaml"
    if res.is_file():
        return res.read_text(), None
    raise UserError(f"--config {name_or_path}: no such file, and not a packaged config "
                    f"(packaged: {', '.join(packaged_config_names())})")


def deep_merge(base: dict, update: dict) -> dict:
    """``base`` with ``update`` applied recursively (new dict; inputs untouched)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config_file(name_or_path: str, _relative_to: Path | None = None, _seen=()) -> dict:
    """A config with its ``base`` chain resolved (``base`` key removed)."""
    if name_or_path in _seen:
        raise UserError(f"config base chain loops: {' -> '.join((*_seen, name_or_path))}")
    text, folder = _locate(name_or_path, _relative_to)
    data = _read_yaml(text, name_or_path)
    base = data.pop("base", None)
    if base:
        parent = load_config_file(base, folder, (*_seen, name_or_path))
        data = deep_merge(parent, data)
    return data


def _flat_keys(cfg: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            keys.extend(_flat_keys(v, full + "."))
        else:
            keys.append(full)
    return keys


def check_keys(cfg: dict, schema: dict, origin: str) -> None:
    """Every key of ``cfg`` must exist in ``schema`` (free-form dict values excepted)."""
    valid = set(_flat_keys(schema))
    sections = {k.rsplit(".", 1)[0] for k in valid if "." in k}
    for key in _flat_keys(cfg):
        if key in valid or any(key.startswith(v + ".") and _is_free_form(schema, v) for v in valid):
            continue
        if key in sections:
            continue
        close = difflib.get_close_matches(key, sorted(valid), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise UserError(f"{origin}: unknown config key {key!r}{hint}")


def _is_free_form(schema: dict, dotted: str) -> bool:
    """A key whose default is an empty dict (e.g. ``model.kwargs``) takes any sub-keys."""
    node: Any = schema
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return isinstance(node, dict) and not node


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=1e-3"`` -> ``("a.b", 0.001)`` (value parsed as YAML)."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.base_lr=1e-3")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UserError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
    # YAML 1.1 reads "5e-4" (no dot) as a string; users mean a number.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return key, value


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def get_dotted(cfg: dict, key: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def build_config(schema: dict, config: str | None, overrides: Iterable[str] = (),
                 explicit: dict[str, Any] | None = None) -> dict:
    """Schema defaults <- config file (and its bases) <- ``--set`` overrides <- explicit flags.

    ``explicit`` maps dotted keys to values from dedicated command-line flags (None = unset).
    """
    cfg = copy.deepcopy(schema)
    if config:
        data = load_config_file(config)
        check_keys(data, schema, f"config {config}")
        cfg = deep_merge(cfg, data)
    for text in overrides:
        key, value = parse_override(text)
        check_keys(_nest(key, value), schema, f"--set {text}")
        set_dotted(cfg, key, value)
    for key, value in (explicit or {}).items():
        if value is not None:
            set_dotted(cfg, key, value)
    return cfg


def _nest(key: str, value: Any) -> dict:
    out: dict = {}
    set_dotted(out, key, value)
    return out


def dump_config(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
