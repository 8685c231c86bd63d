"""The shared plotting and FLOPs helpers: one loss-curve plotter (training monitor and quickstart report)
and one FLOPs-per-token formula (model-info and the training step line)."""

import json
import struct

import torch

from mpt.presets import load_model_config, model_info, train_flops_per_token
from mpt.train.monitor import plot_curves, read_metrics


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_panels_stand_side_by_side_and_a_single_point_is_drawn(tmp_path):
    loss = [(s, 5.0 / (s + 1)) for s in range(40)]
    one = plot_curves(tmp_path / "one.png", [("loss", {"training loss": loss, "validation loss": [(39, 0.2)]})])
    two = plot_curves(tmp_path / "two.png", [("loss", {"a": loss, "b": loss[::2]}),
                                             ("ICL accuracy", {"task": [(10, 0.25)]})])
    (w1, h1), (w2, h2) = png_size(one), png_size(two)
    assert h1 == h2 == 400 and (w1, w2) == (700, 1200)  # 2 + 5 inches per panel, at 100 dpi


def test_read_metrics_passes_over_a_torn_line_and_rows_without_a_step(tmp_path):
    rows = [{"step": 1, "loss": 2.0}, {"note": "no step"}, {"step": 2, "val_loss": 1.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 3, "lo')
    assert read_metrics(tmp_path) == [rows[0], rows[2]]
    assert read_metrics(tmp_path / "missing") == []


def test_flops_per_token_is_llm_foundrys_formula():
    cfg = load_model_config("mpt-7b")
    assert train_flops_per_token(1000, cfg, seq_len=10) == 6 * 1000 + 12 * 32 * 4096 * 10
    info = model_info(cfg)  # at max_seq_len 2048 by default
    assert info.train_flops_per_token == 6 * info.params + 12 * 32 * 4096 * 2048


def test_a_fresh_run_sets_an_earlier_runs_metrics_aside_and_a_resumed_one_appends(tmp_path):
    from mpt.train.monitor import Monitor

    def write_step(fresh: bool, loss: float, messages: list) -> None:
        m = Monitor(tmp_path, True, 1.0, None, "", False, fresh=fresh, log=messages.append)
        m.step(1, 2, {"loss": loss, "lr": 0.1, "grad_norm": 1.0}, 8, 0.1, torch.device("cpu"))

    messages: list[str] = []
    write_step(True, 1.0, messages)
    write_step(False, 2.0, messages)       # the same run, resumed: one file
    assert not messages and len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    write_step(True, 3.0, messages)        # another run in the same log folder
    write_step(True, 4.0, messages)
    rows = {p.name: [json.loads(line)["loss"] for line in p.read_text().splitlines()]
            for p in tmp_path.glob("metrics*.jsonl")}
    assert rows == {"metrics-1.jsonl": [1.0, 2.0], "metrics-2.jsonl": [3.0], "metrics.jsonl": [4.0]}
    assert "moved them to metrics-1.jsonl" in messages[0] and "metrics-2.jsonl" in messages[1]
