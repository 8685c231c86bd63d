from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers

from mpt.data.shards import ShardWriter


def write_numbered_shards(out: Path, n: int, seq_len: int = 8, per_shard: int = 10, offset: int = 0) -> Path:
    """Real shards whose sample i is [offset + i, offset + i, ...]: the first token names the sample."""
    w = ShardWriter(out, vocab_size=1 << 20, eos_id=0, mode="concat", seq_len=seq_len, tokenizer="numbers",
                    shard_bytes=16 + 8 * (per_shard + 1) + per_shard * seq_len * 4)
    for i in range(n):
        w.add(np.full(seq_len, offset + i, dtype=np.int64))
    index = w.close()
    assert [s.samples for s in index.shards[:-1]] == [per_shard] * (len(index.shards) - 1)
    return out


def word_tokenizer(path: Path, words: int | Iterable[str]) -> str:
    """A word-level tokenizer saved at ``path`` (EOS 0, [UNK] 1, then ``words``; a count n gives w0 .. w{n-1}):
    it loads in a blink and costs next to no memory, so a test measures the reading, not the tokenizer."""
    names = [f"w{i}" for i in range(words)] if isinstance(words, int) else list(words)
    tok = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(names)}},
                                     unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return str(path)
