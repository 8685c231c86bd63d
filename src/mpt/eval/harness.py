"""Run tasks on a model: the function behind ``mpt eval``, also the in-training eval hook.

``evaluate(model, tokenizer, tasks, ...)`` validates every task file first, then for each task and
few-shot count builds the prompts, has the task's type score them and returns accuracies,
per-category accuracies, truncation counts and, optionally, one typed row per example.

Under ``torchrun`` (world size > 1) the examples are split across ranks by length
(:func:`split_across_ranks`) and the rows are gathered back in file order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from ..ranks import rank_world
from .encode import encode_prompt, needs_prefix_space
from .runner import EvalModel
from .suite import resolve_task_file
from .task_types import ExampleRow, ICLTaskType
from .tasks import Prompt, TaskConfig, build_prompts, load_task_records, render_prompt


@dataclass
class TaskResult:
    label: str
    num_fewshot: int
    icl_task_type: str
    metric: str
    accuracy: float  # with categories: the mean of the category accuracies (LLM Foundry's gauntlet input)
    n: int
    micro_accuracy: float  # over all examples
    categories: dict[str, tuple[float, int]] = field(default_factory=dict)
    fewshot_dropped: int = 0  # examples that lost demonstrations to fit the window
    context_cut: int = 0  # examples whose context was cut from the left
    seconds: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.label}/{self.num_fewshot}-shot"


@dataclass
class EvalOutput:
    tasks: list[TaskResult]
    examples: list[ExampleRow]
    seconds: float


def context_window(model) -> int:
    cfg = model.config
    for name in ("max_seq_len", "max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"cannot tell the context window of {type(model).__name__}; give --max-seq-len")


def _cost(p: Prompt) -> int:
    """Characters the model reads for ``p`` (shared context once, each option once)."""
    return len(p.preamble) + sum(map(len, p.contexts)) + sum(map(len, p.continuations))


def split_across_ranks(prompts: list[Prompt], rank: int, world: int) -> list[Prompt]:
    """This rank's prompts, in their original order: costliest first, each to the least-loaded rank.

    Every rank computes the same assignment from the same prompts, so no message is needed.
    """
    if world == 1:
        return prompts
    load = [0] * world
    mine = []
    for i in sorted(range(len(prompts)), key=lambda i: -_cost(prompts[i])):
        r = min(range(world), key=lambda r: load[r])
        load[r] += _cost(prompts[i])
        if r == rank:
            mine.append(i)
    return [prompts[i] for i in sorted(mine)]


def evaluate(model, tokenizer, tasks: list[TaskConfig], data_dir: str | Path | None = None,
             limit: int | None = None, batch_size: int = 64, max_seq_len: int | None = None,
             keep_examples: bool = False, progress: bool = True, prefix_reuse: bool = True,
             max_batch_tokens: int = 65536) -> EvalOutput:
    """Evaluate ``model`` on ``tasks``; ``limit`` takes the first N examples of each task.

    ``batch_size`` caps the sequences per forward pass and ``max_batch_tokens`` their padded tokens
    (a row counted with the shared prefix it attends to); one chunk of shared prefixes, cached
    once, holds at most a quarter of that (see :mod:`mpt.eval.runner`).
    """
    from tqdm.auto import tqdm

    start_all = time.perf_counter()
    # Validate everything before the first forward pass: a bad line in the last file should not
    # cost an hour of evaluation.
    loaded = []
    for task in tasks:
        path = resolve_task_file(task, data_dir)
        task_type, records = load_task_records(task, path)
        loaded.append((task, path, task_type, records))
    window = max_seq_len or context_window(model)
    prefix_space = needs_prefix_space(tokenizer)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    runner = EvalModel(model, tokenizer, batch_size, pad, eos, prefix_reuse, max_batch_tokens)
    rank, world = rank_world()
    was_training = model.training
    model.eval()
    results, examples = [], []
    for task, path, task_type, records in loaded:
        new_tokens = task_type.new_tokens(task, tokenizer, records)
        for k in task.num_fewshot:
            t0 = time.perf_counter()
            prompts = split_across_ranks(build_prompts(task, task_type, records, k, prefix_space, limit), rank, world)
            encoded = [encode_prompt(p, tokenizer, window, partial(_rerender, task, task_type, records, p, prefix_space),
                                     reserve=new_tokens, where=f"{path}:{records[p.index]['_line']}") for p in prompts]
            runner.progress = tqdm(total=len(encoded), desc=f"{task.label} {k}-shot", unit="ex",
                                   disable=not progress or rank > 0, leave=False)
            rows = task_type.run(runner, task, encoded, records, new_tokens)
            runner.progress.close()
            rows = _gather(rows, world)
            results.append(_summarise(task, task_type, k, rows, time.perf_counter() - t0))
            if keep_examples:
                examples.extend(rows)
    model.train(was_training)
    return EvalOutput(results, examples, time.perf_counter() - start_all)


def _rerender(task: TaskConfig, task_type: ICLTaskType, records: list[dict], p: Prompt, prefix_space: bool,
              shots: list[int]) -> Prompt:
    """The same example with fewer demonstrations (to fit the window)."""
    return render_prompt(task, task_type, records, p.index, p.category, p.pool, shots, prefix_space)


def _gather(rows: list[ExampleRow], world: int) -> list[ExampleRow]:
    if world == 1:
        return rows
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, rows)
    return sorted((r for part in parts for r in part), key=lambda r: r.index)


def _summarise(task: TaskConfig, task_type: ICLTaskType, k: int, rows: list[ExampleRow], seconds: float) -> TaskResult:
    n = len(rows)
    micro = sum(r.correct for r in rows) / max(n, 1)
    cats: dict[str, list[bool]] = {}
    if task.has_categories:
        for r in rows:
            cats.setdefault(r.category, []).append(r.correct)
    categories = {c: (sum(v) / len(v), len(v)) for c, v in sorted(cats.items())}
    accuracy = sum(a for a, _ in categories.values()) / len(categories) if categories else micro
    return TaskResult(task.label, k, task_type.name, task_type.metric, accuracy, n, micro, categories,
                      fewshot_dropped=sum(r.fewshot_dropped > 0 for r in rows),
                      context_cut=sum(r.context_cut > 0 for r in rows), seconds=seconds)
