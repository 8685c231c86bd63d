"""Load and save Hugging Face-format MPT checkpoints.

Reads all three layouts that exist in the wild -- ours, transformers' ``MptForCausalLM`` and
MosaicML's original (``auto_map`` remote code, ``.bin`` shards with an index) -- since they share
tensor names. Writes safetensors + ``config.json`` with ``model_type: "mpt"``, which plain
``transformers.AutoModelForCausalLM`` loads with its own MPT class. Loading for use goes through
:func:`mpt.model.load.load_model`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .fields import ATTN_IMPLS, saved_attn_impl
from .load import default_device, load_model, read_config_dict, usable_attn_impl
from .modeling import MPTForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json")


def load_pretrained(src: str | Path, dtype: torch.dtype | None = None, attn_impl: str | None = None) -> MPTForCausalLM:
    """For callers that place the model themselves (training's ``init_from``): weights on the CPU in
    ``dtype`` (default: as saved), attention chosen for this machine's default device."""
    if attn_impl is None:
        saved = saved_attn_impl(read_config_dict(src))
        attn_impl = usable_attn_impl(saved, default_device())
    return load_model(src, device="cpu", dtype=dtype or "auto", attn_impl=attn_impl)


def copy_tokenizer_files(src: str | Path | None, dst: str | Path, overwrite: bool = False) -> list[str]:
    """Copy the tokenizer files a folder holds (a tokenizer.json file: that file); return their names."""
    if src is None or not Path(src).exists():
        return []
    src, dst = Path(src), Path(dst)
    files = [src] if src.is_file() else [src / n for n in TOKENIZER_FILES if (src / n).is_file()]
    for f in files:
        if overwrite or not (dst / f.name).exists():
            shutil.copy2(f, dst / f.name)
    return [f.name for f in files]


def save_pretrained(model: MPTForCausalLM, dst: str | Path, tokenizer_from: str | Path | None = None) -> list[str]:
    """Write a transformers-loadable checkpoint; return the config fields transformers would ignore."""
    ignored = model.config.warn_if_transformers_differs(f"export to {dst}")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst, safe_serialization=True)
    # transformers names our class in `architectures`; tools that pick the class from it (`transformers
    # serve`, vLLM) need transformers' own name for MPT, which reads the same files
    config_file = dst / "config.json"
    fields = json.loads(config_file.read_text())
    fields["architectures"] = ["MptForCausalLM"]
    config_file.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    copy_tokenizer_files(tokenizer_from, dst)
    return ignored


def convert(src: str | Path, dst: str | Path, dtype: str | None = None,
            attn_impl: str | None = None) -> tuple[MPTForCausalLM, list[str]]:
    """Any MPT checkpoint -> ours, tokenizer files alongside; ``attn_impl`` kept unless given.

    Returns the model and the config fields transformers would ignore.
    """
    model = load_model(src, device="cpu", dtype=dtype or "auto", attn_impl=attn_impl)
    saved = saved_attn_impl(read_config_dict(src))
    if attn_impl is None and saved in ATTN_IMPLS:  # load_model picked a path for this machine; keep the file's
        model.config.attn_config["attn_impl"] = saved
    return model, save_pretrained(model, dst, tokenizer_from=src)
