"""`mpt export` to the Hugging Face format (the command is mpt.train.export's)."""

import torch

from mpt.cli import main


def test_export_hf_loads_with_plain_transformers(checkpoint, tmp_path, llm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert main(["export", str(checkpoint), str(tmp_path / "hf")]) == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([llm.encode("Hello world")])
    with torch.no_grad():
        assert (hf(ids).logits - llm.model(ids).logits).abs().max() < 1e-4
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").encode("Hello") == llm.tokenizer.encode("Hello")
