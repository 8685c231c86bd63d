"""lm-evaluation-harness integration (optional extra: ``pip install -e ".[eval]"``).

* ``--model mpt``: lm-eval's Hugging Face model, loading our checkpoints with our class. lm-eval has
  no plugin discovery, so run it through this module, which registers the model first:
  ``python -m mpt.eval.lm_eval_adapter --model mpt --model_args pretrained=DIR --tasks piqa``.
* :func:`export_task`: one of our tasks, our prompts already rendered, as a local lm-eval task
  (``dataset_path: json``; each task type gives its lm-eval form), so lm-eval scores exactly the
  strings we score (``tests/eval/test_lm_eval_adapter.py`` compares them example by example).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from .encode import needs_prefix_space
from .suite import resolve_task_file
from .tasks import TaskConfig, build_prompts, load_task_records

_REGISTERED = False


def register() -> None:
    """Register ``mpt`` with lm-eval's model registry (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM

    from ..data.tokenize import load_tokenizer
    from ..model.load import load_model
    from .harness import context_window

    @register_model("mpt")
    class MPTLM(HFLM):
        """lm-eval's HFLM around a model loaded by ``mpt.model.load.load_model`` (our MPT class for MPT folders)."""

        def __init__(self, pretrained: str, tokenizer: str | None = None, device: str | None = None,
                     dtype: str | None = None, max_length: int | None = None, **kwargs) -> None:
            model = load_model(pretrained, device=device, dtype=None if dtype in (None, "auto") else str(dtype))
            kwargs.pop("backend", None)
            super().__init__(pretrained=model, tokenizer=load_tokenizer(tokenizer or pretrained), backend="causal",
                             max_length=max_length or context_window(model), **kwargs)

    _REGISTERED = True


def export_task(task: TaskConfig, num_fewshot: int, tokenizer, out_dir: str | Path, data_dir=None,
                limit: int | None = None, max_new_tokens: int | None = None) -> str:
    """Write our rendered prompts for ``task`` as an lm-eval task in ``out_dir``; return its name.

    The docs carry the full prompt (demonstrations included), so lm-eval runs it 0-shot. The
    scored text is our continuation minus its prefix space, which lm-eval's ``target_delimiter``
    puts back.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = resolve_task_file(task, data_dir)
    task_type, records = load_task_records(task, path)
    prompts = build_prompts(task, task_type, records, num_fewshot, needs_prefix_space(tokenizer), limit)
    name = f"mpt_{task.label}_{num_fewshot}shot"
    docs = [{"index": p.index, **task_type.lm_eval_doc(p)} for p in prompts]
    data = out_dir / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    spec: dict = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                  "test_split": "test", "num_fewshot": 0, "target_delimiter": " ",
                  **task_type.lm_eval_spec(task, tokenizer, records, max_new_tokens)}
    (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return name


def export_parser():
    """The arguments of ``mpt lm-eval export``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mpt.eval.lm_eval_adapter export",
                                 description="Write our rendered prompts for one task as a local lm-eval task.")
    ap.add_argument("label", help="task label in the suite, e.g. piqa")
    ap.add_argument("out_dir", help="folder for the task YAML + jsonl (give it to lm_eval --include_path)")
    ap.add_argument("--suite", default="mpt7b")
    ap.add_argument("--num-fewshot", type=int, default=None, help="default: the task's first count")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--tokenizer", required=True, help="tokenizer folder or tokenizer.json")
    ap.add_argument("--limit", type=int, default=None)
    return ap


def _export_cli(argv: list[str]) -> None:
    from ..data.tokenize import load_tokenizer
    from .suite import load_suite

    args = export_parser().parse_args(argv)
    tasks = {t.label: t for t in load_suite(args.suite).tasks}
    if args.label not in tasks:
        raise SystemExit(f"no task {args.label!r} in suite {args.suite}; tasks: {', '.join(tasks)}")
    task = tasks[args.label]
    k = task.num_fewshot[0] if args.num_fewshot is None else args.num_fewshot
    name = export_task(task, k, load_tokenizer(args.tokenizer), args.out_dir, args.data_dir, args.limit)
    print(f"wrote lm-eval task {name} to {args.out_dir}")


def main() -> None:
    """``export ...`` writes a task; anything else is an ``lm_eval`` command line with ``mpt`` registered."""
    if len(sys.argv) > 1 and sys.argv[1] == "export":
        _export_cli(sys.argv[2:])
        return
    register()
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "lm_eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
