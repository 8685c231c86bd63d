"""The GGUF vocabulary: tokenizers llama.cpp would split differently are refused, naming what differs."""

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mpt.infer.gguf_vocab import GGUFExportError, build_vocab, find_tokenizer, gguf_chat_template

TEXT = ["the quick brown fox jumps over the lazy dog, again and again"] * 20


def save(tmp_path, model=None, normalizer=None, pre=None, decoder=None):
    tok = Tokenizer(model or models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre or pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoder or decoders.ByteLevel()
    trainer = (trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"],
                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
               if isinstance(tok.model, models.BPE) else
               trainers.WordLevelTrainer(special_tokens=["<|endoftext|>", "<|padding|>"], show_progress=False))
    tok.train_from_iterator(TEXT, trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(tmp_path)
    return tmp_path


def test_the_pipeline_of_mpt_tokenizer_train_is_accepted(tmp_path):
    vocab = build_vocab(save(tmp_path, normalizer=normalizers.NFC()), 384)
    assert vocab.pre == "mpt" and len(vocab.tokens) == 384 and vocab.eos_id == vocab.bos_id == vocab.unk_id == 0
    assert vocab.pad_id == 1 and not vocab.add_bos and not vocab.add_eos


@pytest.mark.parametrize("kwargs,says", [
    (dict(pre=pre_tokenizers.ByteLevel(add_prefix_space=True)), 'pre_tokenizer = {"type": "ByteLevel", '
                                                                '"add_prefix_space": true'),
    (dict(pre=pre_tokenizers.Metaspace(), decoder=decoders.Metaspace()), 'pre_tokenizer = {"type": "Metaspace"'),
    (dict(normalizer=normalizers.Lowercase()), 'normalizer = {"type": "Lowercase"}'),
    (dict(decoder=decoders.WordPiece()), 'decoder = {"type": "WordPiece"'),
    (dict(model=models.WordLevel(unk_token="<|endoftext|>")), 'model = {"type": "WordLevel"}'),
])
def test_pipelines_llama_cpp_splits_differently_are_refused(tmp_path, kwargs, says):
    path = save(tmp_path, **kwargs)
    with pytest.raises(GGUFExportError, match="cannot be represented in GGUF") as err:
        build_vocab(path, 384)
    assert says in str(err.value)


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    with pytest.raises(GGUFExportError, match=r"token ids up to 2\d\d, beyond the model's vocab_size = 64"):
        build_vocab(save(tmp_path), 64)


def test_tokenizer_location(tmp_path):
    path = save(tmp_path / "tok")
    assert find_tokenizer(tmp_path / "model", path) == path
    assert find_tokenizer(path, None) == path
    assert find_tokenizer("x", path / "tokenizer.json") == path / "tokenizer.json"


def test_generation_markers_leave_the_template():
    assert gguf_chat_template("{% for m in messages %}{%- generation -%}{{ m }}{% endgeneration %}{% endfor %}") \
        == "{% for m in messages %}{{ m }}{% endfor %}"
    assert gguf_chat_template(None) is None
