"""MPTConfig: the MPT field names, validated before any weight is built.

The field names are MosaicML's (``d_model``, ``n_heads``, ``attn_config={...}``) so a config.json
written by the original code, by transformers' ``MptConfig`` or by us reads the same way.
``model_type`` is ``"mpt"``: what we save loads with transformers' own MPT class. We never
register this class with transformers' Auto classes (that name belongs to transformers).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from typing import Any

from transformers import PretrainedConfig

ATTN_IMPLS = ("torch", "flash", "flex")
NORM_TYPES = ("low_precision_layernorm", "layernorm")
ATTN_TYPES = ("multihead_attention",)
INIT_NAMES = ("kaiming_normal_", "small_init_", "normal_")

ATTN_CONFIG_DEFAULTS: dict[str, Any] = {
    "attn_type": "multihead_attention",
    "attn_impl": "torch",
    "attn_pdrop": 0.0,
    "clip_qkv": None,
    "qk_ln": False,
    "softmax_scale": None,
    "prefix_lm": False,
    "attn_uses_sequence_id": False,
    "alibi": True,
    "alibi_bias_max": 8,
}

INIT_CONFIG_DEFAULTS: dict[str, Any] = {
    "name": "kaiming_normal_",
    "fan_mode": "fan_in",
    "init_nonlinearity": "relu",
    "init_div_is_residual": True,
    "init_gain": 0.0,
    "init_std": 0.02,
    "emb_init_std": None,
    "emb_init_uniform_lim": None,
}


class MPTConfigError(ValueError):
    """A config field has a value we cannot build a model from."""


def _bad(field: str, value: Any, allowed: str) -> MPTConfigError:
    return MPTConfigError(f"MPT config field `{field}` = {value!r} is invalid: {allowed}")


class MPTConfig(PretrainedConfig):
    model_type = "mpt"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "max_position_embeddings": "max_seq_len",
    }

    def __init__(
        self,
        d_model: int = 2048,
        n_heads: int = 16,
        n_layers: int = 24,
        expansion_ratio: float = 4,
        max_seq_len: int = 2048,
        vocab_size: int = 50432,
        resid_pdrop: float = 0.0,
        emb_pdrop: float = 0.0,
        learned_pos_emb: bool = True,
        attn_config: dict | None = None,
        init_config: dict | None = None,
        init_device: str = "cpu",
        logit_scale: float | str | None = None,
        no_bias: bool = True,
        embedding_fraction: float = 1.0,
        norm_type: str = "low_precision_layernorm",
        layer_norm_epsilon: float = 1e-5,
        use_cache: bool = False,
        tie_word_embeddings: bool = True,
        **kwargs: Any,
    ) -> None:
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.expansion_ratio = expansion_ratio
        self.max_seq_len = max_seq_len
        self.vocab_size = vocab_size
        self.resid_pdrop = resid_pdrop
        self.emb_pdrop = emb_pdrop
        self.learned_pos_emb = learned_pos_emb
        if isinstance(attn_config, PretrainedConfig):  # transformers' MptAttentionConfig
            attn_config = attn_config.to_dict()
        self.attn_config = {**ATTN_CONFIG_DEFAULTS, **{k: v for k, v in (attn_config or {}).items()
                                                       if k in ATTN_CONFIG_DEFAULTS or k not in _HF_NOISE}}
        self.init_config = {**INIT_CONFIG_DEFAULTS, **(init_config or {})}
        self.init_device = init_device
        self.logit_scale = logit_scale
        self.no_bias = no_bias
        self.embedding_fraction = embedding_fraction
        self.norm_type = norm_type
        self.layer_norm_epsilon = layer_norm_epsilon
        self.use_cache = use_cache
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
        for name in ("d_model", "n_heads", "n_layers", "max_seq_len", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise _bad(name, value, "must be a positive integer")
        if self.d_model % self.n_heads:
            raise _bad("n_heads", self.n_heads, f"must divide d_model = {self.d_model}")
        if not (isinstance(self.expansion_ratio, (int, float)) and self.expansion_ratio > 0):
            raise _bad("expansion_ratio", self.expansion_ratio, "must be a positive number")
        if self.ffn_hidden_size < 1:
            raise _bad("expansion_ratio", self.expansion_ratio, "gives an FFN width below 1")
        if self.norm_type not in NORM_TYPES:
            raise _bad("norm_type", self.norm_type, f"allowed: {', '.join(NORM_TYPES)}")
        for name in ("resid_pdrop", "emb_pdrop"):
            if not 0 <= getattr(self, name) < 1:
                raise _bad(name, getattr(self, name), "must be in [0, 1)")
        if not 0 < self.embedding_fraction <= 1:
            raise _bad("embedding_fraction", self.embedding_fraction, "must be in (0, 1]")
        ls = self.logit_scale
        if not (ls is None or ls == "inv_sqrt_d_model" or (isinstance(ls, (int, float)) and ls > 0)):
            raise _bad("logit_scale", ls, "allowed: null, a positive number or 'inv_sqrt_d_model'")
        unknown = sorted(set(self.attn_config) - set(ATTN_CONFIG_DEFAULTS))
        if unknown:
            raise _bad(f"attn_config.{unknown[0]}", self.attn_config[unknown[0]],
                       f"unknown key; known keys: {', '.join(ATTN_CONFIG_DEFAULTS)}")
        ac = self.attn_config
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
        ic = self.init_config
        if ic["name"] not in INIT_NAMES:
            raise _bad("init_config.name", ic["name"], f"allowed: {', '.join(INIT_NAMES)}")

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


# Keys transformers' MptAttentionConfig adds when it serialises itself; not attention settings.
_HF_NOISE = {
    "transformers_version", "architectures", "output_hidden_states", "return_dict", "dtype",
    "torch_dtype", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
    "problem_type", "_name_or_path", "model_type", "output_attentions", "tie_word_embeddings",
}
