"""The quickstart report: DIR/report.md (and report.html) with plots, tables, samples and commands."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from pathlib import Path

import torch

from .tables import markdown_table
from .train.monitor import plot_curves, read_metrics

# The stage table must not suggest that a stage is free when its work happened in another one.
STAGE_NOTES = {
    "pretrain": "both models, their checkpoints and the Hugging Face export at the end of training",
    "export": "copying the folder exported at the end of pretraining, and the tokenizer, to model/",
}


def _runs(qs) -> dict[str, dict]:
    out = {}
    for name in ("alibi", "learned_pos_emb"):
        run = qs.dir / "runs" / name
        result = json.loads((run / "result.json").read_text())
        steps = {m["step"]: m for m in read_metrics(run) if "loss" in m and not m.get("skipped")}
        rates = [m["tokens_per_s"] for m in steps.values()][2:] or [0.0]
        tflops = [m["tflops"] for m in steps.values()][2:] or [0.0]
        out[name] = {"curve": sorted((s, m["loss"]) for s, m in steps.items()), "tok_s": statistics.median(rates),
                     "tflops": statistics.median(tflops), **result}
    return out


def write_report(qs) -> Path:
    runs = _runs(qs)
    plot_curves(qs.dir / "loss_curves.png", [("training loss", {name: run["curve"] for name, run in runs.items()})])
    evaluation = json.loads((qs.dir / "evaluation.json").read_text())
    samples = json.loads((qs.dir / "samples.json").read_text())
    summary = json.loads((qs.dir / "shards" / "train" / "summary.json").read_text())
    ppl = evaluation["perplexity"]
    s, mf = qs.size, qs.model_fields

    md = [f"# mpt quickstart report ({qs.cfg.size})", "",
          f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} on {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}; "
          f"total {sum(qs.timings.values()):.0f} s of stage time.", "",
          "## Stages", "", markdown_table(["stage", "seconds", "what the time covers"],
                                  [[k, f"{v:.1f}", STAGE_NOTES.get(k, "")] for k, v in qs.timings.items()]), "",
          "## Data", "",
          f"The Python standard library's own source files and their docstrings (code and prose), every 10th file "
          f"held out for validation; cleaned (documents under 200 characters dropped) and exactly deduplicated by "
          f"`mpt prep`: {summary['records_read']:,} documents read, {summary['exact_duplicates']:,} duplicates and "
          f"{sum(summary['filtered'].values()):,} filtered out, {summary['tokens_written']:,} training tokens in "
          f"{summary['samples']:,} samples of {s['seq']}; a byte-level BPE tokenizer of {s['vocab']:,} tokens "
          "trained on the training split.", "",
          "## Training", "",
          f"Two `mpt-tiny`-class models (d_model {mf['d_model']}, {mf['n_layers']} layers, "
          f"{mf['n_heads']} heads), {s['steps']} steps of {s['batch']} x {s['seq']} tokens, Lion, cosine "
          "schedule: one with ALiBi (MPT), its twin with learned position embeddings (table for 4x the training "
          "length) and no ALiBi.", "",
          "![loss curves](loss_curves.png)", "",
          markdown_table(["model", "steps", "tokens", "final loss", "tokens/s", "TFLOP/s", "MFU"],
                 [[n, str(r["steps"]), f"{r['tokens']:,}", f"{r['final_loss']:.3f}", f"{r['tok_s']:,.0f}",
                   f"{r['tflops']:.3f}", "n/a on CPU (no known peak)"] for n, r in runs.items()]), "",
          "## Validation perplexity and length extrapolation", "",
          f"Held-out text scored in windows of 1x, 2x and 4x the training length ({s['seq']} tokens). ALiBi needs "
          "no positions it has not seen; learned position embeddings beyond the training length were never "
          "trained.", ""]
    lengths = list(ppl["alibi"])
    rows = []
    for length in lengths:
        a, b = ppl["alibi"][length], ppl["learned_pos_emb"].get(length)
        a1, b1 = ppl["alibi"][lengths[0]], ppl["learned_pos_emb"].get(lengths[0])
        rows.append([length, f"{a:.2f} ({a / a1:.2f}x of 1x)",
                     f"{b:.2f} ({b / b1:.2f}x of 1x)" if b else "cannot run"])
    md += [markdown_table(["window", "ALiBi perplexity", "learned-position twin perplexity"], rows), ""]
    if "icl_markdown" in evaluation:
        md += ["## In-context-learning evaluation", "", evaluation["icl_markdown"], ""]
    else:
        md += ["## In-context-learning evaluation", "",
               "None requested (`mpt quickstart --eval-tasks FILES_OR_SUITE --eval-data-dir DIR`).", ""]
    md += ["## Samples", "", "From the exported ALiBi model, temperature 0.8, top-k 40:", ""]
    for smp in samples:
        md += ["```python", smp["prompt"] + smp["completion"], "```", ""]
    md += ["## Reproduce each stage by hand", "", "```bash"]
    for stage, cmds in qs.commands().items():
        md += [f"# {stage}", *cmds]
    md += ["```", ""]
    text = "\n".join(md)
    (qs.dir / "report.md").write_text(text)
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(text)
    (qs.dir / "report.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>mpt quickstart report</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}"
        "pre{background:#f5f5f5;padding:.6em;white-space:pre-wrap;overflow-wrap:anywhere}</style></head><body>" + body + "</body></html>")
    return qs.dir / "report.md"
