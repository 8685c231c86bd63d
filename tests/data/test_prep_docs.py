"""`mpt prep --mode docs`: one sample per document, every document back exactly as it went in."""

import json
import unicodedata

import numpy as np
import pytest
from tokenizers import Tokenizer

from mpt.cli import main, parse, prep_config
from mpt.data import Shard, read_index
from mpt.data.prep import PrepCommand


def test_docs_mode_round_trips_every_document_exactly(shared, neox, tmp_path, capsys):
    src = shared / "data" / "pretrain" / "arxiv_sample.jsonl"
    texts = [json.loads(line)["text"] for line in src.read_text().splitlines()]
    out = tmp_path / "docs"
    # small tokenizer pieces and small shards: long documents are tokenized in many pieces and most
    # shards hold one document, so the pieces and the shard boundaries are both exercised
    assert main(["prep", str(src), "--out", str(out), "--tokenizer", str(neox), "--mode", "docs",
                 "--chunk-chars", "4000", "--shard-bytes", "40000", "--no-progress"]) == 0
    assert "wrote     20 documents" in capsys.readouterr().out
    index = read_index(out)
    assert (index.mode, index.seq_len, index.num_samples) == ("docs", None, 20) and len(index.shards) >= 15
    samples = [s for info in index.shards for s in Shard(out / info.file, np.dtype("<u2"))]
    tok = Tokenizer.from_file(str(neox))
    for i, (text, sample) in enumerate(zip(texts, samples, strict=True)):
        ids = sample.tolist()
        assert ids == tok.encode(text, add_special_tokens=False).ids + [index.eos_id], i  # whole, in order, EOS
        assert tok.decode(ids[:-1]) == unicodedata.normalize("NFC", text), i   # the tokenizer normalises to NFC
    assert sum(len(s) for s in samples) == index.num_tokens


def test_prep_command_line_errors_name_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["prep", str(tmp_path / "a.jsonl")])
    assert exit_.value.code == 2 and "required: out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prep", "a.jsonl", "--out", "o", "--mode", "pack"])
    assert "invalid choice: 'pack'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="prep needs --out"):
        PrepCommand(inputs=["a.jsonl"]).to_config().validate()
    # a YAML config of the command's own shorthands folds the same way as the flags
    path = tmp_path / "prep.yaml"
    path.write_text("inputs: [a.jsonl]\nout: o\nmode: docs\nshard_mb: 1\nnear_dedup: true\n")
    cfg = prep_config(parse(["prep", "--config", str(path), "--no-progress"]))
    assert (cfg.mode, cfg.shard_bytes, cfg.dedup.near, cfg.progress) == ("docs", 1 << 20, True, False)
