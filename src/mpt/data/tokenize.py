"""Load a Hugging Face tokenizer from a local file/folder or a hub name, and find its EOS token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_TOKENIZER = "EleutherAI/gpt-neox-20b"
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")


@dataclass
class LoadedTokenizer:
    tokenizer: object           # tokenizers.Tokenizer (the fast Rust object; encode_batch uses all cores)
    name: str
    eos_id: int
    vocab_size: int             # including added tokens


def load_tokenizer(name_or_path: str = DEFAULT_TOKENIZER, eos_token: str | None = None) -> LoadedTokenizer:
    """A local ``tokenizer.json`` file, a folder holding one, or a hub name (downloads only in that case)."""
    from tokenizers import Tokenizer

    path = Path(name_or_path)
    if path.is_file():
        tok = Tokenizer.from_file(str(path))
    elif (path / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    elif path.exists() or name_or_path.endswith(".json"):
        raise FileNotFoundError(f"tokenizer {name_or_path}: expected a tokenizer.json file or a folder holding one")
    else:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(name_or_path).backend_tokenizer
        except OSError as err:
            raise FileNotFoundError(f"tokenizer {name_or_path!r} is neither a local tokenizer.json/folder nor a "
                                    f"hub name that could be loaded ({err}); pass --tokenizer PATH/tokenizer.json"
                                    ) from err
    candidates = (eos_token,) if eos_token else _EOS_CANDIDATES
    for token in candidates:
        eos_id = tok.token_to_id(token)
        if eos_id is not None:
            break
    else:
        raise ValueError(f"tokenizer {name_or_path}: no EOS token among {', '.join(candidates)}; "
                         "pass --eos-token TOKEN naming the token that ends a document")
    return LoadedTokenizer(tok, name_or_path, eos_id, tok.get_vocab_size(with_added_tokens=True))
