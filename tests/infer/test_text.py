"""Incremental detokenization and stop strings (TextStream)."""

import random

import pytest

from mpt.infer.text import TextStream

TEXT = "Héllo wörld — naïve café 日本語のテキスト 🙂👍🏽 done.\nNew line, tabs\tand   spaces."


def stream(tok, ids, stop=()):
    s = TextStream(lambda x: tok.decode(x, skip_special_tokens=True), stop)
    pieces = [s.push(i) for i in ids]
    pieces.append(s.flush())
    return pieces, s


def test_streamed_text_equals_decoding_everything(llm):
    tok = llm.tokenizer
    ids = tok.encode(TEXT, add_special_tokens=False)
    pieces, s = stream(tok, ids)
    assert "".join(pieces) == TEXT == s.text
    assert all("\ufffd" not in p for p in pieces)  # no half characters were ever emitted


def test_random_token_streams_equal_full_decode(llm):
    tok = llm.tokenizer
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(4, len(tok)) for _ in range(rng.randrange(1, 30))]
        pieces, _ = stream(tok, ids)
        assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("stop", ["wörld", "日本", "🙂", "\nNew", "é"])
def test_stop_string_across_tokens(llm, stop):
    tok = llm.tokenizer
    pieces, s = stream(tok, tok.encode(TEXT, add_special_tokens=False), stop=[stop, "zzz"])
    assert s.stopped and "".join(pieces) == TEXT[:TEXT.index(stop)] == s.text


def test_neox_tokenizer_streams_unicode(shared):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(shared / "tokenizers/gpt-neox-20b/tokenizer.json"),
                                  eos_token="<|endoftext|>")
    ids = tok.encode(TEXT)
    pieces, _ = stream(tok, ids)
    assert "".join(pieces) == TEXT
    pieces, s = stream(tok, ids, stop=["café"])
    assert "".join(pieces) == TEXT[:TEXT.index("café")]
