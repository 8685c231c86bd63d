"""`mpt eval` end to end: the full 12-task suite on mpt-tiny over small subsets, outputs, errors."""

import json

import torch

from mpt import MPTForCausalLM
from mpt.cli import main
from mpt.model.hf import save_pretrained
from mpt.presets import load_model_config

from .conftest import neox_tokenizer, write_jsonl


def test_full_suite_on_mpt_tiny(tmp_path, eval_data, capsys):
    torch.manual_seed(0)
    model_dir = tmp_path / "mpt-tiny"
    save_pretrained(MPTForCausalLM(load_model_config("mpt-tiny")), model_dir)
    neox_tokenizer().save_pretrained(model_dir)
    out_json, out_md, out_ex = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "ex.jsonl"
    rc = main(["eval", str(model_dir), "--tasks", "mpt7b", "--data-dir", str(eval_data), "--limit", "3",
               "--output", str(out_json), "--markdown", str(out_md), "--examples", str(out_ex), "--no-progress"])
    assert rc == 0
    data = json.loads(out_json.read_text())
    assert len(data["tasks"]) == 14  # 12 tasks; arc_challenge and hellaswag at two few-shot counts
    for key, t in data["tasks"].items():
        assert t["n"] == 3 and 0.0 <= t["accuracy"] <= 1.0, key
    # mpt-tiny's window is 256 tokens: 25-shot ARC must lose demonstrations, and says so
    assert data["tasks"]["arc_challenge/25-shot"]["fewshot_dropped"] == 3
    assert set(data["gauntlet"]["categories"]) == {"world_knowledge", "commonsense_reasoning",
                                                   "language_understanding", "reading_comprehension"}
    assert "core_average" in data["gauntlet"]["averages"]
    assert data["tasks"]["mmlu/5-shot"]["categories"]  # per-category results
    rows = [json.loads(line) for line in out_ex.read_text().splitlines()]
    assert len(rows) == 42 and {"prompt", "gold", "prediction", "correct"} <= set(rows[0])
    assert "| piqa/0-shot | multiple_choice |" in out_md.read_text()
    printed = capsys.readouterr().out
    assert "gauntlet/core_average" in printed and "examples/s" in printed


def test_bare_file_and_bad_line_error(tmp_path, tiny_mpt_dir, capsys):
    good = write_jsonl(tmp_path / "copa_like.jsonl",
                       [{"query": "It rained, therefore", "choices": ["the ground got wet.", "it was sunny."],
                         "gold": 0}] * 2)
    assert main(["eval", str(tiny_mpt_dir), "--tasks", str(good), "--no-progress"]) == 0
    assert "copa_like/0-shot" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + '{"query": "q", "choices": ["a", "b"], "gold": 5}\n')
    assert main(["eval", str(tiny_mpt_dir), "--tasks", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:3: field 'gold' = 5 is out of range" in err
