import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from mpt.cli import main
from mpt.data import DataInputError, Shard, read_index
from mpt.data.prep import PrepConfig, prep
from mpt.data.readers import ReadStats, expand_inputs, read_documents


def all_tokens(out) -> np.ndarray:
    index = read_index(out)
    dtype = np.dtype("<u2") if index.dtype == "uint16" else np.dtype("<u4")
    return np.concatenate([np.asarray(Shard(out / s.file, dtype).tokens) for s in index.shards])


def test_prep_arxiv_concat_matches_tokenizer(shared, neox, tmp_path):
    src = shared / "data" / "pretrain" / "arxiv_sample.jsonl"
    out = tmp_path / "out"
    summary = prep(PrepConfig(inputs=[str(src)], out=str(out), tokenizer=str(neox), seq_len=512,
                              shard_bytes=200_000, progress=False))
    tok = Tokenizer.from_file(str(neox))
    texts = [json.loads(line)["text"] for line in src.read_text().splitlines()]
    expected = [i for t in texts for i in tok.encode(t, add_special_tokens=False).ids + [0]]
    index = read_index(out)
    assert index.dtype == "uint16" and index.eos_id == 0 and index.vocab_size == 50277 and index.seq_len == 512
    assert len(index.shards) > 1 and all(s.samples for s in index.shards)
    got = all_tokens(out)
    n = len(expected) // 512 * 512
    np.testing.assert_array_equal(got, expected[:n])            # EOS-joined, packed, nothing reordered
    assert summary.records_read == summary.documents_written == 20
    assert summary.samples == n // 512 and summary.tokens_written == n
    assert summary.tail_tokens_dropped == len(expected) - n
    assert json.loads((out / "summary.json").read_text())["samples"] == summary.samples
    assert summary.lines()[-1].startswith("took ") and "M characters/s" in summary.lines()[-1]
    again = prep(PrepConfig(inputs=[str(src)], out=str(out), tokenizer=str(neox), seq_len=512,
                            shard_bytes=200_000, progress=False))  # a finished folder: nothing to do
    assert again.samples == summary.samples
    assert again.lines()[-1] == ("took      nothing: the folder held this same run, finished (the summary above is "
                                 "the one it wrote)")  # not "0.0 s (4,698,280,000.0 M characters/s)"


def test_prep_docs_mode_formats_and_counts(neox, tmp_path):
    docs = tmp_path / "in"
    docs.mkdir()
    (docs / "a.jsonl").write_text('{"body": "Hello world."}\n\n{"body": "   "}\n{"body": "Hello world."}\n')
    with gzip.open(docs / "b.jsonl.gz", "wt") as f:
        f.write('{"body": "HELLO   world."}\n{"body": "Second document."}\n')
    (docs / "c.json").write_text(json.dumps([{"body": "From a JSON array."}]))
    (docs / "d.txt").write_bytes(b"\xef\xbb\xbfA text file\nwith two lines.")
    pq.write_table(pa.table({"body": ["Parquet row one.", "Parquet row two."]}), docs / "e.parquet")
    (docs / "f.txt").write_bytes(b"bad byte \xff here")
    out = tmp_path / "out"
    s = prep(PrepConfig(inputs=[str(docs)], out=str(out), tokenizer=str(neox), text_field="body", mode="docs",
                        progress=False))
    assert (s.files, s.records_read, s.empty_dropped, s.exact_duplicates, s.invalid_utf8_replaced) == (6, 10, 1, 2, 1)
    assert s.documents_written == s.samples == 7
    tok = Tokenizer.from_file(str(neox))
    index = read_index(out)
    shard = Shard(out / index.shards[0].file, np.dtype("<u2"))
    assert shard[0].tolist() == tok.encode("Hello world.", add_special_tokens=False).ids + [0]
    texts = [tok.decode(shard[i].tolist()[:-1]) for i in range(len(shard))]
    assert texts == ["Hello world.", "Second document.", "From a JSON array.", "A text file\nwith two lines.",
                     "Parquet row one.", "Parquet row two.", "bad byte \ufffd here"]


def test_bad_input_errors_name_file_line_field(tmp_path, neox):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "broken\n{"content": "x", "id": 3}\n')
    with pytest.raises(DataInputError, match=r"bad.jsonl:2: malformed JSON .*--skip-bad"):
        list(read_documents([bad]))
    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "fine"}\n{"content": "x", "id": 3}\n')
    with pytest.raises(DataInputError, match=r"other.jsonl:2: no field 'text'; the record has 'content', 'id'.*--text-field"):
        list(read_documents([other]))
    stats = ReadStats()
    assert [d.text for d in read_documents([bad], skip_bad=True, stats=stats)] == ["fine"]
    assert (stats.bad_json, stats.missing_field) == (1, 1)
    s = prep(PrepConfig(inputs=[str(bad)], out=str(tmp_path / "o"), tokenizer=str(neox), skip_bad=True,
                        seq_len=1, progress=False))
    assert (s.bad_json_skipped, s.missing_field_skipped, s.documents_written) == (1, 1, 1)
    assert any("bad.jsonl:2" in e for e in s.bad_examples)
    number = tmp_path / "n.jsonl"
    number.write_text('{"text": 5}\n')
    with pytest.raises(DataInputError, match=r"n.jsonl:1: field 'text' is a int"):
        list(read_documents([number]))
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"content": ["x"]}), table)
    with pytest.raises(DataInputError, match=r"t.parquet: no column 'text'; the file has 'content'"):
        list(read_documents([table]))
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        expand_inputs([str(tmp_path / "nothing.jsonl")])
    with pytest.raises(DataInputError, match="matches no"):
        expand_inputs([str(tmp_path / "*.csv")])


def test_token_beyond_declared_vocab_is_an_error(neox, tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "plain words"}\n{"text": "zygomorphic"}\n')
    with pytest.raises(DataInputError, match=r"a.jsonl:\d: token id \d+ is outside the declared vocab_size=300"):
        prep(PrepConfig(inputs=[str(src)], out=str(tmp_path / "o"), tokenizer=str(neox), vocab_size=300,
                        progress=False))


def test_existing_output_and_bad_config_fail_before_work(neox, tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="mode='pack'"):
        prep(PrepConfig(inputs=[str(src)], out=str(tmp_path / "o"), mode="pack"))
    first = prep(PrepConfig(inputs=[str(src)], out=str(tmp_path / "o"), tokenizer=str(neox), seq_len=1,
                            progress=False))
    with pytest.raises(ValueError, match=r"o holds a `mpt prep` run made with other arguments or inputs "
                                         r"\(seq_len: 1 there, 2048 now\).*choose another --out"):
        prep(PrepConfig(inputs=[str(src)], out=str(tmp_path / "o"), tokenizer=str(neox), progress=False))
    # the same command again: the finished run is recognised, nothing is rewritten
    again = prep(PrepConfig(inputs=[str(src)], out=str(tmp_path / "o"), tokenizer=str(neox), seq_len=1,
                            progress=False))
    assert again.samples == first.samples and again.tokens_written == first.tokens_written


def test_cli_prep_with_filters(neox, tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    good = " ".join(f"word{i % 97}" for i in range(300))
    src.write_text("\n".join(json.dumps({"text": t}) for t in [good, "too short", good.upper(), "#" * 999]) + "\n")
    out = tmp_path / "o"
    assert main(["prep", str(src), "--out", str(out), "--tokenizer", str(neox), "--mc4", "--seq-len", "64"]) == 0
    printed = capsys.readouterr().out
    assert "by filter: min_words 1, most_common_char_alpha 1" in printed and "1 exact" in printed
    assert json.loads((out / "summary.json").read_text())["filtered"] == {"min_words": 1, "most_common_char_alpha": 1}
    assert main(["prep", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o2"), "--tokenizer", str(neox)]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_hugging_face_dataset_input(neox, tmp_path):
    """hf:NAME goes through datasets.load_dataset(NAME, split=..., streaming=True); a local folder of
    data files takes the same path offline."""
    pytest.importorskip("datasets", reason="hf:NAME inputs need the `datasets` package (pip install 'mpt[hub]')")
    folder = tmp_path / "hfdata"
    folder.mkdir()
    pq.write_table(pa.table({"content": ["First row.", "Second row."], "id": [1, 2]}), folder / "train.parquet")
    out = tmp_path / "o"
    s = prep(PrepConfig(inputs=[f"hf:{folder}"], out=str(out), tokenizer=str(neox), text_field="content",
                        mode="docs", progress=False))
    assert (s.records_read, s.documents_written) == (2, 2)
    tok = Tokenizer.from_file(str(neox))
    assert all_tokens(out).tolist() == [*tok.encode("First row.").ids, 0, *tok.encode("Second row.").ids, 0]
    with pytest.raises(DataInputError, match=r"hf:.*hfdata \(split train\): no column 'text'; the dataset has 'content', 'id'"):
        list(read_documents(expand_inputs([f"hf:{folder}"])))


def test_worker_processes_give_identical_shards(shared, neox, tmp_path):
    from mpt.data import DedupConfig, FilterConfig

    src = shared / "data" / "pretrain" / "arxiv_sample.jsonl"
    docs = [json.loads(line)["text"][:30_000] for line in src.read_text().splitlines()]
    # the papers, then five of them again with their last 2 % cut off: near duplicates to remove
    planted = [d[:int(len(d) * 0.98)] for d in docs[:5]]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs + planted))
    shards = []
    for workers in (1, 2):
        s = prep(PrepConfig(inputs=[str(tmp_path / "in.jsonl")], out=str(tmp_path / f"w{workers}"),
                            tokenizer=str(neox), workers=workers, filters=FilterConfig(min_words=500),
                            dedup=DedupConfig(near=True), seq_len=256, progress=False))
        shards.append([sh.sha256 for sh in read_index(tmp_path / f"w{workers}").shards])
        short = sum(len(t.split()) < 500 for t in docs + planted)
        assert (s.filtered.get("min_words", 0), s.exact_duplicates) == (short, 0)
        assert s.near_duplicates == sum(len(t.split()) >= 500 for t in planted) > 0
        assert s.documents_written == 25 - short - s.near_duplicates
    assert shards[0] == shards[1]
