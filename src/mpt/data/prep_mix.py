"""`mpt prep --mix`: prepare every source of a data-mix recipe and write the mix `mpt train` streams.

A recipe (``configs/data/*.yaml``, by name or path) names its sources, each with its share of the
training tokens, its input paths and its ``mpt prep`` options (the flags' field names: ``mc4``,
``lang``, ``min_words``...). :func:`load_mix` checks it all before any work; :func:`run_mix` preps
each source into ``OUT/<source>/`` in turn (each folder resumable as a plain prep is), then writes
``OUT/mix.yaml``, the value of a training recipe's ``data.sources``, and ``OUT/mix-summary.json``.
With ``allow_missing`` a source whose inputs match nothing is skipped and the others' shares are
renormalised to sum to 1.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, from_dict, load_yaml
from ..storage import write_atomic
from .readers import DataInputError, expand_inputs

MIX_FILE = "mix.yaml"
MIX_SUMMARY_FILE = "mix-summary.json"
TOLERANCE = 1e-6
# Set by the mix itself: one source's inputs and its folder under --out.
_RESERVED = ("inputs", "out", "mix", "allow_missing")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class MixError(ValueError):
    """A mix recipe that cannot run; the message names the file and the key."""


@dataclass
class MixSource:
    proportion: float                                     # share of the training samples (tokens, in concat mode)
    inputs: list[str]                                     # files, folders, globs, hf:NAME, as `mpt prep` takes
    prep: dict[str, Any] = field(default_factory=dict)    # `mpt prep` options for this source, over the shared ones


@dataclass
class MixRecipe:
    sources: dict[str, MixSource]
    prep: dict[str, Any] = field(default_factory=dict)    # `mpt prep` options every source gets
    where: str = field(default="", init=False)            # the file it was read from (for messages)

    def options(self, name: str) -> dict[str, Any]:
        return {**self.prep, **self.sources[name].prep}


def mix_names() -> list[str]:
    folder = resources.files("mpt") / "configs" / "data"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_mix(name_or_path: str) -> MixRecipe:
    """A shipped recipe's name (``mpt-7b-mix``) or a YAML file, checked: keys, names, proportions, prep options."""
    path = Path(name_or_path)
    if not path.suffix:
        if name_or_path not in mix_names():
            raise MixError(f"unknown data mix {name_or_path!r}; shipped mixes: {', '.join(mix_names())} "
                           "(or give a YAML file)")
        where = f"configs/data/{name_or_path}.yaml"
        data = yaml.safe_load((resources.files("mpt") / "configs" / "data" / f"{name_or_path}.yaml").read_text())
    else:
        where, data = str(path), load_yaml(path)
    try:
        recipe = from_dict(MixRecipe, data)
        if not isinstance(recipe.sources, dict):
            raise ConfigError(f"`sources` = {recipe.sources!r}: expected a mapping of source name -> source")
        # the loader leaves a mapping's values as they are: each source is checked here, with its key path
        for n, s in recipe.sources.items():
            if not isinstance(s, dict):
                raise ConfigError(f"`sources.{n}` = {s!r}: expected a mapping of proportion, inputs and prep")
        recipe.sources = {str(n): from_dict(MixSource, s, f"sources.{n}") for n, s in recipe.sources.items()}
    except ConfigError as err:
        raise MixError(f"{where}: {err}") from None
    recipe.where = where
    _check(recipe)
    return recipe


def _check(recipe: MixRecipe) -> None:
    where = recipe.where
    if not recipe.sources:
        raise MixError(f"{where}: `sources` is empty; a mix needs at least one source")
    for key in recipe.prep:
        if key in _RESERVED:
            raise MixError(f"{where}: `prep.{key}` is set by the mix for each source; give it per source")
    for name, src in recipe.sources.items():
        if not _NAME.match(str(name)):
            raise MixError(f"{where}: source name `sources.{name}` must be letters, digits, '.', '_' or '-' "
                           "(it names the source's folder)")
        if not src.proportion > 0:
            raise MixError(f"{where}: `sources.{name}.proportion` = {src.proportion} must be > 0")
        if not src.inputs:
            raise MixError(f"{where}: `sources.{name}.inputs` is empty; give the source's files, folders or globs")
        for key in src.prep:
            if key in _RESERVED:
                raise MixError(f"{where}: `sources.{name}.prep.{key}` is set by the mix; use `sources.{name}.inputs`")
        _prep_command(recipe, name, "unused", check_model=False)   # unknown or invalid options: before any work
    total = sum(s.proportion for s in recipe.sources.values())
    if abs(total - 1.0) > TOLERANCE:
        shares = ", ".join(f"{n} {s.proportion}" for n, s in recipe.sources.items())
        raise MixError(f"{where}: the proportions sum to {total:.9g}, not 1 (within {TOLERANCE:g}): {shares}")


def _prep_command(recipe: MixRecipe, name: str, out: str, overrides: dict | None = None, check_model: bool = True):
    """The `mpt prep` command one source runs; options the recipe or ``overrides`` set, checked. Without
    ``check_model`` the --semantic-dedup model folder is not: it need not exist to read a recipe, only to run it."""
    from .prep import PrepCommand

    options = {**recipe.options(name), **(overrides or {})}
    data = {**options, "inputs": list(recipe.sources[name].inputs), "out": out}
    try:
        cmd = from_dict(PrepCommand, data, f"sources.{name}.prep", validate=False)
        cfg = cmd.to_config()
        if not check_model:
            cfg.semantic_dedup = None
        cfg.validate()
    except (ConfigError, ValueError) as err:
        raise MixError(f"{recipe.where}: source {name!r}: {err}") from None
    return cmd


@dataclass
class MixSummary:
    recipe: str
    out: str
    proportions: dict[str, float]          # as written to mix.yaml (renormalised when sources were skipped)
    recipe_proportions: dict[str, float]
    skipped: dict[str, list[str]]          # source -> its inputs that matched nothing (--allow-missing)
    tokens_written: dict[str, int]
    documents_written: dict[str, int]

    def lines(self) -> list[str]:
        rows = [f"{n:<24} {p:8.4f}  {self.tokens_written[n]:>16,} tokens  {self.documents_written[n]:>12,} docs"
                for n, p in self.proportions.items()]
        rows += [f"{n:<24} skipped: no input matched {', '.join(paths)}" for n, paths in self.skipped.items()]
        if self.skipped:
            rows.append(f"proportions renormalised over the {len(self.proportions)} sources prepared "
                        f"(they held {sum(self.recipe_proportions[n] for n in self.proportions):.4f} of the recipe)")
        return rows


def _missing_inputs(inputs: list[str]) -> list[str]:
    missing = []
    for item in inputs:
        try:
            expand_inputs([item])
        except (FileNotFoundError, DataInputError):
            missing.append(item)
    return missing


def run_mix(name_or_path: str, out: str, allow_missing: bool = False, overrides: dict | None = None) -> MixSummary:
    """Prep every source of the recipe into ``out/<source>/``, then write mix.yaml and mix-summary.json.

    ``overrides`` are `mpt prep` options for every source, over the recipe's (the command line's).
    """
    from .prep import prep

    recipe = load_mix(name_or_path)
    root = Path(out)
    skipped: dict[str, list[str]] = {}
    for name, src in recipe.sources.items():   # every check before the first source's hours of work
        missing = _missing_inputs(src.inputs)
        if len(missing) == len(src.inputs):
            skipped[name] = missing
        elif missing:        # a source half there is a mistake, not a source to skip
            raise MixError(f"{recipe.where}: source {name!r}: inputs {', '.join(missing)} match nothing (its other "
                           f"inputs do); fix the paths or remove them from `sources.{name}.inputs`")
    if skipped and not allow_missing:
        lines = "; ".join(f"source {n!r}: {', '.join(paths)}" for n, paths in skipped.items())
        raise MixError(f"{recipe.where}: inputs match nothing for {len(skipped)} of {len(recipe.sources)} sources "
                       f"({lines}); fill them in, or pass --allow-missing to skip those sources and renormalise "
                       "the other proportions")
    kept = [n for n in recipe.sources if n not in skipped]
    if not kept:
        raise MixError(f"{recipe.where}: no source has any input; nothing to prepare")
    commands = {n: _prep_command(recipe, n, str(root / n), overrides=overrides) for n in kept}
    total = sum(recipe.sources[n].proportion for n in kept)
    summary = MixSummary(str(name_or_path), out, {n: recipe.sources[n].proportion / total for n in kept},
                         {n: s.proportion for n, s in recipe.sources.items()}, skipped, {}, {})
    for n in kept:
        print(f"prep --mix: source {n} -> {root / n}", flush=True)
        result = prep(copy.deepcopy(commands[n].to_config()))
        summary.tokens_written[n], summary.documents_written[n] = result.tokens_written, result.documents_written
    root.mkdir(parents=True, exist_ok=True)
    _write(root, recipe, summary)
    return summary


def _write(root: Path, recipe: MixRecipe, summary: MixSummary) -> None:
    header = (f"# written by `mpt prep --mix {summary.recipe}`: the value of a training recipe's data.sources\n"
              f"# (each proportion a share of the training samples), e.g.\n"
              f"#   mpt train RECIPE \"data.sources=$(cat {root / MIX_FILE})\"\n")
    if summary.skipped:
        header += (f"# skipped (no input): {', '.join(summary.skipped)}; the other proportions are renormalised "
                   "to sum to 1\n")
    sources = [{"path": str(root / n), "proportion": round(p, 12)} for n, p in summary.proportions.items()]
    write_atomic(root / MIX_FILE, header + yaml.safe_dump(sources, sort_keys=False, default_flow_style=None))
    write_atomic(root / MIX_SUMMARY_FILE, json.dumps({**dataclasses.asdict(summary), "recipe_file": recipe.where,
                                                       "renormalised": bool(summary.skipped)}, indent=2))


def mix_command(mix: str, out: str, allow_missing: bool, overrides: dict) -> int:
    """`mpt prep --mix`: run :func:`run_mix` and print a line per source."""
    if not out:
        raise MixError("prep --mix needs --out: the folder the sources' shard folders and mix.yaml go to")
    summary = run_mix(mix, out, allow_missing, overrides)
    print("\n".join(summary.lines()))
    print(f"the mix is {Path(out) / MIX_FILE} (use: mpt train RECIPE \"data.sources=$(cat {Path(out) / MIX_FILE})\")")
    return 0
