"""A command line generated from a typed config: one dataclass -> argparse flags, a YAML file, overrides.

Fields become flags (``batch_size: int = 64`` -> ``--batch-size N``, help ending "(default: 64)";
``progress: bool = True`` -> ``--no-progress``; ``Literal`` -> choices; ``list[X]`` -> several values),
their help and spelling declared beside the field with :func:`mpt.config.option`. Each command also
takes ``--config FILE.yaml`` and ``key=value`` overrides; flags win over overrides, overrides over the
file; :func:`mpt.config.from_dict` checks the merged mapping. Not tyro or jsonargparse: the flag
spellings users type (``--no-progress``, repeated ``--stop``) and ``a.b=c`` overrides would need
annotations of their own, and both import far more than argparse where ``--help`` must be instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from .config import Flag, apply_overrides, from_dict, load_yaml

__all__ = ["Command", "Flag", "add_config_arguments", "build_config", "resolve", "split_overrides"]


@dataclass
class Command:
    """One ``mpt`` command: its config class and function, both as "module:name" so --help imports neither."""

    name: str                    # "eval"; "tokenizer train" for a subcommand of a group
    config: str                  # "mpt.eval.command:EvalRunConfig"
    run: str                     # "mpt.eval.command:run_eval"; returns an exit code or anything (-> 0)
    help: str
    description: str = ""
    epilog: str | None = None


def resolve(spec: str) -> Any:
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _plain(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _flag(f: dataclasses.Field) -> Flag:
    return f.metadata.get("flag") or Flag()


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argument per init field of ``cls``; defaults stay in the dataclass (argparse stores only what is given)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        spec = _flag(f)
        tp, _ = _plain(hints[f.name])
        origin = typing.get_origin(tp)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        shown = default not in (None, True, False, [], "") and "default" not in spec.help
        note = f" (default: {' '.join(map(str, default)) if isinstance(default, list) else default})" if shown else ""
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": (spec.help + note).strip() or None}
        if spec.metavar:
            kw["metavar"] = spec.metavar
        if typing.get_origin(tp) is typing.Literal or spec.choices:
            kw["choices"] = spec.choices or typing.get_args(tp)
        if dataclasses.is_dataclass(tp) or origin is dict:
            continue  # nested sections: through --config and key=value overrides
        if tp is bool:
            on = default is not True
            kw["action"] = "store_true" if on else "store_false"
            names = spec.names or (f"--{'' if on else 'no-'}{f.name.replace('_', '-')}",)
            parser.add_argument(*names, dest=f.name, **kw)
            continue
        if origin in (list, tuple):
            (item,) = typing.get_args(tp)[:1] or (str,)
            kw["type"] = item
            if spec.repeat:
                kw["action"] = "append"
            else:
                kw["nargs"] = "*" if spec.positional and default is not None else "+"
        elif tp in (int, float):
            kw["type"] = tp
        if spec.positional:
            if "nargs" not in kw:
                kw["nargs"] = "?"  # required ones may come from --config; checked after merging
            kw["metavar"] = spec.metavar or f.name
            parser.add_argument(f.name, **kw)
        else:
            parser.add_argument(*(spec.names or (f"--{f.name.replace('_', '-')}",)), dest=f.name, **kw)
    parser.add_argument("--config", dest="_config", default=None, metavar="FILE.yaml",
                        help="read the options from this YAML file (flags and KEY=VALUE overrides win)")
    parser.set_defaults(_required=[f.name for f in dataclasses.fields(cls) if _flag(f).required])


def split_overrides(argv: list[str], cls: type, parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """Pull ``key=value`` tokens naming a field of ``cls`` out of ``argv`` (not values of a preceding flag)."""
    names = {f.name for f in dataclasses.fields(cls)}
    takes_value = {s for a in parser._actions for s in a.option_strings if a.nargs != 0}
    rest, overrides, after_flag = [], [], False
    for token in argv:
        key = token.split("=", 1)[0].split(".")[0]
        if not after_flag and "=" in token and not token.startswith("-") and key in names:
            overrides.append(token)
        else:
            rest.append(token)
        after_flag = token in takes_value
    return rest, overrides


def build_config(cls: type, args: argparse.Namespace, overrides: list[str], parser: argparse.ArgumentParser):
    """YAML file (``--config``), then overrides, then the flags given: one checked config."""
    data = load_yaml(args._config) if args._config else {}
    apply_overrides(data, overrides)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    data.update(given)
    needed = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
              and f.default_factory is dataclasses.MISSING]
    missing = [n for n in needed if n not in data] + [n for n in args._required if not data.get(n)]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (or give them in --config)")
    return from_dict(cls, data, validate=False)
