"""`mpt prep`: formats, modes (``--mode docs`` gives every document back exactly as it went in), errors
naming the file, line and flag, worker processes, and memory bounded for huge records, binary files kept out
of the shards, documents cut where the tokenizer's tokens do not change."""

import gzip
import json
import subprocess
import sys
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from mpt.cli import main, parse, prep_config
from mpt.data import DataInputError, Shard, read_index
from mpt.data.prep import PrepCommand, PrepConfig, prep
from mpt.data.readers import ReadStats, expand_inputs, read_documents

from .conftest import word_tokenizer


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


_PEAK = """
import resource, sys
from mpt.data.prep import PrepConfig, prep
peaks = []
for name in ("small", "big"):   # the small run first: its peak is what the code and the tokenizer cost
    s = prep(PrepConfig(inputs=[f"{sys.argv[1]}/{name}.txt"], out=f"{sys.argv[1]}/{name}", tokenizer=sys.argv[2],
                        seq_len=512, progress=False))
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
print(s.document_tokens, *peaks)
"""


def test_memory_is_bounded_by_the_chunk_not_the_record(tmp_path):
    """One 20 MB record (4 M words) used to peak 1.2 GB above a tiny input's peak with this tokenizer
    (3.1 GB in all with GPT-NeoX's); now the record costs a few copies of its text."""
    word_tokenizer(tmp_path / "tok.json", 1000)
    rng = np.random.default_rng(0)
    words = 4_000_000
    (tmp_path / "big.txt").write_text(" ".join(f"w{i}" for i in rng.integers(0, 1000, words)))
    (tmp_path / "small.txt").write_text("w1 w2 w3")
    run = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path), str(tmp_path / "tok.json")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    tokens, small_kib, big_kib = map(int, run.stdout.split())
    assert tokens == words + 1
    size_mib = (tmp_path / "big.txt").stat().st_size / 2**20
    grown_mib = (big_kib - small_kib) / 1024
    assert grown_mib < 8 * size_mib, f"a {size_mib:.0f} MiB record grew the peak by {grown_mib:.0f} MiB"


def test_long_document_in_pieces_has_the_tokens_of_the_whole(shared, neox, tmp_path):
    src = shared / "data" / "pretrain" / "arxiv_sample.jsonl"
    text = "\n\n".join(json.loads(line)["text"] for line in src.read_text().splitlines()[:6])
    text = text.replace("\r\n", "\n")            # as the reader gives a text file
    assert len(text) > 100_000
    (tmp_path / "long.txt").write_bytes(text.encode())
    s = prep(PrepConfig(inputs=[str(tmp_path / "long.txt")], out=str(tmp_path / "o"), tokenizer=str(neox),
                        mode="docs", chunk_chars=8000, progress=False))
    assert s.samples == 1
    whole = Tokenizer.from_file(str(neox)).encode(text, add_special_tokens=False).ids + [0]
    index = read_index(tmp_path / "o")
    assert Shard(tmp_path / "o" / index.shards[0].file, np.dtype("<u2"))[0].tolist() == whole


def test_binary_file_with_a_text_suffix_is_refused_or_counted(neox, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text("A real text file.")
    (inputs / "b.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(DataInputError, match=r"b.txt: a NUL byte at offset 8: this is a binary file.*--skip-bad"):
        prep(PrepConfig(inputs=[str(inputs)], out=str(tmp_path / "o"), tokenizer=str(neox), mode="docs",
                        progress=False))
    s = prep(PrepConfig(inputs=[str(inputs)], out=str(tmp_path / "o2"), tokenizer=str(neox), mode="docs",
                        skip_bad=True, progress=False))
    assert (s.binary_skipped, s.documents_written, s.samples) == (1, 1, 1)
    assert any("b.txt: binary" in e for e in s.bad_examples)
    assert "1 binary files" in s.lines()[1]
    tok = Tokenizer.from_file(str(neox))
    index = read_index(tmp_path / "o2")
    assert Shard(tmp_path / "o2" / index.shards[0].file, np.dtype("<u2"))[0].tolist() == \
        tok.encode("A real text file.").ids + [0]


def test_tokenizer_whose_tokens_change_at_cuts_gets_whole_documents(tmp_path):
    """A tokenizer that marks the start of every input (Llama-2's Prepend("▁") normalizer) would see a
    marker at each cut, so long documents are not cut for it."""
    from tokenizers import normalizers

    words = [f"w{i}" for i in range(50)]
    vocab = {"<|endoftext|>": 0, "<unk>": 1, "▁": 2, **{f"▁{w}": i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.save(str(tmp_path / "tok.json"))
    text = " ".join(words[i % 50] for i in range(2000))
    (tmp_path / "long.txt").write_text(text)
    prep(PrepConfig(inputs=[str(tmp_path / "long.txt")], out=str(tmp_path / "o"), tokenizer=str(tmp_path / "tok.json"),
                    mode="docs", chunk_chars=1000, progress=False))
    index = read_index(tmp_path / "o")
    got = Shard(tmp_path / "o" / index.shards[0].file, np.dtype("<u2"))[0].tolist()
    assert got == tok.encode(text).ids + [0] and 1 not in got and 2 not in got


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


def test_cli_keeps_values_of_a_field_and_documents_of_enough_paragraphs(tmp_path, capsys):
    """The Stack's language selection (--keep-values) and S2ORC's paragraph rule (--min-paragraphs), run by the
    real command line over jsonl (cut into partitions) and parquet in two worker processes."""
    langs = ["Python", "Go", "Ruby", "Markdown"]
    records = []
    for i in range(120):
        paragraphs = [f"w{i} w{200 + k}\nw{300 + k} w{300 + k}" for k in range(1 + i % 3)]
        records.append({"content": (" \r\n\r\n" if i % 2 else "\n\n\n").join(paragraphs), "lang": langs[i % 4],
                        "id": i})
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:80]))
    pq.write_table(pa.table({k: [r[k] for r in records[80:]] for k in ("content", "lang", "id")}), folder / "b.parquet")
    tok = word_tokenizer(tmp_path / "tok.json", 400)
    out = tmp_path / "out"
    argv = ["prep", str(folder), "--tokenizer", tok, "--text-field", "content", "--keep-values", "lang=Python",
            "--keep-values", "lang=Go", "--min-paragraphs", "2", "--mode", "docs", "--workers", "2",
            "--partition-bytes", "1500", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "by filter: keep_values:lang 60, min_paragraphs 20" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["filtered"] == {"keep_values:lang": 60, "min_paragraphs": 20}
    assert summary["records_read"] == 120 and summary["missing_field_skipped"] == 0
    kept = [r["id"] for r in records if r["lang"] in ("Python", "Go") and 1 + r["id"] % 3 >= 2]
    index = read_index(out)
    firsts = [int(s[0]) - 2 for info in index.shards for s in Shard(out / info.file, np.dtype("<u2"))]
    assert firsts == kept and len(kept) == 40          # each document's first word names it: w{id} is id + 2

    # a record without the field: an error naming the file, line and field; with --skip-bad, counted
    with (folder / "a.jsonl").open("a") as f:
        f.write(json.dumps({"content": "w1 w2", "id": 999}) + "\n")
    assert main([*argv, "--out", str(tmp_path / "o2")]) == 2
    assert (f"{folder / 'a.jsonl'}:81: no field 'lang' (the record has 'content', 'id'), so --keep-values cannot "
            "select it") in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "o3"), "--skip-bad"]) == 0
    summary = json.loads((tmp_path / "o3" / "summary.json").read_text())
    assert (summary["missing_field_skipped"], summary["documents_written"]) == (1, 40)
    assert summary["bad_examples"] == [f"{folder / 'a.jsonl'}:81: no field 'lang'"]
    # the flags' values are checked before any work
    assert main([*argv, "--out", str(tmp_path / "o4"), "--keep-values", "lang"]) == 2
    assert "--keep-values 'lang': expected FIELD=VALUE[,VALUE...]" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "o5"), "--min-paragraphs", "-1"]) == 2
    assert "min_paragraphs=-1 must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "o4").exists() and not (tmp_path / "o5").exists()
