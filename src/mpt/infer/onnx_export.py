"""`mpt export --format onnx`: prefill and decode graphs for ONNX runtimes, checked with onnxruntime.

Two graphs (:func:`export_onnx`), because a prompt and a single new token take different attention paths:
``prefill.onnx`` maps ``input_ids (batch, seq >= 2)`` to ``logits (batch, seq, vocab)`` and the cache,
``present_keys``/``present_values`` ``(n_layers, batch, n_heads, seq, head_dim)``; ``decode.onnx`` maps
``input_ids (batch, 1)`` and ``past_keys``/``past_values`` to ``logits (batch, 1, vocab)`` and the cache
grown by one. No attention mask: the rows of one batch must have the same length (no left padding).
:func:`check_onnx` compares onnxruntime with PyTorch. The tokenizer files are copied next to the graphs.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass
class OnnxExportConfig:
    src: str
    dst: str
    prefill_only: bool = False
    opset: int = 18
    check: bool = True  # compare onnxruntime with PyTorch after export
    atol: float = 1e-3

    def validate(self) -> OnnxExportConfig:
        if self.opset < 17:
            raise ValueError(f"opset={self.opset} is too old: use >= 17 (LayerNormalization)")
        return self


def _stack(cache) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([layer.keys for layer in cache.layers]), torch.stack([layer.values for layer in cache.layers])


# The cache goes in and out as whole tensors, through transformers' DynamicCache inside (it exports as
# concatenation): our growing KVCache is a PyTorch-side optimisation.
class Prefill(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor):
        from transformers import DynamicCache

        cache = DynamicCache()
        logits = self.model(input_ids, cache=cache, use_cache=True).logits
        return (logits, *_stack(cache))


class Decode(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor):
        from transformers import DynamicCache

        cache = DynamicCache()
        for i in range(past_keys.shape[0]):
            cache.update(past_keys[i], past_values[i], i)
        logits = self.model(input_ids, cache=cache, use_cache=True).logits
        return (logits, *_stack(cache))


def export_onnx(cfg: OnnxExportConfig) -> list[Path]:
    """Write the graph(s) and tokenizer files to ``cfg.dst``; return the graph paths."""
    from ..model.hf import copy_tokenizer_files
    from ..model.load import load_model

    cfg.validate()
    # torch.onnx logs a warning per missing torchvision op it could register: noise for a language model.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    model = load_model(cfg.src, device="cpu", dtype=torch.float32, attn_impl="torch")
    dst = Path(cfg.dst)
    dst.mkdir(parents=True, exist_ok=True)
    c = model.config
    batch, seq, past = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=2), torch.export.Dim("past", min=1)
    ids = torch.randint(0, c.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    files = [dst / "prefill.onnx"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on decompositions are not for users
        torch.onnx.export(Prefill(model), (ids,), files[0], input_names=["input_ids"],
                          output_names=["logits", "present_keys", "present_values"],
                          dynamic_shapes={"input_ids": {0: batch, 1: seq}}, opset_version=cfg.opset,
                          dynamo=True, external_data=False, verbose=False)
        if not cfg.prefill_only:
            head_dim = c.d_model // c.n_heads
            kv = torch.randn(c.n_layers, 2, c.n_heads, 5, head_dim)
            files.append(dst / "decode.onnx")
            torch.onnx.export(Decode(model), (ids[:, :1], kv, kv.clone()), files[1],
                              input_names=["input_ids", "past_keys", "past_values"],
                              output_names=["logits", "present_keys", "present_values"],
                              dynamic_shapes={"input_ids": {0: batch},
                                              "past_keys": {1: batch, 3: past}, "past_values": {1: batch, 3: past}},
                              opset_version=cfg.opset, dynamo=True, external_data=False, verbose=False)
    copy_tokenizer_files(cfg.src, dst, overwrite=True)
    if cfg.check:
        err = check_onnx(model, dst, prefill_only=cfg.prefill_only)
        print(f"onnxruntime vs PyTorch: max |logit difference| {err:.2e}")
        if err > cfg.atol:
            raise RuntimeError(f"the ONNX graphs disagree with PyTorch: max |logit difference| {err:.2e} > {cfg.atol}")
    return files


def check_onnx(model, folder: str | Path, prefill_only: bool = False, steps: int = 4) -> float:
    """Max |logit difference| between onnxruntime and PyTorch: prefill, then ``steps`` cached decode steps."""
    import numpy as np
    import onnxruntime as ort

    folder = Path(folder)
    prefill = ort.InferenceSession(str(folder / "prefill.onnx"), providers=["CPUExecutionProvider"])
    ids = torch.randint(0, model.config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(torch.cat([ids, ids[:, :steps]], dim=1)).logits.numpy()
    logits, keys, values = prefill.run(None, {"input_ids": ids.numpy()})
    err = float(np.abs(logits - full[:, :7]).max())
    if not prefill_only:
        decode = ort.InferenceSession(str(folder / "decode.onnx"), providers=["CPUExecutionProvider"])
        for t in range(steps):
            step = ids[:, t:t + 1].numpy()
            logits, keys, values = decode.run(None, {"input_ids": step, "past_keys": keys, "past_values": values})
            err = max(err, float(np.abs(logits[:, 0] - full[:, 7 + t]).max()))
    return err
