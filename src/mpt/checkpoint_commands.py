"""The checkpoint commands: ``model-info``, ``convert``, ``export`` and ``demo``, each a config and a function.

Imports of torch and transformers happen inside the functions, so the configs load instantly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from .config import option
from .model.fields import AttnImpl
from .tables import text_table


@dataclass
class ModelInfoConfig:
    preset: list[str] = option(help="preset names (mpt-tiny, mpt-125m ... mpt-30b) or YAML files; default: all "
                               "presets", positional=True, factory=lambda: ["all"])


def print_model_info(cfg: ModelInfoConfig) -> None:
    """Print parameters, training FLOPs per token and memory of model presets; builds nothing."""
    from .presets import load_model_config, model_info, preset_names

    names = cfg.preset
    if names == ["all"]:
        names = sorted(preset_names(), key=lambda n: model_info(load_model_config(n)).params)
    rows = []
    for name in names:
        c = load_model_config(name)
        info = model_info(c)
        rows.append((name, f"{info.params / 1e6:,.1f}M", f"{info.non_embedding_params / 1e6:,.1f}M",
                     f"{c.d_model}/{c.n_heads}/{c.n_layers}", str(c.max_seq_len),
                     f"{info.train_flops_per_token / 1e9:,.2f}", f"{info.weights_gib_bf16:,.2f}",
                     f"{info.train_state_gib_lion:,.1f}", f"{info.train_state_gib_adamw:,.1f}"))
    print(text_table(("preset", "params", "non-emb", "d/heads/layers", "seq", "GFLOP/token (train)",
                      "weights bf16 GiB", "train state Lion GiB", "train state AdamW GiB"), rows))


@dataclass
class ConvertConfig:
    src: str = option(help="checkpoint folder or hub name, e.g. mosaicml/mpt-7b", positional=True)
    dst: str = option(help="output folder", positional=True)
    dtype: Literal["float32", "bfloat16", "float16"] | None = option(None, "cast weights to this dtype (default: keep)")
    attn_impl: AttnImpl | None = option(None, "override attn_config.attn_impl (e.g. a checkpoint trained with flash, "
                                        "read on CPU; default: keep)")


def convert(cfg: ConvertConfig) -> None:
    from .model.hf import convert

    model, ignored = convert(cfg.src, cfg.dst, dtype=cfg.dtype, attn_impl=cfg.attn_impl)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {cfg.dst}: {n / 1e6:,.1f}M parameters, model_type 'mpt' (loads with transformers' "
          f"AutoModelForCausalLM){'; transformers ignores: ' + ', '.join(ignored) if ignored else ''}")


@dataclass
class ExportConfig:
    src: str = option(help="Hugging Face-format MPT checkpoint folder (or hub name), or a training checkpoint (a "
                      "step-N folder, or a checkpoint.folder: its newest complete checkpoint)", positional=True)
    dst: str = option(help="output folder (hf, onnx) or OUT.gguf file (gguf)", positional=True)
    format: Literal["hf", "onnx", "gguf"] = option("hf", "output format (gguf: one file in llama.cpp's MPT layout)")
    tokenizer: str | None = option(None, "hf from a training checkpoint: folder whose tokenizer files to copy "
                                   "alongside (default: the tokenizer recorded with the run); gguf: tokenizer.json "
                                   "or folder to embed (default: the one in SRC)")
    outtype: Literal["f32", "f16", "q8_0"] | None = option(None, "gguf: storage of the matrices (default: f32 for a "
                                                           "float32 checkpoint, f16 for a 16-bit one); norms stay f32")
    adapter: bool = option(False, "a LoRA run's training checkpoint: write the adapter alone in PEFT's format "
                           "instead of the merged model")
    prefill_only: bool = option(False, "onnx: export only prefill.onnx")
    opset: int = option(18, "onnx: opset version")
    check: bool = option(True, "onnx: skip the onnxruntime vs PyTorch check")


def export(cfg: ExportConfig) -> None:
    if cfg.outtype is not None and cfg.format != "gguf":
        raise ValueError(f"--outtype {cfg.outtype} applies to --format gguf only (this export is --format {cfg.format})")
    if cfg.format == "gguf":
        _export_gguf(cfg)
        return
    if cfg.format == "onnx":
        from .infer.onnx_export import OnnxExportConfig, export_onnx

        files = export_onnx(OnnxExportConfig(src=cfg.src, dst=cfg.dst, prefill_only=cfg.prefill_only,
                                             opset=cfg.opset, check=cfg.check))
        print(f"wrote {', '.join(str(f) for f in files)}")
        return
    from .model.hf import convert
    from .train.export import export_hf, find_checkpoint

    found = find_checkpoint(cfg.src)  # in a local folder, or a checkpoint folder on object storage (s3://...)
    if found is not None:  # a training checkpoint
        used = export_hf(found, cfg.dst, tokenizer_from=cfg.tokenizer, adapter_only=cfg.adapter)
        what = "a PEFT adapter" if cfg.adapter else "a Hugging Face-format checkpoint"
        print(f"wrote {what} to {cfg.dst} from training checkpoint {used}")
        return
    if cfg.adapter:
        raise ValueError(f"--adapter exports the LoRA adapter of a training checkpoint; {cfg.src} is not one")
    _, ignored = convert(cfg.src, cfg.dst)
    print(f"wrote a Hugging Face-format checkpoint to {cfg.dst}"
          f"{'; transformers ignores: ' + ', '.join(ignored) if ignored else ''}")


def _export_gguf(cfg: ExportConfig) -> None:
    from .infer.gguf_export import GGUFExportConfig, GGUFExportError, export_gguf
    from .train.export import find_checkpoint

    if find_checkpoint(cfg.src) is not None:
        raise GGUFExportError(f"{cfg.src} is a training checkpoint: export it to Hugging Face format first "
                              f"(`mpt export {cfg.src} DIR`), then `mpt export DIR {cfg.dst} --format gguf`")
    path = export_gguf(GGUFExportConfig(src=cfg.src, dst=cfg.dst, outtype=cfg.outtype, tokenizer=cfg.tokenizer))
    print(f"wrote {path} ({path.stat().st_size / 2**20:,.1f} MiB, llama.cpp's MPT layout); run it with "
          f"`llama-cli -m {path}` or `llama-server -m {path}`")


@dataclass
class DemoConfig:
    preset: str = option("mpt-tiny", "model preset")
    out: str | None = option(None, "where to save the model (default: a temporary folder)")
    seed: int = 0


def demo(cfg: DemoConfig) -> None:
    """Build a model from a preset, export it, reload it with plain transformers, generate past max_seq_len."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    from .infer import generate_ids
    from .model import MPTForCausalLM
    from .model.hf import save_pretrained
    from .presets import load_model_config

    torch.manual_seed(cfg.seed)
    c = load_model_config(cfg.preset)
    model = MPTForCausalLM(c).eval()
    out_dir = cfg.out or tempfile.mkdtemp(prefix="mpt-demo-")
    save_pretrained(model, out_dir)
    print(f"built {cfg.preset} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, random "
          f"weights) and saved it in Hugging Face format to {out_dir}")
    hf = AutoModelForCausalLM.from_pretrained(out_dir).eval()  # plain transformers, on purpose
    ids = torch.randint(0, c.vocab_size, (1, 32))
    with torch.no_grad():
        delta = (hf(ids).logits - model(ids).logits).abs().max().item()
    print(f"plain transformers loaded it as {type(hf).__name__}; max |logit difference| = {delta:.2e}")
    n_new = c.max_seq_len + 16 - ids.shape[1]
    start = time.perf_counter()
    out = generate_ids(model, ids, max_new_tokens=n_new)
    took = time.perf_counter() - start
    print(f"generated {n_new} tokens greedily in {took:.2f} s ({n_new / took:.0f} tokens/s), reaching "
          f"{out.shape[1]} tokens, past max_seq_len={c.max_seq_len} (ALiBi)")
    print("last 16 token ids:", out[0, -16:].tolist())
