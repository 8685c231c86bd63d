"""`mpt export --format onnx`: the graphs, checked with onnxruntime against PyTorch."""

import pytest
import torch

from mpt.cli import main
from mpt.infer import generate_ids


@pytest.fixture(scope="module")
def onnx_dir(checkpoint, tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install -e '.[onnx]'")
    pytest.importorskip("onnxscript", reason="needs the onnx extra: pip install -e '.[onnx]'")
    out = tmp_path_factory.mktemp("onnx")
    assert main(["export", str(checkpoint), str(out), "--format", "onnx"]) == 0  # includes the ORT check
    return out


def test_onnx_export_writes_graphs_and_tokenizer(onnx_dir):
    assert {p.name for p in onnx_dir.iterdir()} >= {"prefill.onnx", "decode.onnx", "tokenizer.json"}


def test_onnx_greedy_decoding_past_max_seq_len_equals_pytorch(onnx_dir, llm):
    import numpy as np
    import onnxruntime as ort

    prefill = ort.InferenceSession(str(onnx_dir / "prefill.onnx"), providers=["CPUExecutionProvider"])
    decode = ort.InferenceSession(str(onnx_dir / "decode.onnx"), providers=["CPUExecutionProvider"])
    a, b = llm.encode("The quick brown fox"), llm.encode("Hello world, MPT!")
    k = min(len(a), len(b))  # no attention mask in the graphs: rows of one batch have the same length
    prompt = torch.tensor([a[:k], b[:k]])
    n = llm.model.config.max_seq_len + 8
    logits, keys, values = prefill.run(None, {"input_ids": prompt.numpy()})
    out = []
    for _ in range(n):
        nxt = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        out.append(nxt)
        logits, keys, values = decode.run(None, {"input_ids": nxt, "past_keys": keys, "past_values": values})
    ours = np.concatenate(out, axis=1)
    ref = generate_ids(llm.model, prompt, n)[:, prompt.shape[1]:].numpy()
    assert keys.shape[3] == prompt.shape[1] + n and (ours == ref).all()
