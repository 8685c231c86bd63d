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


def first_stop(text: str, stops: list[str]) -> str:
    """Reference: the text before the first stop string to complete (the earliest end; list order breaks ties)."""
    for end in range(1, len(text) + 1):
        for s in stops:
            if s and text[:end].endswith(s):
                return text[:end - len(s)]
    return text


def test_stop_strings_match_the_reference_for_any_chunking():
    """Text arrives in random pieces (as tokens do); overlapping, repetitive stops stress the incremental matcher."""
    rng = random.Random(1)
    for _ in range(400):
        alphabet = "ab" if rng.random() < 0.7 else "abc é"
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 6))) for _ in range(rng.randrange(1, 5))]
        pieces = []
        while len("".join(pieces)) < len(text):
            start = len("".join(pieces))
            pieces.append(text[start:start + rng.randrange(1, 5)])
        s = TextStream(lambda ids, pieces=pieces: "".join(pieces[i] for i in ids), stops)
        out = "".join(s.push(i) for i in range(len(pieces))) + s.flush()
        assert out == first_stop(text, stops) == s.text, (text, stops, pieces)
        assert s.stopped == any(st in text for st in stops)
