"""Shards on a real S3-compatible server (moto's, in its own process on 127.0.0.1): `mpt prep --out s3://`,
streaming through the bounded cache, a cache shared by two readers at once, and clear errors."""

import json
import os
import signal
import subprocess
import sys
import time

import fsspec
import pytest

from mpt.data import DataInputError, Source, StreamConfig, StreamingDataLoader, StreamingDataset, read_index
from mpt.data.prep import PrepConfig, prep
from mpt.data.shards import INDEX_FILE
from mpt.storage import RemoteAccessError, list_files, upload_folder

from .conftest import write_numbered_shards


def first_tokens(url: str, **kw) -> list[int]:
    ds = StreamingDataset(StreamConfig(sources=[Source(url)], batch_size=4, **kw))
    return [x for batch in StreamingDataLoader(ds, **kw.pop("loader", {})) for x in batch[:, 0].tolist()]


def samples(url: str, **kw) -> list[list[int]]:
    ds = StreamingDataset(StreamConfig(sources=[Source(url)], batch_size=4, **kw))
    return [row for batch in StreamingDataLoader(ds) for row in batch.tolist()]


def test_prep_to_s3_then_stream_it_like_the_local_copy(s3_server, shared, neox, tmp_path):
    texts = [json.loads(line)["text"][:20_000] for line in (shared / "data" / "pretrain" / "arxiv_sample.jsonl").open()]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:3]))
    url = f"s3://{s3_server.bucket}/prep/shards"

    def run(out: str):
        return prep(PrepConfig(inputs=[str(src)], out=out, tokenizer=str(neox), seq_len=32, shard_bytes=4096,
                               staging=str(tmp_path / "staging"), progress=False))

    local = tmp_path / "local"
    run(str(local))
    summary = run(url)
    fs = fsspec.filesystem("s3")
    names = sorted(p.name for p in local.iterdir())
    assert list_files(url) == names and len(names) > 5
    assert all(fs.cat(f"{url}/{n}") == (local / n).read_bytes() for n in names)
    assert not (tmp_path / "staging").exists()            # uploaded: the local copy is gone
    assert run(url).samples == summary.samples          # finished: recognised, not redone

    shard_bytes = max(s.bytes for s in read_index(local).shards)
    cached = samples(url, cache_dir=str(tmp_path / "cache"), cache_limit_bytes=3 * shard_bytes)
    assert cached == samples(str(local)) and len(cached) == summary.samples



def test_upload_killed_midway_never_looks_complete_and_the_same_command_finishes_it(s3_server, shared, neox,
                                                                                     tmp_path):
    texts = [json.loads(line)["text"] for line in (shared / "data" / "pretrain" / "arxiv_sample.jsonl").open()]
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": texts[0][:60_000]}) + "\n")      # about 15 k tokens: 30 shards to upload
    url = f"s3://{s3_server.bucket}/killed/shards"
    args = [str(src), "--tokenizer", str(neox), "--seq-len", "16", "--shard-mb", "0.001"]
    env = {**os.environ, **s3_server.env, "TMPDIR": str(tmp_path)}     # its staging folder goes there
    proc = subprocess.Popen([sys.executable, "-m", "mpt.cli", "prep", *args, "--out", url], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    fs = fsspec.filesystem("s3")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        names = list_files(url)
        if sum(n.startswith("shard-") for n in names) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    names = list_files(url)
    assert "index.json" not in names and sum(n.startswith("shard-") for n in names) >= 5
    with pytest.raises(FileNotFoundError, match=r"killed/shards/index.json not found.*finish `mpt prep --out URL`"):
        samples(url, cache_dir=str(tmp_path / "cache"))

    def run(out: str, **kw):
        prep(PrepConfig(inputs=[str(src)], out=out, tokenizer=str(neox), seq_len=16,
                        shard_bytes=int(0.001 * (1 << 20)), progress=False, **kw))

    staging = next(tmp_path.glob("mpt-prep-*"))            # the killed run's, finished before its upload
    run(url, staging=str(staging))                          # the same command again
    assert not staging.exists()
    local = tmp_path / "local"
    run(str(local))
    assert list_files(url) == sorted(p.name for p in local.iterdir())      # (list_files refreshes listings)
    assert all(fs.cat(f"{url}/{p.name}") == p.read_bytes() for p in local.iterdir())


def test_two_readers_share_one_cache_and_eviction_spares_other_files(s3_server, tmp_path):
    local = write_numbered_shards(tmp_path / "numbers", 120, per_shard=10)
    url = f"s3://{s3_server.bucket}/numbers"
    upload_folder(local, url, sorted(p.name for p in local.iterdir()), last=INDEX_FILE)
    shard_bytes = max(s.bytes for s in read_index(local).shards)
    cache = tmp_path / "cache"
    key_dir = cache / "0123456789abcdef"
    key_dir.mkdir(parents=True)
    others = {cache / "notes.txt": b"not a shard", key_dir / "README.md": b"mine",
              cache / "other" / "shard-00000.bin": b"a file that only looks like a shard"}
    for path, data in others.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (1e9, 1e9))       # the least recently used files of the folder: evicted first if counted
    kw = {"cache_dir": str(cache), "cache_limit_bytes": 5 * shard_bytes}     # 12 shards: some are evicted
    a = StreamingDataLoader(StreamingDataset(StreamConfig([Source(url)], batch_size=4, seed=1, **kw)), num_workers=2)
    b = StreamingDataLoader(StreamingDataset(StreamConfig([Source(url)], batch_size=4, seed=2, **kw)), num_workers=2)
    got_a, got_b = [], []
    for batch_a, batch_b in zip(a, b, strict=True):     # both read at once: four processes on one cache
        got_a += batch_a[:, 0].tolist()
        got_b += batch_b[:, 0].tolist()
    assert got_a == first_tokens(str(local), seed=1) and got_b == first_tokens(str(local), seed=2)
    assert sorted(got_a) == sorted(got_b) == list(range(120)) and got_a != got_b
    assert {p: p.read_bytes() for p in others} == others
    cached = [p for p in cache.rglob("shard-*.bin") if p.parent != cache / "other"]
    # each process makes room before it fetches; the other three may fetch at the same time
    assert cached and sum(p.stat().st_size for p in cached) <= (5 + 3) * shard_bytes < 12 * shard_bytes, cached


def test_missing_bucket_and_refused_credentials_are_clear_errors(s3_server, neox, tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "some words"}\n')
    with pytest.raises(RemoteAccessError, match=r"s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist"
                                                r".*Create it first"):
        prep(PrepConfig(inputs=[str(src)], out="s3://no-such-bucket/x", tokenizer=str(neox), progress=False))
    with pytest.raises(RemoteAccessError, match=r"s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist"):
        samples("s3://no-such-bucket/x")
    with pytest.raises(FileNotFoundError, match=r"not-there/index.json not found"):   # a folder without shards
        samples(f"s3://{s3_server.bucket}/not-there", cache_dir=str(tmp_path / "c"))

    url = f"s3://{s3_server.bucket}/denied"
    env = {**os.environ, **s3_server.env, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    run = subprocess.run([sys.executable, "-m", "mpt.cli", "prep", str(src), "--out", url, "--tokenizer", str(neox)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2, run.stderr
    assert f"{url}: access denied" in run.stderr and "AWS_SECRET_ACCESS_KEY" in run.stderr, run.stderr
    assert list_files(url) == []
    # the same for a training run reading shards (a fresh process: fsspec keeps one client per process)
    shards = write_numbered_shards(tmp_path / "numbers", 20)
    upload_folder(shards, url, sorted(p.name for p in shards.iterdir()), last=INDEX_FILE)
    read = ("from mpt.data import Source, StreamConfig, StreamingDataset\n"
            f"StreamingDataset(StreamConfig([Source({url!r})], batch_size=2))")
    run = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True, env=env, timeout=120)
    assert f"RemoteAccessError: {url}: access denied" in run.stderr and "AWS_ACCESS_KEY_ID" in run.stderr, run.stderr


def test_prep_reads_inputs_from_s3_as_from_local_files(s3_server, neox, tmp_path):
    """A prefix of objects (jsonl, gzipped jsonl, text) gives the bytes the same files give locally; a bad
    line in an object is named by its URL and line; a prefix holding nothing is a clear error."""
    import gzip

    local = tmp_path / "in"
    local.mkdir()
    rows = [json.dumps({"text": f"document {i}: " + " ".join(f"word{(i * 7 + k) % 50}" for k in range(40))})
            for i in range(60)]
    (local / "a.jsonl").write_text("\n".join(rows[:30]) + "\n")
    (local / "b.jsonl.gz").write_bytes(gzip.compress(("\n".join(rows[30:]) + "\n").encode()))
    (local / "c.txt").write_text("a plain text file, one document")
    fs = fsspec.filesystem("s3")
    prefix = f"s3://{s3_server.bucket}/inputs"
    fs.put(str(local) + "/", prefix + "/", recursive=True)

    def run(inputs, out, **kw):
        return prep(PrepConfig(inputs=inputs, out=str(tmp_path / out), tokenizer=str(neox), seq_len=32,
                               partition_bytes=2000, progress=False, **kw))

    mine, theirs = run([str(local)], "local"), run([prefix], "s3", workers=2)
    assert (mine.records_read, mine.files) == (theirs.records_read, theirs.files) == (61, 3)
    got = sorted(p.name for p in (tmp_path / "s3").iterdir())
    assert got == sorted(p.name for p in (tmp_path / "local").iterdir())
    for name in got:
        if name != "prep.json":      # the run's claim names its inputs
            assert (tmp_path / "s3" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name

    fs.pipe(f"{prefix}/bad/x.jsonl", (rows[0] + "\n{not json\n").encode())
    with pytest.raises(DataInputError, match=rf"^{prefix}/bad/x.jsonl:2: malformed JSON"):
        run([f"{prefix}/bad/x.jsonl"], "bad")
    with pytest.raises(DataInputError, match=rf"{prefix}/nothing: no .jsonl, .json, .parquet.* files there"):
        run([f"{prefix}/nothing"], "none")
