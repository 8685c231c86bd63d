"""Model presets (``configs/models/*.yaml``) and the numbers ``mpt model-info`` prints."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from .model import MPTConfig


def preset_names() -> list[str]:
    folder = resources.files("mpt") / "configs" / "models"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_model_config(name_or_path: str, **overrides) -> MPTConfig:
    """A preset name (``mpt-7b``, or ``7b``) or a YAML file of MPTConfig fields."""
    from .model import MPTConfig

    return MPTConfig(**{**preset_fields(name_or_path), **overrides})


def preset_fields(name_or_path: str) -> dict:
    """The MPTConfig fields a preset name or YAML file sets, as a dict (no torch, no transformers)."""
    path = Path(name_or_path)
    if not path.suffix:
        name = name_or_path if name_or_path.startswith("mpt-") else f"mpt-{name_or_path}"
        if name not in preset_names():
            raise ValueError(f"unknown model preset {name_or_path!r}; presets: {', '.join(preset_names())} "
                             "(or give a YAML file of MPTConfig fields)")
        text = (resources.files("mpt") / "configs" / "models" / f"{name}.yaml").read_text()
    elif path.is_file():
        text = path.read_text()
    else:
        raise FileNotFoundError(f"model config file {name_or_path} does not exist")
    fields = yaml.safe_load(text) or {}
    if not isinstance(fields, dict):
        raise ValueError(f"{name_or_path}: expected a mapping of MPTConfig fields, got {type(fields).__name__}")
    return fields


def train_flops_per_token(params: int, cfg: MPTConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token by LLM Foundry's MFU formula: 6 per parameter (forward + backward) plus
    the attention scores, 12 * n_layers * d_model * seq_len (default: ``cfg.max_seq_len``)."""
    return 6 * params + 12 * cfg.n_layers * cfg.d_model * (seq_len or cfg.max_seq_len)


@dataclass
class ModelInfo:
    params: int
    non_embedding_params: int
    train_flops_per_token: float  # forward + backward, at max_seq_len
    weights_gib_bf16: float
    train_state_gib_lion: float  # fp32 master weights + grads + one Lion buffer
    train_state_gib_adamw: float  # fp32 master weights + grads + two AdamW buffers


def model_info(cfg: MPTConfig) -> ModelInfo:
    """Parameter count and FLOPs/token (:func:`train_flops_per_token`) from the config alone (no weights built)."""
    d, L, V = cfg.d_model, cfg.n_layers, cfg.vocab_size
    f = cfg.ffn_hidden_size
    bias = not cfg.no_bias
    norm = d * (2 if bias else 1)
    attn = 3 * d * d + d * d + (4 * d if bias else 0) + (2 * norm if cfg.attn_config["qk_ln"] else 0)
    ffn = 2 * d * f + ((f + d) if bias else 0)
    block = attn + ffn + 2 * norm
    emb = V * d + (cfg.max_seq_len * d if cfg.learned_pos_emb else 0)
    head = 0 if cfg.tie_word_embeddings else V * d
    params = emb + L * block + norm + head
    flops = train_flops_per_token(params, cfg)
    gib = 1024**3
    return ModelInfo(params, params - emb - head, flops, params * 2 / gib, params * 12 / gib, params * 16 / gib)
