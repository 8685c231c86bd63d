"""The one tokenizer loader: a tokenizer.json file or a folder give the same EOS and PAD; errors name the flag."""

import pytest

from mpt.data.tokenize import load_token_encoder, load_tokenizer
from mpt.model.hf import save_pretrained
from tests.infer.conftest import build_tokenizer
from tests.tiny import tiny_model


def test_tokenizer_json_file_and_folder_get_the_same_eos_and_pad(tmp_path):
    hf = build_tokenizer(tmp_path / "tok")
    from tokenizers import Tokenizer

    bare = tmp_path / "bare.json"  # a tokenizer.json says nothing of EOS or PAD
    Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json")).save(str(bare))
    for src in (tmp_path / "tok", bare, str(bare)):
        tok = load_tokenizer(src)
        assert (tok.eos_token, tok.pad_token) == ("<|endoftext|>", "<|padding|>"), src
        assert tok.encode("hello world") == hf.encode("hello world")
    enc = load_token_encoder(bare)
    assert enc.eos_id == hf.eos_token_id and enc.vocab_size == len(hf)


def test_tokenizer_errors_name_the_flag_and_the_path(tmp_path):
    save_pretrained(tiny_model(0, vocab_size=416), tmp_path / "ckpt")  # a model folder without a tokenizer
    with pytest.raises(FileNotFoundError, match=r"no tokenizer in .*ckpt .*pass --tokenizer PATH"):
        load_tokenizer(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="^no such tokenizer file or folder: ./nope$"):
        load_tokenizer("./nope")
    build_tokenizer(tmp_path / "tok")
    with pytest.raises(ValueError, match="--eos-token '<eos>' is not in its vocabulary"):
        load_tokenizer(tmp_path / "tok", eos_token="<eos>")
