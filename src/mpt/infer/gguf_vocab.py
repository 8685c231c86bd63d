"""The tokenizer half of a GGUF file: a byte-level BPE tokenizer as llama.cpp's ``gpt2`` vocabulary.

llama.cpp chooses its pre-tokenizer by the name in ``tokenizer.ggml.pre``; its own converter guesses
that name from a hash of sample encodings and refuses tokenizers it has not seen (ours from ``mpt
tokenizer train`` among them). We write ``mpt`` (GPT-2's split regex on bytes) after checking that
the tokenizer's pipeline splits exactly so, and refuse one that llama.cpp would tokenize differently.
Special tokens become CONTROL, other added tokens (GPT-NeoX's runs of spaces) USER_DEFINED, ids the
tokenizer lacks up to the model's vocab_size UNUSED placeholders.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

# llama.cpp's name for the pre-tokenizer of GPT-NeoX-20B / MPT-7B (GPT-2's regex, no prefix space).
PRE_TOKENIZER = "mpt"

# transformers' {% generation %} markers only tell its assistant-mask code where replies are;
# plain Jinja (llama-cpp-python's chat formatter) rejects them as unknown tags.
_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


class GGUFExportError(ValueError):
    """Something llama.cpp cannot represent (or compute the same way); found before any file is written."""


@dataclass
class GGUFVocab:
    tokens: list[str]
    token_types: list[int]       # gguf.TokenType values, one per token
    merges: list[str]            # "left right", in rank order
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int
    add_bos: bool
    add_eos: bool
    chat_template: str | None
    pre: str = PRE_TOKENIZER


def find_tokenizer(src: str | Path, tokenizer: str | Path | None) -> Path:
    """The tokenizer file or folder to export: ``tokenizer`` when given, else the checkpoint folder's own."""
    where = Path(tokenizer) if tokenizer is not None else Path(src)
    file = where if where.is_file() else where / "tokenizer.json"
    if not file.is_file():
        raise GGUFExportError(f"no tokenizer.json in {where}: a GGUF file carries its tokenizer; pass "
                              "--tokenizer PATH (a tokenizer.json file or a folder holding one)")
    return where


def check_pipeline(spec: dict, name: str) -> None:
    """Refuse a tokenizer whose pipeline llama.cpp's ``mpt`` pre-tokenizer would not reproduce.

    ``spec`` is the tokenizer's JSON (``tokenizer.json``). llama.cpp applies no normaliser: NFC is
    accepted (text already in NFC, which nearly all text is, tokenizes the same), others are not.
    """
    model, pre, dec, norm = spec.get("model") or {}, spec.get("pre_tokenizer"), spec.get("decoder"), spec.get("normalizer")

    def bad(what: str, value, fix: str) -> GGUFExportError:
        return GGUFExportError(f"tokenizer {name}: {what} = {json.dumps(value)} cannot be represented in GGUF: {fix}")

    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("ignore_merges"):
        keys = {k: model.get(k) for k in ("type", "byte_fallback", "ignore_merges") if k in model}
        raise bad("model", keys, "llama.cpp's gpt2 vocabulary is byte-level BPE applying every merge "
                  '(type "BPE", byte_fallback false, ignore_merges false)')
    if norm is not None and norm.get("type") != "NFC":
        raise bad("normalizer", norm, "llama.cpp normalises nothing; only NFC (a no-op on NFC text) or none")
    if not (pre and pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space", True)
            and pre.get("use_regex", True)):
        raise bad("pre_tokenizer", pre, f"llama.cpp's '{PRE_TOKENIZER}' pre-tokenizer splits like "
                  '{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true} (GPT-NeoX-20B, '
                  "`mpt tokenizer train`)")
    if not (dec and dec.get("type") == "ByteLevel"):
        raise bad("decoder", dec, 'llama.cpp decodes gpt2 vocabularies as {"type": "ByteLevel"}')


def gguf_chat_template(template: str | None) -> str | None:
    return _GENERATION_TAG.sub("", template) if template else None


def build_vocab(path: str | Path, vocab_size: int) -> GGUFVocab:
    """The GGUF vocabulary of the tokenizer at ``path`` for a model with ``vocab_size`` embedding rows."""
    import gguf

    from ..data.tokenize import load_tokenizer

    tok = load_tokenizer(path)
    backend = tok.backend_tokenizer
    check_pipeline(json.loads(backend.to_str()), str(path))
    by_id = {i: t for t, i in backend.get_vocab(with_added_tokens=True).items()}
    if max(by_id) >= vocab_size:
        raise GGUFExportError(f"tokenizer {path} has token ids up to {max(by_id)}, beyond the model's vocab_size = "
                              f"{vocab_size}: export with the tokenizer the model was trained with")
    added = backend.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in json.loads(backend.to_str())["model"]["merges"]]
    eos = tok.eos_token_id
    if eos is None:
        raise GGUFExportError(f"tokenizer {path} has no end-of-text token (none of <|endoftext|>, </s>, <eos>): "
                              "llama.cpp stops generating at it")
    # MPT's own convention (and GPT-NeoX's): BOS and UNK are the end-of-text token unless declared.
    bos = tok.bos_token_id if tok.bos_token_id is not None else eos
    unk = tok.unk_token_id if tok.unk_token_id is not None else eos
    plain, marked = backend.encode("a", add_special_tokens=False).ids, backend.encode("a").ids
    return GGUFVocab(tokens=tokens, token_types=[int(t) for t in types], merges=merges, bos_id=bos, eos_id=eos,
                     unk_id=unk, pad_id=tok.pad_token_id, add_bos=marked[:1] != plain[:1],
                     add_eos=marked[-1:] != plain[-1:], chat_template=gguf_chat_template(tok.chat_template))


def write_vocab(writer, vocab: GGUFVocab) -> None:
    """Add the ``tokenizer.*`` keys to a ``gguf.GGUFWriter``."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_unk_token_id(vocab.unk_id)
    writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
