"""Typed run configs: YAML -> nested dataclasses, ``a.b=c`` overrides, errors that name the key path.

A recipe is plain YAML; each section maps to a dataclass. Unknown keys, wrong types and missing
required keys are reported with their full path (``optimizer.lr``) before any work starts.
We write this small loader instead of using OmegaConf/Hydra (what LLM Foundry uses) because
those return untyped ``DictConfig`` objects and add their own interpolation language; dataclasses
with a 60-line converter give types, defaults and readable errors with no dependency.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


@dataclass(frozen=True)
class Flag:
    """How one config field appears on the command line; fields with no Flag get the defaults."""

    help: str = ""
    positional: bool = False
    names: tuple[str, ...] = ()  # spellings other than --field-name (e.g. "--no-progress")
    repeat: bool = False         # a list given as --flag A --flag B
    choices: tuple | None = None
    metavar: str | None = None
    required: bool = False       # for a field whose default means "not given" (ServeConfig.model = "")


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
           **flag: Any) -> Any:
    """A config field with its command-line help (and flag spelling, :class:`Flag`) declared beside it."""
    meta = {"flag": Flag(help, **flag)}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class ConfigError(ValueError):
    """A recipe key has a value that cannot be used; the message names the key path."""


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError:
                pass
        raise ConfigError(f"`{path}` = {value!r}: expected {' or '.join(_type_name(a) for a in args)}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"`{path}` = {value!r}: allowed values are {', '.join(map(repr, allowed))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"`{path}` = {value!r}: expected a mapping of {tp.__name__} fields")
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{path}` = {value!r}: expected a list")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"`{path}` = {value!r}: expected a mapping")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads 6e-4 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"`{path}` = {value!r}: expected {tp.__name__}, got {type(value).__name__}")
        return value
    return value


def from_dict(cls: type[T], data: dict, path: str = "", validate: bool = True) -> T:
    """Build dataclass ``cls`` from ``data``; nested dataclasses, lists, unions and literals checked.

    ``validate=False`` leaves the top level's own ``validate()`` to the function that runs the config
    (command configs whose check needs a loaded model, or takes no key path).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"unknown key `{key}`; known keys{' in `' + path + '`' if path else ''}: "
                          f"{', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key `{key}`")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None) if validate else None
    if check is not None:  # sections of a recipe take their key path; other configs name their own fields
        check(path) if inspect.signature(check).parameters else check()
    return obj


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``["optimizer.lr=1e-3", "train.precision=bf16"]`` -> nested dict updates (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. optimizer.lr=1e-3)")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: `{part}` is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def optional_fields(cls: type, name: str) -> type:
    """A dataclass with ``cls``'s fields, each ``T | None = None`` (nested dataclasses likewise).

    For a section that overrides another declaration field by field: None keeps that one's value,
    and the types and allowed values stay those of ``cls``.
    """
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            inner = optional_fields(tp, f"{name}_{f.name}")
            specs.append((f.name, inner, dataclasses.field(default_factory=inner)))
        else:
            specs.append((f.name, tp | None, None))
    return dataclasses.make_dataclass(name, specs)


def set_fields(obj: Any) -> dict:
    """The fields of an ``optional_fields`` instance that are not None (nested sections as dicts of theirs)."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = set_fields(value) or None
        if value is not None:
            out[f.name] = value
    return out
