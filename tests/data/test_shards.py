import numpy as np
import pytest

from mpt.data.shards import Shard, ShardError, ShardIndex, ShardWriter, read_index, verify_shard


def test_roundtrip_variable_length_and_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    samples = [rng.integers(0, 70_000, size=n) for n in (1, 5, 300, 7, 2)]
    w = ShardWriter(tmp_path, vocab_size=70_000, eos_id=3, mode="docs", seq_len=None, tokenizer="t",
                    shard_bytes=700)
    for s in samples:
        w.add(s)
    index = w.close()
    assert index.dtype == "uint32" and len(index.shards) >= 2
    assert index.token_dtype() == np.dtype("<u4")  # what readers open the shards with
    got = [x for info in index.shards for x in Shard(tmp_path / info.file, index.token_dtype())]
    assert [g.tolist() for g in got] == [s.tolist() for s in samples]
    again = read_index(tmp_path)
    assert again == index and again.num_samples == 5 and again.num_tokens == sum(map(len, samples))
    for info in index.shards:
        verify_shard(tmp_path / info.file, info)


def test_index_errors_name_the_file(tmp_path):
    (tmp_path / "index.json").write_text('{"format": "other"}')
    with pytest.raises(ShardError, match=r"index.json: format is 'other'"):
        read_index(tmp_path)
    with pytest.raises(FileNotFoundError, match="index.json"):
        read_index(tmp_path / "missing")
    with pytest.raises(ShardError, match="version 9"):
        ShardIndex.from_json('{"format": "mpt-shards", "version": 9, "shards": []}', "x")


def test_the_token_dtype_is_chosen_by_vocabulary_and_read_from_the_index(tmp_path):
    for vocab, name in ((2**16, "uint16"), (2**16 + 1, "uint32")):
        w = ShardWriter(tmp_path / name, vocab_size=vocab, eos_id=0, mode="docs", seq_len=None, tokenizer="t")
        w.add(np.array([0, vocab - 1]))
        index = w.close()
        assert index.dtype == name
        assert Shard(tmp_path / name / index.shards[0].file, index.token_dtype())[0].tolist() == [0, vocab - 1]
    index.dtype = "int8"
    with pytest.raises(ShardError, match="index dtype 'int8'"):
        index.token_dtype()


def test_shards_respect_size_limit(tmp_path):
    w = ShardWriter(tmp_path, vocab_size=100, eos_id=0, mode="concat", seq_len=10, tokenizer="t", shard_bytes=400)
    for _ in range(50):
        w.add(np.arange(10))
    index = w.close()
    assert all(s.bytes <= 400 for s in index.shards) and index.num_samples == 50
    assert sum(s.samples for s in index.shards[:-1]) == 50 - index.shards[-1].samples
