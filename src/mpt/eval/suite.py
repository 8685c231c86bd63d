"""Suites (lists of tasks) and gauntlets (how task scores combine), read from YAML.

A suite is a YAML file like LLM Foundry's ``tasks_v0.3.yaml``: ``icl_tasks:`` a list of task
settings (:class:`~mpt.eval.tasks.TaskConfig` fields; LLM Foundry's ``dataset_uri`` and
``question_prelimiter`` are accepted as ``file`` and ``prelimiter``). Built-in suites live in
``configs/eval/``. A bare ``.jsonl`` file is a one-task suite with the defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .tasks import EvalTaskError, TaskConfig

_ALIASES = {"dataset_uri": "file", "question_prelimiter": "prelimiter"}


@dataclass
class Suite:
    name: str
    tasks: list[TaskConfig]
    gauntlet: str | None = None  # a built-in gauntlet name or YAML path
    source: str = ""


@dataclass
class Benchmark:
    name: str
    num_fewshot: int
    random_baseline: float


@dataclass
class Category:
    name: str
    benchmarks: list[Benchmark]


@dataclass
class GauntletConfig:
    """LLM Foundry's eval gauntlet settings (v0.3: EQUAL weighting, baseline subtracted and rescaled)."""

    categories: list[Category]
    weighting: str = "EQUAL"
    subtract_random_baseline: bool = True
    rescale_accuracy: bool = True
    averages: dict[str, list[str]] = field(default_factory=dict)
    name: str = ""

    def validate(self) -> None:
        if self.weighting != "EQUAL":
            raise EvalTaskError(f"gauntlet {self.name}: weighting={self.weighting!r} is not supported; use EQUAL "
                                "(the v0.3 setting)")
        if self.rescale_accuracy and not self.subtract_random_baseline:
            raise EvalTaskError(f"gauntlet {self.name}: rescale_accuracy needs subtract_random_baseline: true")
        for cat in self.categories:
            for b in cat.benchmarks:
                if not 0 <= b.random_baseline < 1:
                    raise EvalTaskError(f"gauntlet {self.name}: {cat.name}/{b.name} random_baseline="
                                        f"{b.random_baseline} must be in [0, 1)")


def builtin_names() -> list[str]:
    folder = resources.files("mpt") / "configs" / "eval"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str, kind: str) -> tuple[dict, str]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"{kind} file {path} does not exist")
        text, source = path.read_text(), str(path)
    elif name_or_path in builtin_names():
        text = (resources.files("mpt") / "configs" / "eval" / f"{name_or_path}.yaml").read_text()
        source = f"configs/eval/{name_or_path}.yaml"
    else:
        raise EvalTaskError(f"unknown {kind} {name_or_path!r}; built-in: {', '.join(builtin_names())} "
                            "(or give a .yaml file, or .jsonl task files)")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise EvalTaskError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    return data, source


def task_from_dict(raw: dict, where: str) -> TaskConfig:
    names = {f.name for f in dataclasses.fields(TaskConfig)}
    kwargs = {}
    for key, value in raw.items():
        key = _ALIASES.get(key, key)
        if key not in names:
            raise EvalTaskError(f"{where}: unknown task setting {key!r} = {value!r}; known: {', '.join(sorted(names))}")
        kwargs[key] = value
    for key in ("label", "file"):
        if key not in kwargs:
            raise EvalTaskError(f"{where}: task setting {key!r} is missing")
    task = TaskConfig(**kwargs)
    task.validate(where)
    return task


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite name, a suite YAML, or a bare .jsonl task file."""
    path = Path(name_or_path)
    if path.suffix == ".jsonl":
        task = TaskConfig(label=path.stem, file=str(path))
        task.validate(str(path))
        return Suite(name=path.stem, tasks=[task], source=str(path))
    data, source = _read_yaml(name_or_path, "suite")
    raw_tasks = data.get("icl_tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise EvalTaskError(f"{source}: needs 'icl_tasks:', a non-empty list of tasks")
    tasks = []
    for i, raw in enumerate(raw_tasks):
        if not isinstance(raw, dict):
            raise EvalTaskError(f"{source}: icl_tasks[{i}] should be a mapping, got {raw!r:.80}")
        tasks.append(task_from_dict(raw, f"{source} icl_tasks[{i}]"))
    labels = [t.label for t in tasks]
    if len(set(labels)) != len(labels):
        raise EvalTaskError(f"{source}: task labels repeat: {sorted({x for x in labels if labels.count(x) > 1})}")
    return Suite(name=data.get("name", path.stem), tasks=tasks, gauntlet=data.get("gauntlet"), source=source)


def load_gauntlet(name_or_path: str) -> GauntletConfig:
    data, source = _read_yaml(name_or_path, "gauntlet")
    g = data.get("eval_gauntlet", data)
    try:
        cats = [Category(c["name"], [Benchmark(b["name"], int(b["num_fewshot"]), float(b["random_baseline"]))
                                     for b in c["benchmarks"]]) for c in g["categories"]]
        cfg = GauntletConfig(categories=cats, weighting=g.get("weighting", "EQUAL"),
                             subtract_random_baseline=bool(g.get("subtract_random_baseline", True)),
                             rescale_accuracy=bool(g.get("rescale_accuracy", True)),
                             averages=dict(g.get("averages") or {}), name=source)
    except (KeyError, TypeError, ValueError) as err:
        raise EvalTaskError(f"{source}: malformed gauntlet ({type(err).__name__}: {err}); expected categories: "
                            "[{name, benchmarks: [{name, num_fewshot, random_baseline}]}]") from None
    cfg.validate()
    return cfg


def resolve_task_file(task: TaskConfig, data_dir: str | Path | None) -> Path:
    """Where a task's file is: as given if it exists, else under ``data_dir``. Nothing is downloaded."""
    given = Path(task.file).expanduser()
    if given.is_absolute() or given.is_file():
        if not given.is_file():
            raise FileNotFoundError(f"task {task.label!r}: file {given} does not exist")
        return given
    if data_dir is None:
        raise FileNotFoundError(f"task {task.label!r}: {task.file} is not in the current folder; give the folder "
                                "holding the task files with --data-dir (nothing is downloaded)")
    path = Path(data_dir).expanduser() / task.file
    if not path.is_file():
        raise FileNotFoundError(f"task {task.label!r}: {path} does not exist (check --data-dir)")
    return path
