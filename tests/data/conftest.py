import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
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


def semantic_corpus(n_docs: int = 40, n_copies: int = 10, seed: int = 0) -> tuple[list[str], list[int]]:
    """Distinct documents, then near-copies of some of them (case, whitespace, two words swapped)
    inserted after their originals; returns the texts and the copies' indices."""
    rng = random.Random(seed)
    words = [f"w{i}x{rng.randrange(10**6)}" for i in range(400)]
    docs = [" ".join(rng.sample(words, 30)) for _ in range(n_docs)]
    out: list[tuple[str, bool]] = [(d, False) for d in docs]
    for k in range(n_copies):
        toks = docs[k].split()
        i, j = rng.sample(range(len(toks)), 2)
        toks[i], toks[j] = toks[j], toks[i]
        copy = "  ".join(toks)
        copy = copy.upper() if k % 2 else copy.capitalize()
        at = rng.randrange(k + 1, len(out) + 1)       # somewhere after the original
        while any(t == docs[k] for t, _ in out[at:]):
            at += 1
        out.insert(at, (copy, True))
    return [t for t, _ in out], [i for i, (_, c) in enumerate(out) if c]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A tiny random BERT and a lower-casing word-level tokenizer whose vocabulary is semantic_corpus()'s
    words (semantic dedup's tests)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    texts, _ = semantic_corpus()
    vocab = ["[PAD]", "[UNK]", *sorted({w.lower() for t in texts for w in t.split()})]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(folder)

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    return str(folder)
