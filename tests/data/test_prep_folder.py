"""`mpt prep`'s output folder makes it safe to interrupt: a folder of others is refused, and a run killed with
SIGKILL continues where it stopped and matches an uninterrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mpt.data import read_index
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
