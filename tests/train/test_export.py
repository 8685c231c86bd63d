"""`mpt export` to the Hugging Face format (the command is mpt.train.export's)."""

import torch

from mpt import load
from mpt.cli import main
from mpt.model.hf import save_pretrained
from tests.infer.conftest import INFER_FIELDS, build_tokenizer
from tests.tiny import tiny_model


def test_export_hf_loads_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = tmp_path / "tiny-mpt"  # the tiny MPT with its ChatML tokenizer, as tests/infer saves it
    build_tokenizer(checkpoint)
    save_pretrained(tiny_model(**INFER_FIELDS), checkpoint)
    llm = load(checkpoint, device="cpu")
    assert main(["export", str(checkpoint), str(tmp_path / "hf")]) == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([llm.encode("Hello world")])
    with torch.no_grad():
        assert (hf(ids).logits - llm.model(ids).logits).abs().max() < 1e-4
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").encode("Hello") == llm.tokenizer.encode("Hello")
