"""MPTConfig: the MPT field names, validated before any weight is built.

The field names are MosaicML's (``d_model``, ``n_heads``, ``attn_config={...}``) so a config.json
written by the original code, by transformers' ``MptConfig`` or by us reads the same way.
``model_type`` is ``"mpt"``: what we save loads with transformers' own MPT class. We never
register this class with transformers' Auto classes (that name belongs to transformers).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from transformers import PretrainedConfig

from .fields import (
    ATTN_CONFIG_DEFAULTS,
    ATTN_IMPLS,
    INIT_CONFIG_DEFAULTS,
    TOP_DEFAULTS,
    MPTConfigError,
    _bad,
    attention_keys,
    check_fields,
)

__all__ = ["ATTN_IMPLS", "MPTConfig", "MPTConfigError"]


class MPTConfig(PretrainedConfig):
    model_type = "mpt"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "max_position_embeddings": "max_seq_len",
    }

    def __init__(self, attn_config: dict | None = None, init_config: dict | None = None, **kwargs: Any) -> None:
        # Every field and default is declared once, in fields.py; what is left in kwargs is
        # transformers' own (name_or_path, architectures ...).
        for name, default in TOP_DEFAULTS.items():
            if name != "tie_word_embeddings":
                setattr(self, name, kwargs.pop(name, default))
        tie_word_embeddings = kwargs.pop("tie_word_embeddings", TOP_DEFAULTS["tie_word_embeddings"])
        if isinstance(attn_config, PretrainedConfig):  # transformers' MptAttentionConfig
            attn_config = attn_config.to_dict()
        self.attn_config = {**ATTN_CONFIG_DEFAULTS, **attention_keys(attn_config or {})}
        self.init_config = {**INIT_CONFIG_DEFAULTS, **(init_config or {})}
        # MosaicML's code drops learned position embeddings when ALiBi is on; the mpt-7b
        # config.json says both, and its checkpoint has no `wpe` tensor.
        if self.learned_pos_emb and self.attn_config["alibi"]:
            self.learned_pos_emb = False
        # MosaicML's files point `auto_map` at remote code that a saved copy would not carry.
        kwargs.pop("auto_map", None)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.validate()

    # ---- derived values -------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_hidden_size(self) -> int:
        return int(self.expansion_ratio * self.d_model)

    @property
    def resolved_logit_scale(self) -> float | None:
        if self.logit_scale == "inv_sqrt_d_model":
            return 1 / math.sqrt(self.d_model)
        return self.logit_scale

    # ---- validation -----------------------------------------------------------------
    def validate(self) -> None:
        """Raise MPTConfigError naming the field, its value and what is allowed."""
        check_fields(self)

    def check_tokenizer(self, tokenizer_vocab_size: int) -> None:
        """The embedding must hold every token id the tokenizer can produce."""
        if self.vocab_size < tokenizer_vocab_size:
            raise _bad("vocab_size", self.vocab_size,
                       f"smaller than the tokenizer's {tokenizer_vocab_size} tokens; use at least "
                       f"{-(-tokenizer_vocab_size // 128) * 128} (padded to a multiple of 128)")

    def to_dict(self) -> dict[str, Any]:
        # transformers' strict MptConfig types these as int; 0.0 would fail to load there.
        out = super().to_dict()
        out["attn_config"] = dict(out["attn_config"])
        for holder, key in ((out, "expansion_ratio"), (out["attn_config"], "attn_pdrop"),
                            (out["attn_config"], "alibi_bias_max")):
            if isinstance(holder[key], float) and holder[key].is_integer():
                holder[key] = int(holder[key])
        return out

    # ---- what transformers' own MPT ignores ---------------------------------------------
    def fields_transformers_ignores(self) -> list[str]:
        """Settings that transformers' MptForCausalLM would silently compute differently.

        ``attn_uses_sequence_id`` is not one: it acts only when a packed ``sequence_id`` is passed
        (training), and a single document without one computes the same everywhere.
        """
        ac = self.attn_config
        out = []
        if ac["qk_ln"]:
            out.append("attn_config.qk_ln")
        if self.logit_scale is not None:
            out.append("logit_scale")
        if self.learned_pos_emb:
            out.append("learned_pos_emb")
        if not ac["alibi"]:
            out.append("attn_config.alibi")
        if ac["alibi_bias_max"] != 8:
            out.append("attn_config.alibi_bias_max")
        if self.expansion_ratio != 4:
            out.append("expansion_ratio")
        if not self.no_bias:
            out.append("no_bias")
        if not float(ac["attn_pdrop"]).is_integer():
            out.append("attn_config.attn_pdrop")  # transformers' config accepts only integers here
        return out

    def warn_if_transformers_differs(self, what: str = "this checkpoint") -> list[str]:
        fields = self.fields_transformers_ignores()
        for field in fields:
            warnings.warn(
                f"{what}: config field `{field}` is not honoured by transformers' own MptForCausalLM; "
                "plain transformers will compute different outputs (load it with `mpt` instead)",
                stacklevel=3,
            )
        return fields

