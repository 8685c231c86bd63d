"""`mpt prep` is safe to interrupt: atomic files, a claimed output folder, resumption after SIGKILL,
memory bounded for huge records, binary files kept out of the shards."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from mpt.data import DataInputError, Shard, read_index
from mpt.data.prep import PrepConfig, prep
from mpt.data.prep_folder import PROGRESS_FILE, OutputFolderError


def files_of(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_folder_of_others_is_refused_and_left_untouched(neox, tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "some words"}\n')
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"mine": true}')
    with pytest.raises(OutputFolderError, match=r"out is not empty and holds no `mpt prep` run \(summary.json\); "
                                                r"choose an empty or new --out"):
        prep(PrepConfig(inputs=[str(src)], out=str(out), tokenizer=str(neox), seq_len=2, progress=False))
    assert files_of(out) == {"summary.json": b'{"mine": true}'}
    # a finished run of ours with someone's file put beside it: refused too, the file named
    mine = tmp_path / "mine"
    prep(PrepConfig(inputs=[str(src)], out=str(mine), tokenizer=str(neox), seq_len=2, progress=False))
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputFolderError, match=r"mine holds files that `mpt prep` did not write \(notes.txt\)"):
        prep(PrepConfig(inputs=[str(src)], out=str(mine), tokenizer=str(neox), seq_len=2, progress=False))
    assert (mine / "notes.txt").read_text() == "keep me"
    # the same arguments over a changed input: not the same run
    (mine / "notes.txt").unlink()
    src.write_text('{"text": "other words, more of them"}\n')
    with pytest.raises(OutputFolderError, match=r"mine holds a `mpt prep` run of these inputs as they were before "
                                                r"\(\[.*a.jsonl', 23, .*\] there, \[.*a.jsonl', 38, .*\] now"):
        prep(PrepConfig(inputs=[str(src)], out=str(mine), tokenizer=str(neox), seq_len=2, progress=False))


@pytest.mark.parametrize("mode", ["concat", "docs"])
def test_sigkill_then_rerun_continues_and_matches_an_uninterrupted_run(shared, neox, tmp_path, mode):
    texts = [json.loads(line)["text"] for line in (shared / "data" / "pretrain" / "arxiv_sample.jsonl").open()]
    if mode == "docs":
        texts = [p for t in texts for p in t.split("\n\n") if p.strip()]   # many documents: many shards
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:400 if mode == "docs" else 3]))
    args = [str(src), "--tokenizer", str(neox), "--mode", mode, "--seq-len", "16", "--shard-mb", "0.002"]
    reference = tmp_path / "reference"
    prep(PrepConfig(inputs=[str(src)], out=str(reference), tokenizer=str(neox), mode=mode, seq_len=16,
                    shard_bytes=int(0.002 * (1 << 20)), progress=False))
    total = len(read_index(reference).shards)
    assert total > 25

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mpt.cli", "prep", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = out / PROGRESS_FILE
    deadline = time.monotonic() + 120
    finished = []
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            finished = json.loads(progress.read_text())["shards"]
        except (FileNotFoundError, json.JSONDecodeError):
            finished = []
        if len(finished) >= 5:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not (out / "index.json").exists(), "killed before the end: the folder must not look complete"
    finished = json.loads(progress.read_text())["shards"]       # as the rerun will read it
    assert 5 <= len(finished) < total
    kept = {s["file"]: os.stat(out / s["file"]).st_ino for s in finished}

    # a copy whose finished shard was damaged since: not continued; the message says what to delete
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    victim = damaged / finished[2]["file"]
    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.raises(OutputFolderError, match=rf"{victim} has .* but the interrupted run wrote .* delete the "
                                                rf"folder {damaged} and rerun"):
        prep(PrepConfig(inputs=[str(src)], out=str(damaged), tokenizer=str(neox), mode=mode, seq_len=16,
                        shard_bytes=int(0.002 * (1 << 20)), progress=False))

    prep(PrepConfig(inputs=[str(src)], out=str(out), tokenizer=str(neox), mode=mode, seq_len=16,
                    shard_bytes=int(0.002 * (1 << 20)), progress=False))      # the same command again
    # the finished shards were kept as they were (same files), not written again
    assert {f: os.stat(out / f).st_ino for f in kept} == kept
    assert files_of(out) == files_of(reference)


def word_tokenizer(path) -> None:
    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(1000)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))


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
    word_tokenizer(tmp_path / "tok.json")
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
