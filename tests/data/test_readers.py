"""Reading documents. ``read_json_lines``, the one reader of small JSON-lines files (finetuning data, ICL tasks,
the quickstart's chat data), and hostile input for `mpt prep`: pathological JSON, link loops, damaged
archives, decompression bombs and sparse files. Each is a named error (file, line or offset, what to do) or,
with --skip-bad, skipped and counted in summary.json; none takes unbounded time or memory."""

import glob
import gzip
import json
import os
import random
import re
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mpt.cli import main
from mpt.data.prep import PrepConfig, prep
from mpt.data.readers import (
    MAX_RECORD_BYTES,
    DataInputError,
    ReadStats,
    expand_inputs,
    read_documents,
    read_json_lines,
)

from .conftest import word_tokenizer


def run_prep(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `mpt prep ARGV`, run in this process."""
    rc = main(["prep", *map(str, argv), "--no-progress"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_error_line(err: str) -> str:
    """The whole of stderr: one `mpt prep: error:` line, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpt prep: error: "), err[-2000:]
    return lines[0]


# --- 13: JSON nested 100,000 levels deep --------------------------------------------------------------


def test_json_nested_100k_deep_is_a_named_error_or_skipped(neox, tmp_path, capsys):
    """The parser recursed until a 37-line RecursionError with no file or line, even with --skip-bad."""
    deep = "[" * 100_000 + "]" * 100_000
    src = tmp_path / "deep.jsonl"
    src.write_text(f'{{"text": "before"}}\n{{"text": {deep}}}\n{{"text": "after"}}\n')
    rc, _, err = run_prep(capsys, src, "--out", tmp_path / "o", "--tokenizer", neox)
    line = one_error_line(err)
    assert rc == 2 and f"{src}:2: JSON nested more deeply than the parser follows" in line and "--skip-bad" in line

    rc, out, _ = run_prep(capsys, src, "--out", tmp_path / "o2", "--tokenizer", neox, "--skip-bad", "--mode", "docs")
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert rc == 0 and (summary["records_read"], summary["bad_json_skipped"], summary["documents_written"]) == (3, 1, 2)
    assert any(e.startswith(f"{src}:2: JSON nested more deeply") for e in summary["bad_examples"])

    # a JSON array file (parsed whole) nested as deep: the same, for the file
    array = tmp_path / "deep.json"
    array.write_text(f'[{{"text": "x"}}, {deep}]')
    with pytest.raises(DataInputError, match=r"deep.json: JSON nested more deeply.*--skip-bad"):
        list(read_documents([array]))
    stats = ReadStats()
    assert list(read_documents([array], skip_bad=True, stats=stats)) == [] and stats.bad_json == 1

    # parseable but deep (900 levels) as the text: the message shows a few levels, not a recursion
    shallow = tmp_path / "list.jsonl"
    shallow.write_text('{"text": ' + "[" * 900 + "]" * 900 + "}\n")
    with pytest.raises(DataInputError, match=r"list.jsonl:1: field 'text' is a list \(\[\[\[\.\.\.\]\]\]\), not a string"):
        list(read_documents([shallow]))


# --- 14: symlink loops ---------------------------------------------------------------------------------


def test_glob_through_symlink_loops_reads_each_file_once(neox, tmp_path):
    """glob's ** followed `sub/up -> ..` until the path was too long: 41 copies of each file for one
    loop, and a walk without end for two."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "a.jsonl").write_text('{"text": "file a"}\n')
    (root / "sub" / "b.jsonl").write_text('{"text": "file b"}\n')
    (root / "sub" / "up").symlink_to("..")
    pattern = f"{root}/**/*.jsonl"
    want = [root / "a.jsonl", root / "sub" / "b.jsonl"]
    assert expand_inputs([pattern]) == want
    s = prep(PrepConfig(inputs=[pattern], out=str(tmp_path / "o"), tokenizer=str(neox), mode="docs",
                        dedup=_no_dedup(), progress=False))
    assert (s.files, s.records_read, s.documents_written) == (2, 2, 2)

    # a second loop, a link beside its target and two overlapping inputs: still each file once
    (root / "sub" / "self").symlink_to(".")
    (root / "sub" / "deeper").mkdir()
    (root / "sub" / "deeper" / "top").symlink_to("../..")
    (root / "latest.jsonl").symlink_to("a.jsonl")
    code = (f"from mpt.data.readers import expand_inputs; print(*expand_inputs({[pattern, str(root)]!r}), sep='\\n')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(root / "a.jsonl"), str(root / "sub" / "b.jsonl")]

    # a link to a folder not yet walked is followed; its files are listed once, under the link
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "c.jsonl").write_text('{"text": "file c"}\n')
    (root / "ext").symlink_to(outside)
    assert expand_inputs([pattern]) == [root / "a.jsonl", root / "ext" / "c.jsonl", root / "sub" / "b.jsonl"]


def test_glob_without_links_matches_what_glob_matches(tmp_path, monkeypatch):
    """The walk that replaced glob.glob keeps its rules: ** is any number of folders, wildcards skip
    names that start with a dot, a literal dot name matches."""
    for name in ("a/1.jsonl", "a/b/2.jsonl", "a/b/c/3.txt", ".hid/x/4.jsonl", ".h.jsonl", "d/.5.jsonl", "d/6.json",
                 "top.jsonl", "d/e/7.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text('{"text": "x"}\n')
    monkeypatch.chdir(tmp_path)
    patterns = ["*.jsonl", "**/*.jsonl", "**", "*/*", "*/*/*", "a/**/*.txt", "**/b/*", "a*/**/?.jsonl", ".*",
                ".*/**/*.jsonl", "**/.*.jsonl", "[ad]/*.json*", "a/**", "**/**/*.jsonl", "./**/*.txt", "d/**/*.md",
                f"{tmp_path}/**/*.jsonl"]
    for pattern in patterns:
        want = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        assert want, pattern
        got = sorted(map(str, expand_inputs([pattern])))
        assert got == sorted(str(os.path.normpath(p)) for p in dict.fromkeys(want)), pattern


def _no_dedup():
    from mpt.data import DedupConfig

    return DedupConfig(exact=False)


# --- 15: damaged gzip and Parquet files ------------------------------------------------------------------


def _damaged_files(folder):
    """Real damaged files: a gzip cut short (an interrupted download), a gzip with bytes overwritten in its
    deflate data, a .gz that is no gzip, a text file named .parquet, a Parquet file cut short."""
    folder.mkdir()
    lines = "".join(json.dumps({"text": f"line {i} " + "word " * (i % 50)}) + "\n" for i in range(5000))
    whole = gzip.compress(lines.encode())
    (folder / "cut.jsonl.gz").write_bytes(whole[:len(whole) * 6 // 10])
    text = random.Random(0).randbytes(200_000).hex().encode()
    flipped = bytearray(gzip.compress(text))
    flipped[len(flipped) // 2:len(flipped) // 2 + 64] = bytes(range(64))
    (folder / "flipped.txt.gz").write_bytes(bytes(flipped))
    (folder / "plain.jsonl.gz").write_text('{"text": "not gzipped"}\n')
    (folder / "fake.parquet").write_text("a text file with the wrong name\n" * 20)
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(1000)]}), folder / "full.parquet")
    data = (folder / "full.parquet").read_bytes()
    (folder / "cut.parquet").write_bytes(data[:len(data) // 2])
    (folder / "full.parquet").unlink()
    (folder / "good.jsonl").write_text('{"text": "an intact file"}\n')


def test_damaged_gzip_and_parquet_are_named_and_skippable(neox, tmp_path, capsys):
    """They gave `Compressed file ended before the end-of-stream marker was reached` and pyarrow's words,
    without the file's name, and --skip-bad did not skip them."""
    folder = tmp_path / "in"
    _damaged_files(folder)
    expected = {"cut.jsonl.gz": r"cut\.jsonl\.gz:(\d+): the gzip data ends before its end-of-stream marker: the file "
                                r"is cut short\. Copy or download cut\.jsonl\.gz again.*--skip-bad.*the \d[\d,]* lines "
                                r"before the damage are kept",
                "flipped.txt.gz": r"flipped\.txt\.gz \(offset [\d,]+ of the decompressed data\): the gzip data is "
                                  r"corrupt \(.+\).*--skip-bad",
                "plain.jsonl.gz": r"plain\.jsonl\.gz:1: the gzip data is corrupt \(Not a gzipped file.*--skip-bad",
                "fake.parquet": r"fake\.parquet: not a readable Parquet file \(Parquet magic bytes not found.*"
                                r"--skip-bad",
                "cut.parquet": r"cut\.parquet: not a readable Parquet file.*--skip-bad"}
    for name, pattern in expected.items():
        with pytest.raises(DataInputError, match=pattern):
            list(read_documents([folder / name]))

    rc, _, err = run_prep(capsys, folder / "cut.jsonl.gz", "--out", tmp_path / "o", "--tokenizer", neox)
    line = one_error_line(err)
    assert rc == 2 and f"{folder / 'cut.jsonl.gz'}:" in line and "end-of-stream marker" in line
    first_lost = int(re.search(r"cut\.jsonl\.gz:(\d+):", line).group(1))
    assert 2000 < first_lost < 5000

    rc, out, _ = run_prep(capsys, folder, "--out", tmp_path / "o2", "--tokenizer", neox, "--skip-bad", "--mode", "docs")
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert rc == 0 and summary["corrupt_skipped"] == 5 and summary["files"] == 6
    # kept: the lines of cut.jsonl.gz before the damage, and the intact file; flipped.txt.gz was one record read
    assert summary["documents_written"] == (first_lost - 1) + 1
    assert summary["records_read"] == summary["documents_written"] + 1
    for name in expected:
        assert sum(e.startswith(str(folder / name)) for e in summary["bad_examples"]) == 1, name
    assert "5 damaged files" in out


# --- 16: memory for decompression bombs and sparse files -------------------------------------------------

_PEAK = textwrap.dedent("""
    import sys, time
    from mpt.cli import main

    def status(key):
        return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith(key + ":")) / 1024

    # a tiny run first, so that Python, the package and the tokenizer are loaded; then the peak is reset
    # (Linux: 5 to clear_refs), so that memory freed since cannot hide what the run takes
    main(["prep", sys.argv[1], "--out", sys.argv[2] + "-tiny", "--tokenizer", sys.argv[3], "--no-progress"])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base, start = status("VmRSS"), time.perf_counter()
    rc = main(["prep", *sys.argv[4:], "--out", sys.argv[2], "--tokenizer", sys.argv[3], "--no-progress"])
    print("PEAK", rc, base, status("VmHWM"), time.perf_counter() - start)
""")


def peak_of_prep(tmp_path, *argv, timeout=120) -> tuple[int, float, float, float, str]:
    """(exit code, resident MiB before, peak resident MiB, seconds, stderr) of `mpt prep ARGV` in a fresh
    process, after a tiny run has loaded everything."""
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("w1 w2 w3")
    tok = word_tokenizer(tmp_path / "tok.json", 100)
    run = subprocess.run([sys.executable, "-c", _PEAK, str(tiny), str(tmp_path / "out"), tok, *map(str, argv)],
                         capture_output=True, text=True, timeout=timeout)
    line = next((x for x in run.stdout.splitlines() if x.startswith("PEAK")), None)
    assert line, run.stderr[-3000:]
    rc, base, peak, seconds = line.split()[1:]
    return int(rc), float(base), float(peak), float(seconds), run.stderr


def gzip_bomb(path, head: bytes, mib: int, tail: bytes = b"") -> None:
    """A gzip file that expands to ``mib`` MiB (plus head and tail) on about 1 KiB of disk per MiB: one
    compressed MiB of text repeated as gzip members, which a reader joins into one stream."""
    member = gzip.compress(b"w1 " * ((1 << 20) // 3) + b"w" * ((1 << 20) % 3), compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(head))
        for _ in range(mib):
            f.write(member)
        f.write(gzip.compress(tail))


def test_gzip_bomb_stops_at_max_record_bytes(tmp_path):
    """A 1 MB .txt.gz expanding to 1 GiB was read whole, then decoded and cut: 3.5 GB RSS and minutes.
    Now the reading stops at --max-record-bytes (default 256 MiB) with an error naming the file, the
    record and the flag."""
    bomb = tmp_path / "bomb.txt.gz"
    gzip_bomb(bomb, b"", 1024)
    assert bomb.stat().st_size < 2 << 20
    rc, base, peak, seconds, err = peak_of_prep(tmp_path, bomb)
    assert rc == 2 and f"mpt prep: error: {bomb}: this text file (one document, read whole) holds more than " \
                       f"--max-record-bytes {MAX_RECORD_BYTES:,} bytes once decompressed" in err
    assert "pass a larger --max-record-bytes" in err and "--skip-bad" in err
    cap_mib = MAX_RECORD_BYTES / 2**20
    assert peak - base < cap_mib + 64, f"peak {peak:.0f} MiB, {base:.0f} MiB before the bomb"


def test_gzip_bomb_line_is_skipped_and_counted(neox, tmp_path):
    """One jsonl line that expands to 64 MiB, over a 1 MiB --max-record-bytes: skipped and counted with
    --skip-bad, the lines after it kept, and never held (the reading goes past it a piece at a time)."""
    bomb = tmp_path / "bomb.jsonl.gz"
    gzip_bomb(bomb, b'{"text": "first"}\n{"text": "', 64, b'"}\n{"text": "after the bomb"}\n')
    with pytest.raises(DataInputError, match=r"bomb.jsonl.gz:2: the line holds more than --max-record-bytes "
                                             r"1,048,576 bytes once decompressed; pass a larger --max-record-bytes"):
        list(read_documents([bomb], max_record_bytes=1 << 20))
    s = prep(PrepConfig(inputs=[str(bomb)], out=str(tmp_path / "o"), tokenizer=str(neox), mode="docs",
                        skip_bad=True, max_record_bytes=1 << 20, progress=False))
    assert (s.records_read, s.too_large_skipped, s.documents_written) == (3, 1, 2)
    assert s.bad_examples == [f"{bomb}:2: the line over --max-record-bytes 1,048,576 once decompressed"]
    assert "1 over --max-record-bytes" in s.lines()[1]


def test_sparse_3gb_text_file_fails_on_its_first_nul_at_once(tmp_path):
    """A 3 GiB sparse .txt (a hole: NUL bytes on no disk) was read whole, 3 GB of memory, before
    "NUL byte at offset 0". Now the check meets the NUL in the first piece read."""
    sparse = tmp_path / "sparse.txt"
    sparse.write_bytes(b"some text, then a hole")
    os.truncate(sparse, 3 << 30)
    if sparse.stat().st_blocks * 512 > 1 << 20:
        pytest.skip("this file system stores no sparse files")
    rc, base, peak, seconds, err = peak_of_prep(tmp_path, sparse)
    assert rc == 2 and f"mpt prep: error: {sparse}: a NUL byte at offset 22: this is a binary file" in err
    assert peak - base < 32 and seconds < 5, f"{peak - base:.0f} MiB over the baseline, {seconds:.1f} s"
    stats = ReadStats()
    assert list(read_documents([sparse], skip_bad=True, stats=stats)) == [] and stats.binary == 1


def test_max_record_bytes_is_a_validated_flag(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_text("w1 " * 400)
    rc, _, err = run_prep(capsys, src, "--out", tmp_path / "o", "--max-record-bytes", "0")
    assert rc == 2 and "max_record_bytes=0 must be >= 1" in one_error_line(err)
    with pytest.raises(DataInputError, match=r"a.txt: this text file .* more than --max-record-bytes 1,000 bytes;"):
        list(read_documents([src], max_record_bytes=1000))
    assert [len(d.text) for d in read_documents([src], max_record_bytes=1200)] == [1200]


def test_objects_with_their_line_numbers_blank_lines_skipped_and_u2028_kept(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"q": "x\u2028y\u0085z"}\n\n   \n{"q": 2}\r\n', encoding="utf-8")
    assert list(read_json_lines(path)) == [(1, {"q": "x\u2028y\u0085z"}), (4, {"q": 2})]


@pytest.mark.parametrize("line,message", [
    ('{"q": oops}', "malformed JSON (Expecting value at column 7)"),
    ("[1, 2]", "expected a JSON object, got list"),
    ("[" * 100_000 + "]" * 100_000, "JSON nested more deeply than the parser follows"),
])
def test_a_bad_line_names_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "b.jsonl"
    path.write_text('{"ok": 1}\n' + line + "\n")
    with pytest.raises(DataInputError) as err:
        list(read_json_lines(path))
    assert str(err.value).startswith(f"{path}:2: {message}")


# --- field values for --keep-values ----------------------------------------------------------------------


def test_documents_carry_the_requested_fields_from_every_record_format(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"content": "x = 1", "lang": "Python", "stars": 5}\n\n'
                                      '{"content": "# Title", "lang": "Markdown", "stars": 0, "fork": true}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"content": "int main;", "lang": "C", "stars": 12}]))
    pq.write_table(pa.table({"content": ["fn main() {}"], "lang": ["Rust"], "stars": [7]}), tmp_path / "c.parquet")
    files = expand_inputs([str(tmp_path)])
    docs = list(read_documents(files, "content", fields=("lang", "stars")))
    assert [(d.text, d.line, d.fields) for d in docs] == [
        ("x = 1", 1, {"lang": "Python", "stars": "5"}), ("# Title", 3, {"lang": "Markdown", "stars": "0"}),
        ("int main;", 1, {"lang": "C", "stars": "12"}), ("fn main() {}", 1, {"lang": "Rust", "stars": "7"})]
    assert [d.fields for d in read_documents([tmp_path / "a.jsonl"], "content", fields=("fork",), skip_bad=True)] \
        == [{"fork": "true"}]                             # a boolean as JSON writes it; the first record lacks it
    assert all(d.fields == {} for d in read_documents(files, "content"))      # nothing asked, nothing carried
    # the text field itself may be selected by: one column read, both handed over
    assert [d.fields for d in read_documents([tmp_path / "c.parquet"], "lang", fields=("lang",))] == [{"lang": "Rust"}]


def test_a_record_without_the_selected_field_is_a_bad_record(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"content": "a", "lang": "Go"}\n{"content": "b", "ext": "go"}\n{"content": "c", "lang": null}\n'
                   '{"content": "d", "lang": ["Go"]}\n{"content": "e", "lang": "Go"}\n')
    with pytest.raises(DataInputError) as err:
        list(read_documents([src], "content", fields=("lang",)))
    assert str(err.value) == (f"{src}:2: no field 'lang' (the record has 'content', 'ext'), so --keep-values cannot "
                              "select it; fix the field name, or pass --skip-bad to skip and count such records")
    stats = ReadStats()
    assert [d.text for d in read_documents([src], "content", fields=("lang",), skip_bad=True, stats=stats)] == ["a", "e"]
    assert (stats.records, stats.missing_field) == (5, 3)
    assert stats.bad_examples == [f"{src}:2: no field 'lang'", f"{src}:3: field 'lang' is None",
                                  f"{src}:4: field 'lang' is ['Go']"]
    array = tmp_path / "in.json"
    array.write_text(json.dumps([{"content": "a", "lang": "Go"}, {"content": "b"}]))
    with pytest.raises(DataInputError, match=re.escape(f"{array} (array element 2): no field 'lang' (the record has "
                                                       "'content'), so --keep-values cannot select it")):
        list(read_documents([array], "content", fields=("lang",)))
    # Parquet: a file without the column, or a null in it
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"content": ["a", "b"], "ext": ["go", "rs"]}), table)
    with pytest.raises(DataInputError, match=re.escape(f"{table}: no column 'lang' to select by (--keep-values); "
                                                       "the file has 'content', 'ext'")):
        list(read_documents([table], "content", fields=("lang",)))
    nulls = tmp_path / "n.parquet"
    pq.write_table(pa.table({"content": ["a", "b"], "lang": ["Go", None]}), nulls)
    with pytest.raises(DataInputError, match=re.escape(f"{nulls} row 2: column 'lang' is None, not a string or an "
                                                       "integer, so --keep-values cannot select it")):
        list(read_documents([nulls], "content", fields=("lang",)))
    stats = ReadStats()
    assert [d.text for d in read_documents([nulls], "content", fields=("lang",), skip_bad=True, stats=stats)] == ["a"]
    assert stats.missing_field == 1
    # a text file has no fields at all
    txt = tmp_path / "notes.md"
    txt.write_text("# notes")
    with pytest.raises(DataInputError, match=re.escape(f"{txt}: a text file has no field 'lang', so --keep-values "
                                                       "cannot select it")):
        list(read_documents([txt], fields=("lang",)))
    stats = ReadStats()
    assert list(read_documents([txt], fields=("lang",), skip_bad=True, stats=stats)) == []
    assert (stats.records, stats.missing_field) == (1, 1)
