"""Tiny models (random, seeded) saved in Hugging Face format, with the GPT-NeoX tokenizer."""

import copy
import json
from pathlib import Path

import pytest
import torch

from mpt.eval import load_model
from tests.conftest import SHARED
from tests.tiny import tiny_model

TOKENIZER = SHARED / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
EVAL_DATA = SHARED / "data" / "eval"


def neox_tokenizer():
    from transformers import PreTrainedTokenizerFast

    if not TOKENIZER.is_file():
        pytest.skip(f"GPT-NeoX tokenizer not found at {TOKENIZER} (set MPT_SHARED to the shared folder)")
    return PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER), eos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def tokenizer():
    return neox_tokenizer()


@pytest.fixture(scope="session")
def eval_data() -> Path:
    if not EVAL_DATA.is_dir():
        pytest.skip(f"eval task files not found at {EVAL_DATA} (set MPT_SHARED to the shared folder)")
    return EVAL_DATA


def _saved_with_the_neox_tokenizer(tmp_path_factory, name: str, save) -> Path:
    """A folder where ``save(folder)`` wrote a seeded tiny model in Hugging Face format, beside the GPT-NeoX
    tokenizer."""
    tok = neox_tokenizer()
    path = tmp_path_factory.mktemp(name)
    save(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_mpt_dir(tmp_path_factory):
    """A 2-layer MPT with the GPT-NeoX vocabulary, saved with its tokenizer."""
    from mpt.model.hf import save_pretrained

    return _saved_with_the_neox_tokenizer(tmp_path_factory, "tiny-mpt", lambda path: save_pretrained(
        tiny_model(0, d_model=64, n_heads=4, max_seq_len=2048, vocab_size=50432), path))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A non-MPT causal LM (GPT-2 architecture, absolute positions) with the same tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def save(path):
        torch.manual_seed(1)
        GPT2LMHeadModel(GPT2Config(n_embd=64, n_head=4, n_layer=2, n_positions=1024, vocab_size=50432,
                                   bos_token_id=0, eos_token_id=0)).save_pretrained(path)

    return _saved_with_the_neox_tokenizer(tmp_path_factory, "tiny-gpt2", save)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A Llama-architecture causal LM (RoPE, grouped-query attention, RMSNorm) with the same tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def save(path):
        torch.manual_seed(2)
        LlamaForCausalLM(LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=2048, vocab_size=50432, bos_token_id=0, eos_token_id=0, tie_word_embeddings=True,
            initializer_range=0.2)).save_pretrained(path)

    return _saved_with_the_neox_tokenizer(tmp_path_factory, "tiny-llama", save)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mpt(tiny_mpt_dir):
    model = load_model(str(tiny_mpt_dir), device="cpu")
    return model, copy.deepcopy(model).double()


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    return model, copy.deepcopy(model).double()
