"""In-context-learning task files (LLM Foundry's ICL jsonl format) and their prompts.

Reading and validating a file, finding its task type, drawing few-shot demonstrations and
building the prompt strings -- all as LLM Foundry builds them (commit 8c8dd48 of
``in_context_learning_evaluation.py``), so that a score here means the same as a score there.
What differs between task types (fields, prompt formats) is asked of :mod:`mpt.eval.task_types`.

Nothing here tokenizes or runs a model; :mod:`mpt.eval.encode` turns a :class:`Prompt` into ids.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from ..data.readers import read_json_lines
from .task_types import TASK_TYPES, ICLTaskType

NORMALIZATIONS = ("token", "none", "char")


class EvalTaskError(ValueError):
    """A task file or task setting is wrong; the message names where and what to do."""


@dataclass
class TaskConfig:
    """One task of a suite: a jsonl file and how to prompt for it (LLM Foundry's task fields)."""

    label: str
    file: str
    icl_task_type: str | None = None  # None: inferred from the first record's fields
    num_fewshot: list[int] = field(default_factory=lambda: [0])
    continuation_delimiter: str = " "
    example_delimiter: str = "\n"
    prelimiter: str = ""
    prompt_string: str = ""
    fewshot_random_seed: int = 1234
    has_categories: bool = False
    strip_dataset: bool = True
    # multiple_choice / schema: how the choice log-likelihoods are compared. LLM Foundry picks
    # the lowest per-token perplexity ("token"); lm-eval's acc sums ("none"), acc_norm divides by
    # the choice's length in characters ("char").
    normalization: str = "token"
    # generation_task_with_answers
    do_normalization: bool = True
    early_stopping_criteria: list[str] = field(default_factory=list)
    max_new_tokens: int | None = None  # None: the longest answer/alias in tokens, as LLM Foundry does

    def validate(self, where: str = "task") -> None:
        def bad(name: str, value, allowed: str) -> EvalTaskError:
            return EvalTaskError(f"{where} {self.label!r}: {name}={value!r} is not valid; {allowed}")

        if not self.label or not isinstance(self.label, str):
            raise bad("label", self.label, "give a non-empty name")
        if self.icl_task_type is not None and self.icl_task_type not in TASK_TYPES:
            raise bad("icl_task_type", self.icl_task_type, f"use one of {', '.join(TASK_TYPES)}")
        if isinstance(self.num_fewshot, int):
            self.num_fewshot = [self.num_fewshot]
        if not self.num_fewshot or not all(isinstance(k, int) and k >= 0 for k in self.num_fewshot):
            raise bad("num_fewshot", self.num_fewshot, "give a list of integers >= 0, e.g. [0] or [3, 25]")
        if self.normalization not in NORMALIZATIONS:
            raise bad("normalization", self.normalization, f"use one of {', '.join(NORMALIZATIONS)}")
        for name in ("continuation_delimiter", "example_delimiter", "prelimiter", "prompt_string"):
            if not isinstance(getattr(self, name), str):
                raise bad(name, getattr(self, name), "give a string")
        if not isinstance(self.early_stopping_criteria, list) or not all(
                isinstance(s, str) and s for s in self.early_stopping_criteria):
            raise bad("early_stopping_criteria", self.early_stopping_criteria, "give a list of non-empty strings")
        if self.max_new_tokens is not None and (not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1):
            raise bad("max_new_tokens", self.max_new_tokens, "give an integer >= 1 or leave it out")


@dataclass
class Prompt:
    """One example, rendered: what the model reads and what is scored."""

    index: int  # 0-based record number in the file (line number - 1)
    category: str | None
    preamble: str  # prompt_string + few-shot demonstrations (tokenized on its own, as LLM Foundry does)
    contexts: list[str]  # one context; schema: one per context option
    continuations: list[str]  # scored texts: multiple_choice one per choice; LM / schema one; QA none
    gold: int  # index into continuations (multiple_choice) or contexts (schema); 0 otherwise
    answers: list[str]  # generation_task_with_answers: the answer and its aliases
    fewshot: list[int]  # indices (within the few-shot pool) of the demonstrations, in prompt order
    pool: list[int]  # record indices of this example's few-shot pool (its category, or the whole file)


# ---- reading and validating ------------------------------------------------------------------
def read_records(path: str | Path) -> list[dict]:
    """Parse a jsonl task file; a bad line is a DataInputError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist (give the folder holding the task files "
                                "with --data-dir, or a full path)")
    records = []
    for n, rec in read_json_lines(path):
        rec["_line"] = n
        records.append(rec)
    if not records:
        raise EvalTaskError(f"{path}: the file has no records")
    return records


def infer_task_type(record: dict, path: str | Path) -> ICLTaskType:
    """The task type a record's fields imply (a bare file needs no settings)."""
    where = f"{path}:{record.get('_line', 1)}"
    fits = [t for t in TASK_TYPES.values() if set(t.fields) <= set(record)]
    if len(fits) > 1:
        raise EvalTaskError(f"{where}: the fields fit {' and '.join(t.name for t in fits)}; set icl_task_type "
                            "in the suite")
    if not fits:
        fields = ", ".join(sorted(k for k in record if k != "_line"))
        kinds = [f"{'+'.join(t.fields)} ({t.name})" for t in TASK_TYPES.values()]
        raise EvalTaskError(f"{where}: cannot tell the task type from the fields ({fields}); expected "
                            f"{', '.join(kinds[:-1])} or {kinds[-1]}, or set icl_task_type in the suite")
    return fits[0]


def validate_records(records: list[dict], task_type: ICLTaskType, path: str | Path,
                     has_categories: bool = False) -> None:
    """Every record has the fields its type needs, with the right types, and passes its type's checks."""
    for rec in records:
        where = f"{path}:{rec['_line']}"
        for name, kind in task_type.fields.items():
            if name not in rec:
                raise EvalTaskError(f"{where}: field {name!r} is missing (a {task_type.name} record needs "
                                    f"{', '.join(task_type.fields)})")
            value = rec[name]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise EvalTaskError(f"{where}: field {name!r} should be {kind.__name__}, got "
                                    f"{type(value).__name__} {value!r:.80}")
        problem = task_type.problem(rec)
        if problem:
            raise EvalTaskError(f"{where}: {problem}")
        if has_categories and not isinstance(rec.get("category"), str):
            raise EvalTaskError(f"{where}: field 'category' is missing or not a string (has_categories is set "
                                f"for this task); got {rec.get('category')!r}")


def load_task_records(task: TaskConfig, path: str | Path) -> tuple[ICLTaskType, list[dict]]:
    """Read, type and validate a task file; returns (task type, stripped records)."""
    records = read_records(path)
    task_type = TASK_TYPES[task.icl_task_type] if task.icl_task_type else infer_task_type(records[0], path)
    validate_records(records, task_type, path, task.has_categories)
    if task.strip_dataset:
        # LLM Foundry strips top-level strings only; list elements (choices, aliases) are kept as is.
        records = [{k: v.strip() if isinstance(v, str) else v for k, v in r.items()} for r in records]
    return task_type, records


# ---- few-shot sampling and prompt strings --------------------------------------------------
def sample_fewshot(pool_size: int, num_fewshot: int, example: int, rng: random.Random) -> list[int]:
    """Demonstration indices for ``example``: never the example itself, reproducible from the seed.

    The same draws as LLM Foundry's ``get_fewshot_sample_idxs`` (sample without replacement; if
    the example was drawn, drop it and draw a replacement), and the demonstrations are taken in
    the iteration order of the resulting Python set, as LLM Foundry does, so prompts match.
    """
    k = min(pool_size - 1, num_fewshot)
    picked = set(rng.sample(range(pool_size), k))
    if example in picked:
        picked.remove(example)
        if len(picked) >= pool_size - 1:
            return list(picked)
        replacement = rng.choice(range(pool_size))
        while replacement in picked or replacement == example:
            replacement = rng.choice(range(pool_size))
        picked.add(replacement)
    return list(picked)


def render_preamble(task: TaskConfig, task_type: ICLTaskType, records: list[dict], pool: list[int],
                    fewshot: list[int]) -> str:
    """The prompt string followed by the demonstrations ``pool[i]`` for ``i`` in ``fewshot``."""
    text = task.prompt_string
    for i in fewshot:
        text += task_type.demonstration(task, records[pool[i]], text)
    return text


def render_prompt(task: TaskConfig, task_type: ICLTaskType, records: list[dict], i: int, category: str | None,
                  pool: list[int], shots: list[int], prefix_space: bool) -> Prompt:
    """Record ``i`` with the demonstrations ``shots`` (indices into ``pool``, a list of record indices)."""
    rec = records[i]
    preamble = render_preamble(task, task_type, records, pool, shots)
    return Prompt(index=i, category=category, preamble=preamble, contexts=task_type.contexts(task, rec, preamble),
                  continuations=task_type.continuations(rec, prefix_space), gold=rec.get("gold", 0),
                  answers=task_type.answers(rec), fewshot=list(shots), pool=pool)


def build_prompts(task: TaskConfig, task_type: ICLTaskType, records: list[dict], num_fewshot: int,
                  prefix_space: bool, limit: int | None = None) -> list[Prompt]:
    """Prompts for the first ``limit`` records (all by default).

    The few-shot pool is the whole file, or the example's category when ``has_categories``; the
    random draws run over every record of the pool in file order, so an example's prompt does not
    depend on ``limit``.
    """
    if task.has_categories:
        pools: dict[str | None, list[int]] = {}
        for i, rec in enumerate(records):
            pools.setdefault(rec["category"], []).append(i)
    else:
        pools = {None: list(range(len(records)))}
    wanted = set(range(len(records) if limit is None else min(limit, len(records))))
    prompts: dict[int, Prompt] = {}
    for category, members in sorted(pools.items(), key=lambda kv: str(kv[0])):
        if not wanted.intersection(members):
            continue
        rng = random.Random(task.fewshot_random_seed)
        for pos, i in enumerate(members):
            shots = sample_fewshot(len(members), num_fewshot, pos, rng) if num_fewshot > 0 else []
            if i not in wanted:
                continue
            prompts[i] = render_prompt(task, task_type, records, i, category, members, shots, prefix_space)
    return [prompts[i] for i in sorted(prompts)]
