import os
import random

import fsspec
import numpy as np
import pytest

from mpt.data import ShardError, Source, StreamConfig, StreamingDataLoader, StreamingDataset
from mpt.data.shards import read_index

from .conftest import write_numbered_shards


def make(url, batch_size=4, **kw) -> StreamingDataset:
    sources = kw.pop("sources", None) or [Source(str(url))]
    return StreamingDataset(StreamConfig(sources=sources, batch_size=batch_size, shuffle_block=25, **kw))


def run_steps(url, world, workers, batch_size=4, state=None, steps=None, **kw) -> list[list[int]]:
    """Samples of each training step over all ranks, in global order (rank r's j-th sample is position r + W*j)."""
    per_rank = []
    for r in range(world):
        ds = make(url, batch_size, rank=r, world_size=world, **kw)
        if state is not None:
            ds.load_state_dict(state)
        loader = StreamingDataLoader(ds, num_workers=workers)
        per_rank.append([b[:, 0].tolist() for b in loader][:steps])
    out = []
    for step in zip(*per_rank, strict=True):
        merged = [None] * sum(len(b) for b in step)
        for r, b in enumerate(step):
            merged[r::world] = b
        out.append(merged)
    return out


@pytest.fixture
def data(tmp_path):
    return write_numbered_shards(tmp_path / "data", 103)


def test_order_identical_for_any_ranks_and_workers(data):
    ds = make(data)
    reference = [ds.locate(0, i)[1] for i in range(ds.epoch_length())]
    assert sorted(reference) == list(range(103))              # every sample exactly once per epoch
    assert reference != list(range(103))                       # and shuffled
    for world in (1, 2, 4):
        for workers in (0, 2):
            flat = [x for step in run_steps(data, world, workers) for x in step]
            pad = -len(reference) % world
            assert flat == reference + reference[:pad], (world, workers)


def test_shuffle_crosses_shards_and_changes_per_epoch_and_seed(data):
    ds = make(data)
    first_block = [ds.locate(0, i)[1] for i in range(25)]
    assert len({i // 10 for i in first_block}) >= 3             # one shuffle block mixes samples of several shards
    assert [ds.locate(1, i)[1] for i in range(103)] != [ds.locate(0, i)[1] for i in range(103)]
    other = make(data, seed=1)
    assert [other.locate(0, i)[1] for i in range(103)] != [ds.locate(0, i)[1] for i in range(103)]


def test_exact_resume_mid_epoch_also_with_new_world_size(data):
    rng = random.Random(0)
    full = [x for step in run_steps(data, 1, 0) for x in step]
    for _ in range(3):
        world, k = rng.choice([1, 2]), rng.randrange(1, 10)
        ds = make(data, rank=0, world_size=world)
        loader = StreamingDataLoader(ds, num_workers=2)
        it = iter(loader)
        for _ in range(k):
            next(it)
        state = loader.state_dict()
        assert state["sample_in_epoch"] == k * 4 * world
        new_world = rng.choice([1, 2, 4])
        rest = [x for step in run_steps(data, new_world, 2, state=state) for x in step]
        done = k * 4 * world
        pad = -(103 - done) % new_world
        assert rest == full[done:] + full[:pad], (world, k, new_world)


def test_epochs_advance_after_a_full_pass(data):
    ds = make(data)
    loader = StreamingDataLoader(ds)
    e0 = [x for b in loader for x in b[:, 0].tolist()]
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["sample_in_epoch"] == 0
    e1 = [x for b in loader for x in b[:, 0].tolist()]
    assert sorted(e0) == sorted(e1) == list(range(103)) and e0 != e1


def test_resume_rejects_other_dataset(data, tmp_path):
    state = make(data).state_dict()
    other = make(write_numbered_shards(tmp_path / "other", 50))
    with pytest.raises(ValueError, match="sizes"):
        other.load_state_dict(state)


def test_mixing_proportions_and_policies(tmp_path):
    a = write_numbered_shards(tmp_path / "a", 300)
    b = write_numbered_shards(tmp_path / "b", 40, offset=10_000)
    sources = [Source(str(a), 0.7), Source(str(b), 0.3)]
    ds = make(None, sources=sources, mix_block=100, epoch_size=1000)
    order = [x for batch in StreamingDataLoader(ds, num_workers=2) for x in batch[:, 0].tolist()]
    assert len(order) == 1000
    from_b = [x for x in order if x >= 10_000]
    assert len(from_b) == 300                                   # exact per block of 100
    for w in range(0, 1000, 100):                               # ... and in every block
        assert sum(x >= 10_000 for x in order[w:w + 100]) == 30
    assert sorted(from_b[:40]) == list(range(10_000, 10_040))   # source b repeats in whole reshuffled passes
    assert from_b[:40] != from_b[40:80]
    # with "stop", the epoch ends just before b would need a 41st sample
    stop = make(None, sources=[Source(str(a), 0.7), Source(str(b), 0.3, "stop")], mix_block=100)
    order = [x for batch in StreamingDataLoader(stop) for x in batch[:, 0].tolist()]
    assert sum(x >= 10_000 for x in order) == 40
    assert 120 <= len(order) < 140 and len(set(order)) == len(order)


def test_memory_and_file_urls_with_bounded_cache(data, tmp_path):
    fs = fsspec.filesystem("memory")
    for p in sorted(data.iterdir()):
        fs.pipe(f"/mptdata/{p.name}", p.read_bytes())
    shard_bytes = max(s.bytes for s in read_index(data).shards)
    cache = tmp_path / "cache"
    reference = [x for b in StreamingDataLoader(make(data)) for x in b[:, 0].tolist()]
    for url in ("memory://mptdata", f"file://{data}"):
        ds = make(url, cache_dir=str(cache), cache_limit_bytes=3 * shard_bytes)
        got, biggest = [], 0
        for batch in StreamingDataLoader(ds):
            got += batch[:, 0].tolist()
            biggest = max(biggest, sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()))
        assert got == reference, url
        if url.startswith("memory"):
            assert 0 < biggest <= 3 * shard_bytes
    # workers share the cache without locks
    ds = make("memory://mptdata", cache_dir=str(tmp_path / "c2"), cache_limit_bytes=4 * shard_bytes)
    assert [x for b in StreamingDataLoader(ds, num_workers=2) for x in b[:, 0].tolist()] == reference
    # a damaged cached copy is fetched again (the remote copy is fine)
    cached = next((tmp_path / "c2").rglob("shard-*.bin"))
    cached.write_bytes(b"garbage")
    ds = make("memory://mptdata", cache_dir=str(tmp_path / "c2"), cache_limit_bytes=4 * shard_bytes)
    assert [x for b in StreamingDataLoader(ds) for x in b[:, 0].tolist()] == reference


def test_corrupt_shard_is_detected_by_checksum(data, tmp_path):
    victim = data / "shard-00003.bin"
    raw = bytearray(victim.read_bytes())
    raw[-5] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match="shard-00003.bin.*corrupt"):
        list(StreamingDataLoader(make(data)))
    fs = fsspec.filesystem("memory")
    for p in sorted(data.iterdir()):
        fs.pipe(f"/corrupt/{p.name}", p.read_bytes())
    with pytest.raises(ShardError, match="memory://corrupt/shard-00003.bin"):
        list(StreamingDataLoader(make("memory://corrupt", cache_dir=str(tmp_path / "c"))))
    os.truncate(victim, 100)
    with pytest.raises(ShardError, match="truncated"):
        list(StreamingDataLoader(make(data)))


def test_unverified_reader_matches_and_tokens_are_exact(data):
    ds = make(data, shuffle=False, verify=False)
    batch = next(iter(StreamingDataLoader(ds)))
    assert batch.dtype.is_floating_point is False
    np.testing.assert_array_equal(batch.numpy(), np.repeat(np.arange(4)[:, None], 8, axis=1))


def test_bad_config_is_rejected_before_work(data):
    with pytest.raises(ValueError, match="proportion"):
        make(None, sources=[Source(str(data), 0)])
    with pytest.raises(ValueError, match="on_exhausted"):
        make(None, sources=[Source(str(data), 1, "again")])
    with pytest.raises(FileNotFoundError, match="index.json"):
        make(data / "nope")
    with pytest.raises(ValueError, match="persistent_workers"):
        StreamingDataLoader(make(data), num_workers=1, persistent_workers=True)


def test_whole_document_shards_batch_as_lists(tmp_path):
    from mpt.data.shards import ShardWriter

    w = ShardWriter(tmp_path / "docs", vocab_size=100, eos_id=0, mode="docs", seq_len=None, tokenizer="t")
    for n in range(1, 8):
        w.add(np.full(n, n))
    w.close()
    batches = list(StreamingDataLoader(make(tmp_path / "docs", batch_size=3), num_workers=2))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(len(t) for b in batches for t in b) == list(range(1, 8))
    assert all(t.tolist() == [len(t)] * len(t) for b in batches for t in b)
