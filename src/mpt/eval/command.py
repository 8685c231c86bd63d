"""The ``mpt eval`` command: load a model and suites, evaluate, print and write the results.

(:mod:`mpt.eval.runner` is the scoring engine underneath; this module is the command around it.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..config import option
from ..ranks import join_process_group, launch_env, rank_world
from .tasks import EvalTaskError


@dataclass
class EvalRunConfig:
    model: str = option(help="our checkpoint, a Hugging Face-format MPT or any causal LM folder, or a hub name",
                        positional=True)
    tasks: list[str] = option(help="suite names (mpt7b), suite YAML files or bare .jsonl task files",
                              factory=lambda: ["mpt7b"])
    data_dir: str | None = option(None, "folder holding the task files named in the suite (default: $MPT_EVAL_DATA)")
    tokenizer: str | None = option(None, "tokenizer folder or tokenizer.json (default: the model's)")
    gauntlet: str | None = option(None, "gauntlet name or YAML (default: the suite's; 'none' to skip)")
    limit: int | None = option(None, "evaluate only the first N examples of each task")
    num_fewshot: list[int] | None = option(None, "override every task's few-shot counts")
    batch_size: int = option(64, "sequences per forward pass")
    max_batch_tokens: int = option(65536, "padded tokens per forward pass, bounding memory for long few-shot prompts")
    max_seq_len: int | None = option(None, "context window (default: the model's)")
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: cuda when available)")
    dtype: str | None = option(None, "weights dtype; auto: as saved (default: bfloat16 on GPU, float32 on CPU)",
                               choices=("auto", "float32", "bfloat16", "float16"))
    output: str | None = option(None, "write results (and gauntlet) as JSON here")
    markdown: str | None = option(None, "write a Markdown table here")
    examples: str | None = option(None, "write one JSON line per example (prompt, options, scores, prediction, gold) "
                                  "here")
    progress: bool = option(True, "no progress bar")

    def validate(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise EvalTaskError(f"--limit {self.limit}: give a positive number of examples per task")
        if self.max_batch_tokens < 1:
            raise EvalTaskError(f"--max-batch-tokens {self.max_batch_tokens}: give a positive number")
        if self.batch_size < 1:
            raise EvalTaskError(f"--batch-size {self.batch_size}: give a positive number of sequences per forward")
        if self.max_seq_len is not None and self.max_seq_len < 8:
            raise EvalTaskError(f"--max-seq-len {self.max_seq_len} is too small")
        if self.num_fewshot is not None and any(k < 0 for k in self.num_fewshot):
            raise EvalTaskError(f"--num-fewshot {self.num_fewshot}: counts must be >= 0")
        if self.dtype not in (None, "auto", "float32", "bfloat16", "float16"):
            raise EvalTaskError(f"--dtype {self.dtype}: use auto, float32, bfloat16 or float16")


def run_eval(cfg: EvalRunConfig) -> dict:
    from ..data.tokenize import load_tokenizer
    from ..model.load import load_model
    from . import report
    from .gauntlet import aggregate
    from .harness import evaluate
    from .suite import load_gauntlet, load_suite, resolve_task_file
    from .tasks import load_task_records

    cfg.validate()
    data_dir = cfg.data_dir or os.environ.get("MPT_EVAL_DATA")
    suites = [load_suite(s) for s in cfg.tasks]
    tasks = [t for s in suites for t in s.tasks]
    if cfg.num_fewshot is not None:
        for t in tasks:
            t.num_fewshot = list(cfg.num_fewshot)
    for t in tasks:  # fail on a bad file before loading the model
        load_task_records(t, resolve_task_file(t, data_dir))
    gauntlet_name = cfg.gauntlet if cfg.gauntlet is not None else next((s.gauntlet for s in suites if s.gauntlet), None)
    gauntlet_cfg = load_gauntlet(gauntlet_name) if gauntlet_name and gauntlet_name != "none" else None

    rank, device = _init_distributed(cfg.device)
    model = load_model(cfg.model, device, cfg.dtype)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    out = evaluate(model, tokenizer, tasks, data_dir=data_dir, limit=cfg.limit, batch_size=cfg.batch_size,
                   max_seq_len=cfg.max_seq_len, keep_examples=cfg.examples is not None, progress=cfg.progress,
                   max_batch_tokens=cfg.max_batch_tokens)
    g = aggregate({t.key: t.accuracy for t in out.tasks}, gauntlet_cfg) if gauntlet_cfg else None
    if rank > 0:  # every rank holds the gathered results; one of them reports
        return report.to_json(out, g)
    print(report.table(out, g))
    n = sum(t.n for t in out.tasks)
    print(f"{n} examples in {out.seconds:.1f} s ({n / max(out.seconds, 1e-9):.1f} examples/s) on "
          f"{next(model.parameters()).device} {next(model.parameters()).dtype}")
    if g is not None:
        for name, cats in g.averages_missing.items():
            print(f"{name}: no score for {', '.join(cats)} (no task data for them)")
    meta = {"model": cfg.model, "tasks": cfg.tasks, "limit": cfg.limit, "gauntlet": gauntlet_name,
            "device": str(next(model.parameters()).device), "dtype": str(next(model.parameters()).dtype)}
    data = report.to_json(out, g, meta)
    if cfg.output:
        report.write_json(cfg.output, data)
        print(f"wrote {cfg.output}")
    if cfg.markdown:
        from pathlib import Path

        Path(cfg.markdown).write_text(report.markdown(out, g, title=f"{cfg.model}"), encoding="utf-8")
        print(f"wrote {cfg.markdown}")
    if cfg.examples:
        report.write_examples(cfg.examples, out.examples)
        print(f"wrote {cfg.examples} ({len(out.examples)} examples)")
    return data


def _init_distributed(device: str | None) -> tuple[int, str | None]:
    """Under ``torchrun`` (WORLD_SIZE > 1): join the process group; each rank uses its own GPU."""
    import torch

    _, world, local = launch_env()
    if world <= 1:
        return 0, device
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    join_process_group(cuda)
    if cuda:
        device = f"cuda:{local}"
    return rank_world()[0], device
