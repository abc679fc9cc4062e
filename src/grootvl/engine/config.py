"""Typed run configs: a pydantic schema, filled from YAML files, ``--set`` overrides and flags.

The schema (a :class:`ConfigSection` subclass, e.g. ``grootvl.tasks.RunConfig``) holds every
key with its type, range, default and description; nothing else defines a default. Values are
applied in layers, each remembered with where it came from:

    schema defaults <- config file (and its ``base`` chain) <- ``--set KEY=VALUE`` <- flags

A config file is YAML; it may name a ``base`` config (a packaged name or a path, relative to
the file) whose values it overrides. ``--set`` takes dotted keys, ``optim.base_lr=1e-3``, with
YAML values (``true``, ``[0.9, 0.99]``, ``null``). The result is validated once: any unknown
key (with the closest valid ones), wrong type or value out of range is a one-line
:class:`~grootvl.errors.UserError` naming the key, the value, what is allowed and where the
value came from. Configs read back from snapshots go through the same schema
(:func:`config_from_dict`).
"""
from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, field_validator

from ..errors import UserError, shown

__all__ = ["ConfigSection", "build_config", "config_from_dict", "dump_config", "load_config_file",
           "packaged_config_names", "parse_override", "validate_values"]

M = TypeVar("M", bound="ConfigSection")
DEFAULT = "the default"


class ConfigSection(BaseModel):
    """Base of every config section: unknown keys are errors, values are frozen after
    validation, defaults are validated like given values, floats must be finite, and a
    boolean is no number (pydantic alone reads ``true`` as 1 for an int field)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True,
                              allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value, info):
        annotation = cls.model_fields[info.field_name].annotation
        if _holds_bool(value) and _numeric(annotation):
            raise ValueError("a boolean is not a number here; give a number")
        return value


def _holds_bool(value) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value)


def _numeric(annotation) -> bool:
    """Whether a field of type ``annotation`` holds numbers (int, float, a numeric literal,
    or a tuple of them) and no boolean: pydantic would read ``true`` there as 1."""
    if annotation in (int, float):
        return True
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis and a is not type(None)]
    if origin is typing.Annotated:
        return _numeric(args[0])
    if origin is typing.Literal:
        return all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    if origin in (typing.Union, types.UnionType, tuple, list):
        return bool(args) and all(_numeric(a) for a in args)
    return False


# ------------------------------------------------------------------------------ files

def packaged_config_names(package: str) -> list[str]:
    """Names accepted by ``--config`` without a path: the YAML files in ``package``."""
    root = resources.files(package)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line saying where and why YAML parsing failed (PyYAML's own runs over lines)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    return f"{where}{problem}" + (f" ({context})" if context else "")


def _read_yaml(text: str, origin: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{origin} is not valid YAML: {yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{origin} must be a mapping of sections, got {type(data).__name__}")
    return data


def _locate(name_or_path: str, package: str, relative_to: Path | None) -> tuple[str, str, Path | None]:
    """(text, origin, folder) of a config given as packaged name or file path."""
    candidates = [Path(name_or_path)]
    if relative_to is not None:
        candidates.insert(0, relative_to / name_or_path)
    for path in candidates:
        if path.is_file():
            try:
                return path.read_text(encoding="utf-8"), f"config {path}", path.parent
            except UnicodeDecodeError:
                raise UserError(f"config {path} is not a YAML text file (it is binary: a "
                                "checkpoint?); pass a YAML config") from None
            except OSError as exc:
                raise UserError(f"config {path} cannot be read ({exc.strerror or exc})") from None
    stem = name_or_path[:-5] if name_or_path.endswith(".yaml") else name_or_path
    res = resources.files(package) / f"{stem}.yaml"
    if res.is_file():
        return res.read_text(), f"config {stem}", None
    raise UserError(f"--config {name_or_path}: no such file, and not a packaged config "
                    f"(packaged: {', '.join(packaged_config_names(package))})")


def _config_chain(name_or_path: str, package: str, relative_to: Path | None = None,
                  seen: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """``[(origin, values), ...]`` from the root of the ``base`` chain to ``name_or_path``."""
    if name_or_path in seen:
        raise UserError(f"config base chain loops: {' -> '.join((*seen, name_or_path))}")
    text, origin, folder = _locate(name_or_path, package, relative_to)
    data = _read_yaml(text, origin)
    base = data.pop("base", None)
    if base is not None and (not isinstance(base, str) or not base.strip()):
        raise UserError(f"base = {shown(base)} (from {origin}): must be the name of a packaged "
                        "config or the path of a YAML file")
    chain = _config_chain(base, package, folder, (*seen, name_or_path)) if base else []
    return [*chain, (origin, data)]


def load_config_file(name_or_path: str, package: str) -> dict:
    """A config file's values with its ``base`` chain merged in (``base`` key removed)."""
    merged: dict = {}
    for _, data in _config_chain(name_or_path, package):
        _merge(merged, data, {}, "")
    return merged


# -------------------------------------------------------------------------- overrides

def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=1e-3"`` -> ``("a.b", 0.001)`` (value parsed as YAML)."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.base_lr=1e-3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {text!r}: {key!r} is not a config key; expected KEY=VALUE, e.g. "
                        "--set optim.base_lr=1e-3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UserError(f"--set {text!r}: the value is not valid YAML "
                        f"({yaml_problem(exc)})") from None
    # YAML 1.1 reads "5e-4" (no dot) as a string; users mean a number.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return key, value


def _merge(target: dict, update: Mapping, origins: dict[str, str], origin: str,
           prefix: str = "") -> None:
    """Apply ``update`` to ``target`` recursively, recording ``origin`` for each key set."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(target.get(key), dict) and value:
            _merge(target[key], value, origins, origin, dotted + ".")
        else:
            target[key] = copy.deepcopy(value)
            origins[dotted] = origin


def _not_a_section(key: str, value: Any, origins: dict[str, str]) -> None:
    origin = _printable(origins.get(key, DEFAULT))
    raise UserError(f"{key} = {shown(value)} (from {origin}): must be a mapping of keys (a "
                    f"config section); got {type(value).__name__}")


def _set_dotted(target: dict, key: str, value: Any, origins: dict[str, str], origin: str) -> None:
    """Set one dotted key; a section on its path that an earlier layer set to something else
    than a mapping (``data: 5`` in a file, then ``--data DIR``) is reported, not replaced."""
    *parents, leaf = key.split(".")
    node = target
    for depth, part in enumerate(parents):
        if node.get(part) is None:
            node[part] = {}
        elif not isinstance(node[part], dict):
            _not_a_section(".".join(parents[: depth + 1]), node[part], origins)
        node = node[part]
    _merge(node, {leaf: value}, origins, origin, key[: -len(leaf)])


# ------------------------------------------------------------------------- validation

def build_config(schema: type[M], config: str | None = None, overrides: Iterable[str] = (),
                 flags: Mapping[str, tuple[Any, str]] | None = None, *,
                 package: str, base: Mapping[str, Any] | None = None,
                 base_origin: str = "") -> M:
    """Schema defaults <- ``base`` <- config file (and its bases) <- ``--set`` <- ``flags``.

    ``flags`` maps dotted keys to ``(value, flag name)`` from dedicated command-line options;
    a None value means the flag was not given. ``package`` holds the packaged YAML configs.
    ``base`` (e.g. a snapshot's saved config) comes under everything else.
    """
    values: dict = {}
    origins: dict[str, str] = {}
    if base:
        _merge(values, base, origins, base_origin)
    if config:
        for origin, data in _config_chain(config, package):
            _merge(values, data, origins, origin)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(values, key, value, origins, f"--set {text}")
    for key, (value, flag) in (flags or {}).items():
        if value is not None:
            _set_dotted(values, key, value, origins, flag)
    return _validate(schema, values, origins)


def config_from_dict(schema: type[M], data: Mapping[str, Any], origin: str) -> M:
    """Validate a config read back from somewhere (e.g. ``origin="checkpoint run/last.pth"``)."""
    if not isinstance(data, Mapping):
        raise UserError(f"{origin}: its config is a {type(data).__name__}, not a mapping of "
                        "sections")
    origins: dict[str, str] = {}
    values: dict = {}
    _merge(values, data, origins, origin)
    return _validate(schema, values, origins)


def validate_values(schema: type[M], values: Mapping[str, tuple[Any, str]]) -> M:
    """``schema`` (e.g. a command's options) from ``{field: (value, where it came from)}``;
    fields whose value is None keep their default. Errors as :func:`build_config`'s."""
    given = {key: value for key, (value, _) in values.items() if value is not None}
    return _validate(schema, given, {key: origin for key, (_, origin) in values.items()})


def _validate(schema: type[M], values: dict, origins: dict[str, str]) -> M:
    try:
        return schema.model_validate(values)
    except pydantic.ValidationError as exc:
        problems = [_describe(error, schema, origins) for error in exc.errors()]
        # one line whatever the values hold: control characters are shown escaped
        message = re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], "; ".join(problems))
        raise UserError(message) from None


def _origin(parts: list[str], origins: dict[str, str]) -> str:
    """Where the value at ``parts`` came from: the layer that set it or a section above it,
    else the layers that set keys below it (a whole-section check), else the default."""
    for end in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:end]))
        if found:
            return _printable(found)
    prefix = ".".join(parts) + "."
    below = sorted({_printable(origin) for key, origin in origins.items()
                    if key.startswith(prefix)})
    return ", ".join(below) if below else DEFAULT


def _printable(text: str) -> str:
    """``text`` as it may appear in a one-line message (quoted if it holds line breaks...)."""
    return text if text.isprintable() else repr(text)


def _describe(error: dict, schema: type[BaseModel], origins: dict[str, str]) -> str:
    """One readable sentence for one pydantic error: key, value, what is allowed, origin."""
    parts = [str(p) for p in error["loc"] if not str(p).startswith("function-")]
    if error["type"] == "missing" and parts and parts[-1].isdigit():  # a tuple too short
        index = parts.pop()
        error = {**error, "msg": f"too few values (no item {index})"}
    key = ".".join(parts)
    origin = _origin(parts, origins)
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, _leaf_keys(schema), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"{origin}: unknown config key {key!r}{hint}"
    message = error["msg"].removeprefix("Value error, ")  # a schema validator's own words
    message = message[0].lower() + message[1:]
    if isinstance(error.get("input"), Mapping):
        return f"{key or 'config'}: {message} (from {origin})"  # a check of a whole section
    return f"{key} = {shown(error['input'])} (from {origin}): {message}"


def _leaf_keys(schema: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in schema.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys.extend(_leaf_keys(sub, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


# ------------------------------------------------------------------------------ output

def dump_config(cfg: BaseModel) -> str:
    """YAML of every key, each with its description as a comment; reads back to ``cfg``."""
    lines: list[str] = []
    _dump(type(cfg), cfg.model_dump(mode="json"), lines, 0)
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("\n...").strip()


def _dump(schema: type[BaseModel], values: dict, lines: list[str], indent: int) -> None:
    pad = " " * indent
    for name, field in schema.model_fields.items():
        comment = f"  # {field.description}" if field.description else ""
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            if indent == 0 and lines:
                lines.append("")
            lines.append(f"{pad}{name}:{comment}")
            _dump(sub, values[name], lines, indent + 2)
        else:
            lines.append(f"{pad}{name}: {_scalar(values[name])}{comment}")
