"""`mpt quickstart --size ci` end to end: the report exists with a loss curve, perplexities and samples."""

import json

import pytest
import yaml

from mpt.cli import main
from mpt.quickstart import Quickstart, QuickstartConfig


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart") / "qs"
    assert main(["quickstart", "--out", str(out), "--size", "ci"]) == 0
    return out


def test_quickstart_ci_size_end_to_end_and_resumes(ci_run, capsys):
    out = ci_run
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
    """--data and --tokenizer (hub names when online) take the same code path as these local files.

    The data stages only: training, export and the rest are the same code whatever the tokenizer, and run
    end to end in the test above (the GPT-NeoX vocabulary made this test the suite's slowest)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for line in (shared / "data" / "pretrain" / "arxiv_sample.jsonl").read_text().splitlines()[:10]:
        text = json.loads(line)["text"]
        for i in range(0, min(len(text), 40_000), 4000):
            (docs / f"part{len(list(docs.iterdir())):03d}.txt").write_text(text[i:i + 4000])
    tok = shared / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
    out = tmp_path / "qs"
    qs = Quickstart(QuickstartConfig(out=str(out), size="ci", data=[str(docs)], tokenizer=str(tok)))
    out.mkdir()
    qs.corpus()
    qs.tokenizer()
    qs.shards()
    assert qs.vocab_size() == 50304  # 50,277 tokens padded to a multiple of 128
    assert yaml.safe_load(qs._recipe("alibi", {}).read_text())["model"]["fields"]["vocab_size"] == 50304
    lines = (out / "corpus" / "train.jsonl").read_text().splitlines()
    assert lines and all(json.loads(x)["source"].startswith(str(docs)) for x in lines)
    index = json.loads((out / "shards" / "train" / "index.json").read_text())
    assert sum(s["samples"] for s in index["shards"]) > 0


@pytest.mark.parametrize("tokenizer", [None, "some/tokenizer.json"])
def test_the_reproduce_block_holds_only_commands_and_comments(tmp_path, tokenizer):
    qs = Quickstart(QuickstartConfig(out=str(tmp_path), size="ci", tokenizer=tokenizer, eval_tasks=["t.jsonl"]))
    lines = [line for cmds in qs.commands().values() for line in cmds]
    assert len(lines) >= 7 and all(line.startswith(("mpt ", "# ")) for line in lines), lines
    assert f"--seed {qs.cfg.seed}" in qs.commands()["samples"][0]


def test_quickstart_finetune_stage_chat_tunes_with_lora_and_lowers_held_out_response_perplexity(ci_run, shared,
                                                                                                capsys):
    """--finetune added to a finished quickstart: the earlier stages are skipped, the new one runs."""
    dolly = shared / "data" / "finetune" / "dolly_hhrlhf_small.jsonl"
    out = ci_run
    capsys.readouterr()
    assert main(["quickstart", "--out", str(out), "--size", "ci", "--finetune", str(dolly)]) == 0
    log = capsys.readouterr().out
    assert log.count("done earlier") == 7
    assert "[8/9] finetune" in log and "LoRA r=8" in log and "trainable parameters" in log
    result = json.loads((out / "finetune" / "result.json").read_text())
    assert result["conversations"]["validation"] > 0 and result["steps"] == 12
    assert result["perplexity_after"] < result["perplexity_before"]
    assert len(result["replies"]) == 3 and all(r["user"] for r in result["replies"])
    assert (out / "finetune" / "loss_curve.png").stat().st_size > 5000  # the response-only loss
    train_line = json.loads((out / "finetune" / "data" / "train.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in train_line["messages"]] == ["user", "assistant"]
    assert "### Instruction" not in train_line["messages"][0]["content"]  # the template is unwrapped
