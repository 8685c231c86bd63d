"""Results as a terminal table, a JSON file, a Markdown table and per-example JSONL."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..tables import markdown_table, text_table
from .gauntlet import GauntletResult
from .harness import EvalOutput
from .task_types import ExampleRow


def _rows(out: EvalOutput) -> list[tuple[str, ...]]:
    rows = []
    for t in out.tasks:
        trunc = f"{t.fewshot_dropped}/{t.context_cut}" if (t.fewshot_dropped or t.context_cut) else "-"
        rows.append((t.key, t.icl_task_type, f"{t.accuracy:.4f}", str(t.n), trunc, f"{t.n / max(t.seconds, 1e-9):.1f}"))
        for cat, (acc, n) in t.categories.items():
            rows.append((f"  {t.label}/{cat}", "", f"{acc:.4f}", str(n), "", ""))
    return rows


HEADER = ("task", "type", "accuracy", "n", "truncated (shots/context)", "examples/s")


def table(out: EvalOutput, gauntlet: GauntletResult | None = None) -> str:
    rows = _rows(out)
    if gauntlet is not None:
        for name, v in {**gauntlet.categories, **gauntlet.averages}.items():
            rows.append((f"gauntlet/{name}", "", f"{v:.4f}", "", "", ""))
    return text_table(HEADER, rows, left=2)


def markdown(out: EvalOutput, gauntlet: GauntletResult | None = None, title: str = "") -> str:
    lines = [f"## {title}", ""] if title else []
    lines.append(markdown_table(HEADER, _rows(out)))
    if gauntlet is not None:
        lines += ["", "| gauntlet | score |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in {**gauntlet.categories, **gauntlet.averages}.items()]
        for name, cats in gauntlet.averages_missing.items():
            lines.append(f"\n{name} lacks: {', '.join(cats)} (no task data)")
    return "\n".join(lines) + "\n"


def to_json(out: EvalOutput, gauntlet: GauntletResult | None = None, meta: dict | None = None) -> dict:
    return {"meta": meta or {}, "seconds": out.seconds,
            "tasks": {t.key: {**asdict(t), "categories": {c: {"accuracy": a, "n": n} for c, (a, n) in t.categories.items()}}
                      for t in out.tasks},
            "gauntlet": asdict(gauntlet) if gauntlet is not None else None}


def write_json(path: str | Path, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_examples(path: str | Path, examples: list[ExampleRow]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")
