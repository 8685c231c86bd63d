"""Load and save Hugging Face-format MPT checkpoints.

Reads all three layouts that exist in the wild -- ours, transformers' ``MptForCausalLM`` and
MosaicML's original (``auto_map`` remote code, ``.bin`` shards with an index) -- since they share
tensor names. Writes safetensors + ``config.json`` with ``model_type: "mpt"``, which plain
``transformers.AutoModelForCausalLM`` loads with its own MPT class.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .modeling import MPTForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json")


def load_pretrained(src: str | Path, dtype: torch.dtype | None = None, attn_impl: str | None = None,
                    **kwargs) -> MPTForCausalLM:
    """A local directory or, when online, a hub name (e.g. ``mosaicml/mpt-7b``)."""
    if attn_impl is not None:
        # Override before validation: a config saying `flash` or `triton` must load on a CPU machine.
        from .config import MPTConfig

        fields, _ = MPTConfig.get_config_dict(str(src), **{k: v for k, v in kwargs.items() if k == "revision"})
        fields["attn_config"] = {**fields.get("attn_config", {}), "attn_impl": attn_impl}
        kwargs["config"] = MPTConfig.from_dict(fields)
    return MPTForCausalLM.from_pretrained(str(src), dtype=dtype, **kwargs)


def save_pretrained(model: MPTForCausalLM, dst: str | Path, tokenizer_from: str | Path | None = None) -> list[str]:
    """Write a transformers-loadable checkpoint; return the config fields transformers would ignore."""
    ignored = model.config.warn_if_transformers_differs(f"export to {dst}")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst, safe_serialization=True)
    if tokenizer_from is not None and Path(tokenizer_from).is_dir():
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_from) / name).is_file() and not (dst / name).exists():
                shutil.copy2(Path(tokenizer_from) / name, dst / name)
    return ignored
