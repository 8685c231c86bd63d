"""``load_tokenizer``: the one way to load a tokenizer, with one rule for its EOS and PAD tokens.

Accepts a ``tokenizer.json`` file, a folder holding tokenizer files (a tokenizer folder or a
checkpoint), or a hub name -- downloaded only in that last case. Data prep, training, evaluation,
inference and the quickstart all call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mpt.paths import check_hub_reachable, first_line, looks_local

DEFAULT_TOKENIZER = "EleutherAI/gpt-neox-20b"
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")
PAD_CANDIDATES = ("<|padding|>", "<pad>")
HINT = "pass --tokenizer PATH (a tokenizer.json file or a folder holding one)"


def load_tokenizer(path_or_name: str | Path = DEFAULT_TOKENIZER, eos_token: str | None = None):
    """A ``transformers`` fast tokenizer whose EOS and PAD are set.

    EOS: ``eos_token`` when given (it must be in the vocabulary), else the tokenizer's own, else
    the first of :data:`EOS_CANDIDATES` it has. PAD: its own, else the first of
    :data:`PAD_CANDIDATES` it has, else EOS -- padding is always masked, so any id will do.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    name = str(path_or_name)
    path = Path(name)
    if looks_local(path_or_name):
        if path.is_file():
            tok = PreTrainedTokenizerFast(tokenizer_file=name)
        elif (path / "tokenizer_config.json").is_file():
            tok = AutoTokenizer.from_pretrained(name)
        elif (path / "tokenizer.json").is_file():
            tok = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
        elif path.is_dir():
            raise FileNotFoundError(f"no tokenizer in {name} (no tokenizer.json or tokenizer_config.json): {HINT}")
        else:
            raise FileNotFoundError(f"no such tokenizer file or folder: {name}")
    else:
        check_hub_reachable(name, "tokenizer")
        try:
            tok = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(f"tokenizer {name!r} is neither a local file or folder nor a hub name that "
                                    f"could be loaded ({first_line(err)}); {HINT}") from err
    vocab = tok.get_vocab()
    if eos_token is not None:
        if eos_token not in vocab:
            raise ValueError(f"tokenizer {name}: --eos-token {eos_token!r} is not in its vocabulary")
        tok.eos_token = eos_token
    elif tok.eos_token is None:
        tok.eos_token = next((t for t in EOS_CANDIDATES if t in vocab), None)
    if tok.pad_token is None:
        tok.pad_token = next((t for t in PAD_CANDIDATES if t in vocab), tok.eos_token)
    return tok


@dataclass
class TokenEncoder:
    """What data prep and training need: the Rust tokenizer (``encode_batch`` uses every core) and EOS."""

    tokenizer: object           # tokenizers.Tokenizer
    name: str
    eos_id: int
    vocab_size: int             # including added tokens


def load_token_encoder(path_or_name: str | Path = DEFAULT_TOKENIZER, eos_token: str | None = None) -> TokenEncoder:
    """:func:`load_tokenizer`'s Rust tokenizer; documents are joined with EOS, so one is required."""
    tok = load_tokenizer(path_or_name, eos_token)
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {path_or_name}: no EOS token among {', '.join(EOS_CANDIDATES)}; "
                         "pass --eos-token TOKEN naming the token that ends a document")
    backend = tok.backend_tokenizer
    return TokenEncoder(backend, str(path_or_name), tok.eos_token_id, backend.get_vocab_size(with_added_tokens=True))
