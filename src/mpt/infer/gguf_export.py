"""`mpt export --format gguf`: one ``.gguf`` file in llama.cpp's MPT layout, for llama.cpp, ollama, LM Studio.

Metadata (``mpt.*`` hyperparameters), the tokenizer (gguf_vocab.py) and the tensors under llama.cpp's
MPT names. Whatever llama.cpp's MPT graph would compute differently is refused from the config alone,
before any weight is read (:func:`check_representable`); an ``--outtype`` the weights cannot take is
refused before anything is written. Matrices are stored as ``outtype`` (f32, f16 or q8_0), 1-D
tensors (norms, biases) in f32, as llama.cpp's own converter does. The file appears only when whole.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .gguf_vocab import GGUFExportError, build_vocab, find_tokenizer, write_vocab

__all__ = ["GGUFExportConfig", "GGUFExportError", "check_outtype", "check_representable", "export_gguf",
           "gguf_tensor_name"]

OutType = Literal["f32", "f16", "q8_0"]
Q8_BLOCK = 32          # values per q8_0 block: a quantized row's length must be a multiple
F16_MAX = 65504.0


@dataclass
class GGUFExportConfig:
    src: str                       # a Hugging Face-format MPT folder
    dst: str                       # the .gguf file to write
    outtype: OutType | None = None  # None: f32 for float32 weights, f16 for 16-bit ones
    tokenizer: str | None = None   # default: the tokenizer files in src


def _refuse(field: str, value, why: str, fix: str) -> GGUFExportError:
    return GGUFExportError(f"cannot export to GGUF: MPT config field `{field}` = {value!r}: {why}; {fix}")


def check_representable(config) -> None:
    """Raise GGUFExportError for a config llama.cpp's MPT graph would compute differently.

    llama.cpp's MPT has LayerNorm (with or without bias) on the residual stream, fused QKV with an
    optional clamp, ALiBi with any maximum bias (or none), learned positions, any FFN width and an
    untied head; it scales attention by 1/sqrt(head_dim) and the logits not at all.
    """
    ac = config.attn_config
    if config.logit_scale is not None:
        raise _refuse("logit_scale", config.logit_scale, "llama.cpp's MPT does not scale the logits",
                      "export to Hugging Face format instead (`--format hf`), or retrain without it")
    if ac["softmax_scale"] is not None and not math.isclose(ac["softmax_scale"], 1 / math.sqrt(config.head_dim)):
        raise _refuse("attn_config.softmax_scale", ac["softmax_scale"],
                      f"llama.cpp's MPT scales attention by 1/sqrt(head_dim) = {1 / math.sqrt(config.head_dim):.6g}",
                      "export to Hugging Face format instead (`--format hf`)")
    if ac["qk_ln"]:
        raise _refuse("attn_config.qk_ln", True, "llama.cpp's MPT graph reshapes a strided view of the fused "
                      "QKV output for its Q/K LayerNorm and aborts on prompts longer than one token",
                      "export to Hugging Face format instead (`--format hf`)")


def check_outtype(config, outtype: OutType) -> None:
    """q8_0 stores each matrix row in blocks of 32 values, so every row length must be a multiple of 32."""
    if outtype != "q8_0":
        return
    for field, width in (("d_model", config.d_model), ("expansion_ratio", config.ffn_hidden_size)):
        if width % Q8_BLOCK:
            what = f"d_model = {width}" if field == "d_model" else \
                f"the FFN width {width} (expansion_ratio {config.expansion_ratio} x d_model {config.d_model})"
            raise GGUFExportError(f"cannot export to GGUF with --outtype q8_0: {what} is not a multiple of "
                                  f"{Q8_BLOCK}, the q8_0 block length of a matrix row; use --outtype f16 or f32")


def gguf_tensor_name(name: str) -> str:
    """Our parameter name -> llama.cpp's MPT tensor name (``transformer.blocks.3.attn.Wqkv.weight`` ->
    ``blk.3.attn_qkv.weight``)."""
    from gguf import MODEL_TENSOR as T
    from gguf import TENSOR_NAMES

    top = {"transformer.wte": T.TOKEN_EMBD, "transformer.wpe": T.POS_EMBD, "transformer.norm_f": T.OUTPUT_NORM,
           "lm_head": T.OUTPUT}
    block = {"norm_1": T.ATTN_NORM, "attn.Wqkv": T.ATTN_QKV, "attn.out_proj": T.ATTN_OUT, "attn.q_ln": T.ATTN_Q_NORM,
             "attn.k_ln": T.ATTN_K_NORM, "norm_2": T.FFN_NORM, "ffn.up_proj": T.FFN_UP, "ffn.down_proj": T.FFN_DOWN}
    module, _, kind = name.rpartition(".")
    parts = module.split(".")
    if module in top:
        return f"{TENSOR_NAMES[top[module]]}.{kind}"
    if parts[:2] == ["transformer", "blocks"] and ".".join(parts[3:]) in block:
        return f"{TENSOR_NAMES[block['.'.join(parts[3:])]].format(bid=int(parts[2]))}.{kind}"
    raise GGUFExportError(f"cannot export to GGUF: parameter {name} has no place in llama.cpp's MPT layout")


def _default_outtype(model) -> OutType:
    import torch

    return "f32" if next(model.parameters()).dtype == torch.float32 else "f16"


def _check_f16_range(state: dict) -> None:
    for name, t in state.items():
        peak = float(t.abs().max()) if t.numel() else 0.0
        if t.dim() == 2 and peak > F16_MAX:
            raise GGUFExportError(f"cannot export to GGUF with --outtype f16: tensor {name} holds values up to "
                                  f"{peak:.4g}, beyond float16's largest ({F16_MAX:g}); use --outtype f32 or q8_0")


def _stored(array, outtype: OutType):
    """A float32 array as GGUF stores it: (data, raw_dtype for the writer or None)."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    if array.ndim < 2 or outtype == "f32":
        return array, None
    if outtype == "f16":
        return array.astype(np.float16), None
    return quants.quantize(array, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0


def _write_metadata(writer, config, outtype: OutType, name: str) -> None:
    from gguf import GGML_QUANT_VERSION, LlamaFileType

    ac = config.attn_config
    writer.add_name(name)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.ffn_hidden_size)
    writer.add_head_count(config.n_heads)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_max_alibi_bias(float(ac["alibi_bias_max"]) if ac["alibi"] else 0.0)  # 0: no ALiBi
    if ac["clip_qkv"] is not None:
        writer.add_clamp_kqv(float(ac["clip_qkv"]))
    writer.add_file_type({"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
                          "q8_0": LlamaFileType.MOSTLY_Q8_0}[outtype])
    writer.add_quantization_version(GGML_QUANT_VERSION)


def export_gguf(cfg: GGUFExportConfig) -> Path:
    """Write ``cfg.dst``; return its path. Refusals come first: config, tokenizer, outtype, weights."""
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise GGUFExportError("--format gguf needs the gguf package (llama.cpp's own writer): "
                              "pip install 'mpt[gguf]'")
    from gguf import GGUFWriter

    from ..model import MPTConfig
    from ..model.load import load_model, read_config_dict

    dst = Path(cfg.dst)
    if dst.suffix != ".gguf" or dst.is_dir():
        raise GGUFExportError(f"--format gguf writes one file: name it OUT.gguf (got {cfg.dst})")
    fields = read_config_dict(cfg.src)
    if fields.get("model_type") != "mpt":
        raise GGUFExportError(f"{cfg.src} is not an MPT checkpoint (model_type {fields.get('model_type')!r}): "
                              "--format gguf writes llama.cpp's MPT layout")
    # the backend never matters for the weights; a `flash` config must read where flash-attn is missing
    config = MPTConfig.from_dict({**fields, "attn_config": {**fields.get("attn_config", {}), "attn_impl": "torch"}})
    check_representable(config)
    if cfg.outtype is not None:
        check_outtype(config, cfg.outtype)
    vocab = build_vocab(find_tokenizer(cfg.src, cfg.tokenizer), config.vocab_size)
    model = load_model(cfg.src, device="cpu", dtype="auto", attn_impl="torch")
    outtype = cfg.outtype or _default_outtype(model)  # never q8_0, so check_outtype has nothing to add
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    names = {k: gguf_tensor_name(k) for k in state}
    if outtype == "f16":
        _check_f16_range(state)
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(f".{dst.name}.partial")
    writer = GGUFWriter(partial, "mpt", use_temp_file=True)
    try:
        _write_metadata(writer, model.config, outtype, Path(cfg.src).name or str(cfg.src))
        write_vocab(writer, vocab)
        for key, tensor in state.items():
            data, raw = _stored(tensor.numpy(), outtype)
            writer.add_tensor(names[key], data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()  # flushed before the rename: a .gguf that exists is whole
        os.replace(partial, dst)
    finally:
        writer.close()
        partial.unlink(missing_ok=True)
    return dst
