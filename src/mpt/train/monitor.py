"""The step line, MFU, metrics files and loss-curve PNGs (:func:`plot_curves`, the quickstart report's too).

MFU is the training FLOPs per token (:func:`mpt.presets.train_flops_per_token`, LLM Foundry's
formula) times tokens/s, over the device's dense bf16 peak.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

Points = Sequence[tuple[int, float]]  # (step, value)

# Dense (not sparse) bf16 peak TFLOP/s by device-name fragment; first match wins.
PEAK_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H800", 989.0), ("GH200", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 125.0),
    ("A10", 125.0), ("V100", 125.0), ("4090", 165.0), ("3090", 71.0),
)


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, f"peak {override:g} TFLOP/s (log.peak_tflops)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, tflops in PEAK_TFLOPS:
            if fragment in name:
                return tflops, f"peak {tflops:g} TFLOP/s ({name} bf16)"
        return None, f"no peak known for {name}; set log.peak_tflops for MFU"
    return None, "no MFU on CPU; set log.peak_tflops to report one"


class Monitor:
    """Rank 0 writes; other ranks only keep the step timer (for the watchdog)."""

    def __init__(self, folder: str | Path, is_main: bool, flops_per_token: float, peak: float | None,
                 peak_note: str, tensorboard: bool, fresh: bool = False, log=print) -> None:
        self.folder = Path(folder)
        self.is_main = is_main
        self.flops_per_token = flops_per_token
        self.peak = peak
        self.peak_note = peak_note
        self.step_times: list[float] = []
        self.losses: list[tuple[int, float]] = []
        self.tb = None
        if is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            if fresh:
                self._set_aside_old_metrics(log)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.folder / "tensorboard"))

    def _set_aside_old_metrics(self, log) -> None:
        """A run that starts afresh never appends to another run's rows: those move to metrics-N.jsonl."""
        path = self.folder / "metrics.jsonl"
        if not path.is_file() or path.stat().st_size == 0:
            return
        n = 1
        while (self.folder / f"metrics-{n}.jsonl").exists():
            n += 1
        path.rename(self.folder / f"metrics-{n}.jsonl")
        log(f"{path} held an earlier run's metrics; moved them to metrics-{n}.jsonl (give each run its own "
            "log.folder to keep them apart)")

    def step(self, step: int, total: int, metrics: dict, tokens: int, seconds: float, device: torch.device) -> str:
        self.step_times.append(seconds)
        tok_s = tokens / seconds if seconds > 0 else 0.0
        tflops = tok_s * self.flops_per_token / 1e12
        metrics = dict(metrics, step=step, tokens_per_s=tok_s, tflops=tflops, time=time.time())
        if self.peak:
            metrics["mfu"] = tflops / self.peak
        if device.type == "cuda":
            metrics["mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if "loss" in metrics and not metrics.get("skipped"):
            self.losses.append((step, metrics["loss"]))
        if not self.is_main:
            return ""
        with open(self.folder / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(k, v, step)
        parts = [f"step {step}/{total}", f"loss {metrics['loss']:.4f}", f"lr {metrics['lr']:.3g}",
                 f"grad {metrics['grad_norm']:.3g}", f"{tok_s:,.0f} tok/s", f"{tflops:.2f} TFLOP/s"]
        if self.peak:
            parts.append(f"MFU {100 * metrics['mfu']:.1f}% ({self.peak_note})")
        if "mem_gib" in metrics:
            parts.append(f"mem {metrics['mem_gib']:.1f} GiB")
        if metrics.get("skipped"):
            parts.append(f"SKIPPED: {metrics['skipped']}")
        return " | ".join(parts)

    def median_step_time(self) -> float | None:
        recent = sorted(self.step_times[-20:])
        return recent[len(recent) // 2] if recent else None

    def record(self, step: int, metrics: dict[str, float]) -> None:
        """Evaluation results (validation loss, ICL accuracies) beside the step metrics."""
        if not self.is_main:
            return
        with open(self.folder / "metrics.jsonl", "a") as f:
            f.write(json.dumps(dict(metrics, step=step, time=time.time())) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def plot(self) -> Path | None:
        """loss_curve.png from every logged loss of this run (earlier segments too), ICL accuracies beside."""
        if not self.is_main:
            return None
        rows = read_metrics(self.folder)
        losses = {m["step"]: m["loss"] for m in rows if "loss" in m and not m.get("skipped")}
        if not losses:
            return None
        evals: dict[str, dict[int, float]] = {}
        for m in rows:
            for k, v in m.items():
                if k == "val_loss" or k.startswith("icl/"):
                    evals.setdefault(k, {})[m["step"]] = v
        curves = {"training loss": list(losses.items())}
        if "val_loss" in evals:
            curves["validation loss"] = list(evals["val_loss"].items())
        panels = [("loss", curves)]
        accuracies = {k.removeprefix("icl/"): list(v.items()) for k, v in sorted(evals.items()) if k.startswith("icl/")}
        if accuracies:
            panels.append(("ICL accuracy", accuracies))
        return plot_curves(self.folder / "loss_curve.png", panels)


def read_metrics(folder: str | Path) -> list[dict]:
    """Every intact line of a run's metrics.jsonl; a line torn by a killed process is passed over."""
    path = Path(folder) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "step" in row:
                rows.append(row)
    return rows


def plot_curves(path: str | Path, panels: Sequence[tuple[str, dict[str, Points]]]) -> Path:
    """A PNG of curves against the step: one panel per ``(y label, {curve label: points})``, side by side.

    A curve of few points (evaluations) is drawn with markers: as a bare line, a single point would not show.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(2 + 5 * len(panels), 4), squeeze=False)
    for ax, (ylabel, curves) in zip(axes[0], panels, strict=True):
        for label, points in curves.items():
            steps, values = zip(*sorted(points), strict=True)
            ax.plot(steps, values, marker="o" if len(points) <= 20 else None, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8 if len(curves) > 4 else None)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
