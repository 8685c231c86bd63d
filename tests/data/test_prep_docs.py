"""`mpt prep --mode docs`: one sample per document, every document back exactly as it went in."""

import json
import unicodedata

import numpy as np
from tokenizers import Tokenizer

from mpt.cli import main
from mpt.data import Shard, read_index


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
