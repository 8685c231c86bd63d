"""A tiny model and a tiny ChatML tokenizer, built once and saved like a real checkpoint."""

import pytest
import torch

from mpt import MPTConfig, MPTForCausalLM
from mpt.model.hf import save_pretrained

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "MPT is a decoder-only transformer with ALiBi attention biases.",
    "Hello world! Café, naïve, 日本語, emoji 🙂 and numbers 12345.",
    "A server batches requests together: new requests join between decode steps.",
] * 20


def build_tokenizer(out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|padding|>", "<|im_start|>",
                                                                  "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|padding|>",
                                 chat_template=CHATML)
    hf.save_pretrained(out_dir)
    return hf


def tiny_model(seed: int = 0, **overrides) -> MPTForCausalLM:
    torch.manual_seed(seed)
    fields = dict(d_model=64, n_heads=4, n_layers=2, max_seq_len=64, vocab_size=416)
    return MPTForCausalLM(MPTConfig(**{**fields, **overrides})).eval()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A saved tiny MPT with a ChatML byte-level BPE tokenizer (trained here; no shared data needed)."""
    out = tmp_path_factory.mktemp("tiny-mpt")
    build_tokenizer(out)
    save_pretrained(tiny_model(), out)
    return out


@pytest.fixture(scope="session")
def llm(checkpoint):
    from mpt import load

    return load(checkpoint, device="cpu")
