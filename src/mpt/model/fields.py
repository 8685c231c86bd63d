"""The MPT config fields, declared once: names, types, allowed values, defaults and their checks.

``MPTConfig`` (config.py) takes its fields, defaults and validation from here, and the training
recipe's ``model.fields`` section is generated from the same dataclasses, so a field added here is
settable from a recipe with no other change. This module imports neither torch nor transformers:
``mpt train`` checks a recipe's model fields in milliseconds, before the loop loads torch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

AttnImpl = Literal["torch", "flash", "flex"]
NormType = Literal["low_precision_layernorm", "layernorm"]
AttnType = Literal["multihead_attention"]
InitName = Literal["kaiming_normal_", "small_init_", "normal_"]

ATTN_IMPLS: tuple[str, ...] = typing.get_args(AttnImpl)
NORM_TYPES: tuple[str, ...] = typing.get_args(NormType)
ATTN_TYPES: tuple[str, ...] = typing.get_args(AttnType)
INIT_NAMES: tuple[str, ...] = typing.get_args(InitName)


@dataclass
class AttnFields:
    """``attn_config``: MosaicML's attention settings."""

    attn_type: AttnType = "multihead_attention"
    attn_impl: AttnImpl = "torch"
    attn_pdrop: float = 0.0
    clip_qkv: float | None = None
    qk_ln: bool = False
    softmax_scale: float | None = None
    prefix_lm: bool = False
    attn_uses_sequence_id: bool = False  # document masking for packed samples
    alibi: bool = True
    alibi_bias_max: int = 8


@dataclass
class InitFields:
    """``init_config``: weight initialisation of a fresh model (LLM Foundry's names)."""

    name: InitName = "kaiming_normal_"
    fan_mode: str = "fan_in"
    init_nonlinearity: str = "relu"
    init_div_is_residual: bool | float = True
    init_gain: float = 0.0
    init_std: float = 0.02
    emb_init_std: float | None = None
    emb_init_uniform_lim: float | list[float] | None = None


@dataclass
class ModelFields:
    """The top-level MPT config fields (``config.json``), with MosaicML's defaults."""

    d_model: int = 2048
    n_heads: int = 16
    n_layers: int = 24
    expansion_ratio: float = 4
    max_seq_len: int = 2048
    vocab_size: int = 50432
    resid_pdrop: float = 0.0
    emb_pdrop: float = 0.0
    learned_pos_emb: bool = True
    attn_config: AttnFields = field(default_factory=AttnFields)
    init_config: InitFields = field(default_factory=InitFields)
    init_device: str = "cpu"
    logit_scale: float | Literal["inv_sqrt_d_model"] | None = None
    no_bias: bool = True
    embedding_fraction: float = 1.0
    norm_type: NormType = "low_precision_layernorm"
    layer_norm_epsilon: float = 1e-5
    use_cache: bool = False
    tie_word_embeddings: bool = True


NESTED = ("attn_config", "init_config")
ATTN_CONFIG_DEFAULTS: dict[str, Any] = dataclasses.asdict(AttnFields())
INIT_CONFIG_DEFAULTS: dict[str, Any] = dataclasses.asdict(InitFields())
TOP_DEFAULTS: dict[str, Any] = {k: v for k, v in dataclasses.asdict(ModelFields()).items() if k not in NESTED}


class MPTConfigError(ValueError):
    """A config field has a value we cannot build a model from."""


def _bad(field: str, value: Any, allowed: str) -> MPTConfigError:
    return MPTConfigError(f"MPT config field `{field}` = {value!r} is invalid: {allowed}")


def check_fields(c: Any) -> None:
    """Raise MPTConfigError naming the field, its value and what is allowed.

    ``c`` has the top-level fields as attributes and ``attn_config`` / ``init_config`` as dicts
    holding every key (an ``MPTConfig``, or ``resolved(...)``'s namespace).
    """
    for name in ("d_model", "n_heads", "n_layers", "max_seq_len", "vocab_size"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise _bad(name, value, "must be a positive integer")
    if c.d_model % c.n_heads:
        raise _bad("n_heads", c.n_heads, f"must divide d_model = {c.d_model}")
    if not (isinstance(c.expansion_ratio, (int, float)) and c.expansion_ratio > 0):
        raise _bad("expansion_ratio", c.expansion_ratio, "must be a positive number")
    if int(c.expansion_ratio * c.d_model) < 1:
        raise _bad("expansion_ratio", c.expansion_ratio, "gives an FFN width below 1")
    if c.norm_type not in NORM_TYPES:
        raise _bad("norm_type", c.norm_type, f"allowed: {', '.join(NORM_TYPES)}")
    for name in ("resid_pdrop", "emb_pdrop"):
        if not 0 <= getattr(c, name) < 1:
            raise _bad(name, getattr(c, name), "must be in [0, 1)")
    if not 0 < c.embedding_fraction <= 1:
        raise _bad("embedding_fraction", c.embedding_fraction, "must be in (0, 1]")
    ls = c.logit_scale
    if not (ls is None or ls == "inv_sqrt_d_model" or (isinstance(ls, (int, float)) and ls > 0)):
        raise _bad("logit_scale", ls, "allowed: null, a positive number or 'inv_sqrt_d_model'")
    unknown = sorted(set(c.attn_config) - set(ATTN_CONFIG_DEFAULTS))
    if unknown:
        raise _bad(f"attn_config.{unknown[0]}", c.attn_config[unknown[0]],
                   f"unknown key; known keys: {', '.join(ATTN_CONFIG_DEFAULTS)}")
    ac = c.attn_config
    if ac["attn_impl"] not in ATTN_IMPLS:
        raise _bad("attn_config.attn_impl", ac["attn_impl"],
                   f"allowed: {', '.join(ATTN_IMPLS)} (to read a checkpoint saved with another value: "
                   "load_pretrained(path, attn_impl='torch') or `mpt convert --attn-impl torch`)")
    if ac["attn_impl"] == "flash" and importlib.util.find_spec("flash_attn") is None:
        raise _bad("attn_config.attn_impl", "flash",
                   "flash-attn is not installed; `pip install flash-attn>=2.4` on a CUDA machine, "
                   "or use 'torch' (any device) or 'flex' (PyTorch FlexAttention)")
    if ac["attn_type"] not in ATTN_TYPES:
        raise _bad("attn_config.attn_type", ac["attn_type"], f"allowed: {', '.join(ATTN_TYPES)}")
    if ac["prefix_lm"]:
        raise _bad("attn_config.prefix_lm", ac["prefix_lm"], "not supported; allowed: false")
    if not isinstance(ac["attn_uses_sequence_id"], bool):
        raise _bad("attn_config.attn_uses_sequence_id", ac["attn_uses_sequence_id"], "allowed: true, false")
    if not 0 <= ac["attn_pdrop"] < 1:
        raise _bad("attn_config.attn_pdrop", ac["attn_pdrop"], "must be in [0, 1)")
    if ac["clip_qkv"] is not None and not ac["clip_qkv"] > 0:
        raise _bad("attn_config.clip_qkv", ac["clip_qkv"], "must be null or a positive number")
    if ac["softmax_scale"] is not None and not ac["softmax_scale"] > 0:
        raise _bad("attn_config.softmax_scale", ac["softmax_scale"], "must be null or a positive number")
    if not ac["alibi_bias_max"] > 0:
        raise _bad("attn_config.alibi_bias_max", ac["alibi_bias_max"], "must be a positive number")
    if c.init_config["name"] not in INIT_NAMES:
        raise _bad("init_config.name", c.init_config["name"], f"allowed: {', '.join(INIT_NAMES)}")


# Keys transformers' MptAttentionConfig adds when it serialises itself; not attention settings.
_HF_NOISE = {
    "transformers_version", "architectures", "output_hidden_states", "return_dict", "dtype",
    "torch_dtype", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
    "problem_type", "_name_or_path", "model_type", "output_attentions", "tie_word_embeddings",
}


def attention_keys(attn_config: dict[str, Any]) -> dict[str, Any]:
    """A saved ``attn_config`` without the keys transformers' serialisation adds (unknown others stay, to be refused)."""
    return {k: v for k, v in attn_config.items() if k in ATTN_CONFIG_DEFAULTS or k not in _HF_NOISE}


def saved_attn_impl(fields: dict[str, Any]) -> str | None:
    """The attention backend a config.json names (any string: other code bases saved ``triton``), or None."""
    return (fields.get("attn_config") or {}).get("attn_impl")


def resolved(fields: dict[str, Any]) -> Any:
    """``fields`` (a preset's or config.json's, possibly partial) over the defaults, as ``check_fields`` reads them."""
    top = {**TOP_DEFAULTS, **{k: v for k, v in fields.items() if k not in NESTED}}
    return SimpleNamespace(**top, attn_config={**ATTN_CONFIG_DEFAULTS, **attention_keys(fields.get("attn_config") or {})},
                      init_config={**INIT_CONFIG_DEFAULTS, **(fields.get("init_config") or {})})
