"""`mpt quickstart --size ci` end to end: the report exists with a loss curve, perplexities and samples."""

import json

import pytest

from mpt.cli import main
from mpt.quickstart import Quickstart, QuickstartConfig


def test_quickstart_ci_size_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--size", "ci"]) == 0
    report = (out / "report.md").read_text()
    assert (out / "loss_curves.png").stat().st_size > 5000 and "![loss curves](loss_curves.png)" in report
    assert "| window | ALiBi perplexity | learned-position twin perplexity |" in report
    assert report.count("```python") == 4  # the samples
    assert "mpt train " in report and "mpt prep " in report  # how to redo each stage by hand
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    ppl = json.loads((out / "evaluation.json").read_text())["perplexity"]
    assert set(ppl["alibi"]) == set(ppl["learned_pos_emb"]) and len(ppl["alibi"]) == 3
    # exported model loads with plain transformers
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "model")
    # running it again skips every finished stage
    capsys.readouterr()
    assert main(["quickstart", "--out", str(out), "--size", "ci"]) == 0
    log = capsys.readouterr().out
    assert log.count("done earlier") == 7


def test_quickstart_refuses_a_foreign_non_empty_folder(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["quickstart", "--out", str(tmp_path)]) == 2
    assert "is not empty and holds no quickstart run" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("size", ["ci"])
def test_quickstart_refuses_another_size_in_the_same_folder(tmp_path, capsys, size):
    (tmp_path / "quickstart.json").write_text(json.dumps({"size": size}))
    assert main(["quickstart", "--out", str(tmp_path), "--size", "full"]) == 2
    assert "holds a quickstart with size='ci'" in capsys.readouterr().err


def test_quickstart_with_given_data_and_tokenizer(tmp_path, shared):
    """--data and --tokenizer (hub names when online) take the same code path as these local files."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for line in (shared / "data" / "pretrain" / "arxiv_sample.jsonl").read_text().splitlines()[:10]:
        text = json.loads(line)["text"]
        for i in range(0, min(len(text), 40_000), 4000):
            (docs / f"part{len(list(docs.iterdir())):03d}.txt").write_text(text[i:i + 4000])
    tok = shared / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--size", "ci", "--data", str(docs), "--tokenizer", str(tok)]) == 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["vocab_size"] == 50304  # 50,277 tokens padded to a multiple of 128
    assert (out / "model" / "tokenizer.json").is_file()
    lines = (out / "corpus" / "train.jsonl").read_text().splitlines()
    assert all(json.loads(x)["source"].startswith(str(docs)) for x in lines)


@pytest.mark.parametrize("tokenizer", [None, "some/tokenizer.json"])
def test_the_reproduce_block_holds_only_commands_and_comments(tmp_path, tokenizer):
    qs = Quickstart(QuickstartConfig(out=str(tmp_path), size="ci", tokenizer=tokenizer, eval_tasks=["t.jsonl"]))
    lines = [line for cmds in qs.commands().values() for line in cmds]
    assert len(lines) >= 7 and all(line.startswith(("mpt ", "# ")) for line in lines), lines
    assert f"--seed {qs.cfg.seed}" in qs.commands()["samples"][0]
