"""The MPT network: blocks, MPTModel, MPTForCausalLM.

Weight names follow MosaicML's layout (``transformer.wte``, ``transformer.blocks.N.attn.Wqkv``,
``transformer.blocks.N.ffn.up_proj``, ``transformer.norm_f``; ``lm_head`` only when untied), which
is also what transformers' ``MptForCausalLM`` reads.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ..console import transformers_bars_off
from .attention import alibi_slopes, attend, prepare
from .config import MPTConfig
from .loss import linear_cross_entropy
from .norm import LayerNorm

# transformers renamed `past_key_values` to `cache` in its 5.x outputs; fill whichever exists.
_CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} \
    else "past_key_values"


class MPTCheckpointError(ValueError):
    """A checkpoint's tensors do not match the model built from its config."""


def _norm(config: MPTConfig, dim: int) -> LayerNorm:
    return LayerNorm(dim, eps=config.layer_norm_epsilon, bias=not config.no_bias,
                     low_precision=config.norm_type == "low_precision_layernorm")


def check_sequence_id(sequence_id: torch.Tensor, batch: int, seq_len: int, past: int, enabled: bool) -> None:
    """A packed row's document ids: one per token, -1 on padding, the others non-decreasing.

    Non-decreasing ids keep each document contiguous, which is what lets a document's positions
    (and ALiBi's distances) be the same as if it were alone.
    """
    if not enabled:
        raise ValueError("sequence_id was given but attn_config.attn_uses_sequence_id is false, so packed "
                         "documents would attend to each other; set model attn_config.attn_uses_sequence_id: true")
    if tuple(sequence_id.shape) != (batch, seq_len):
        raise ValueError(f"sequence_id has shape {tuple(sequence_id.shape)}; expected {(batch, seq_len)}, "
                         "one id per input token")
    if sequence_id.dtype.is_floating_point or sequence_id.dtype == torch.bool:
        raise ValueError(f"sequence_id has dtype {sequence_id.dtype}; expected an integer tensor")
    if past:
        raise ValueError(f"sequence_id cannot be used with a KV cache holding {past} tokens; it is for "
                         "whole packed rows (training, scoring), not for incremental decoding")
    seq = sequence_id.long()
    bad = (seq < -1) | ((seq >= 0) & (seq < seq.cummax(dim=1).values))
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"sequence_id row {row} = {seq[row].tolist()} is invalid at position {col} "
                         f"(value {int(seq[row, col])}): ids must be -1 (padding) or non-decreasing along a row")


def document_positions(sequence_id: torch.Tensor) -> torch.Tensor:
    """Each token's index inside its run of equal ids, e.g. [0, 0, 0, 1, 1, -1] -> [0, 1, 2, 0, 1, 0]."""
    T = sequence_id.shape[1]
    index = torch.arange(T, device=sequence_id.device).expand_as(sequence_id)
    starts = torch.ones_like(sequence_id, dtype=torch.bool)
    starts[:, 1:] = sequence_id[:, 1:] != sequence_id[:, :-1]
    return index - torch.where(starts, index, 0).cummax(dim=1).values


class MPTAttention(nn.Module):
    def __init__(self, config: MPTConfig, layer_idx: int) -> None:
        super().__init__()
        ac = config.attn_config
        self.layer_idx = layer_idx
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.clip_qkv = ac["clip_qkv"]
        self.softmax_scale = ac["softmax_scale"] or 1 / math.sqrt(self.head_dim)
        self.attn_pdrop = ac["attn_pdrop"]
        d = config.d_model
        self.Wqkv = nn.Linear(d, 3 * d, bias=not config.no_bias)
        if ac["qk_ln"]:
            self.q_ln = _norm(config, d)
            self.k_ln = _norm(config, d)
        else:
            self.q_ln = self.k_ln = None
        self.out_proj = nn.Linear(d, d, bias=not config.no_bias)
        self.out_proj._is_residual = True

    def forward(self, x: torch.Tensor, attn_inputs, cache=None) -> torch.Tensor:
        return self.out_proj(self.mix(self.Wqkv(x), attn_inputs, cache))

    def mix(self, qkv: torch.Tensor, attn_inputs, cache=None) -> torch.Tensor:
        """Attention between the projections: ``qkv`` (B, T, 3·D) to the heads' outputs (B, T, D), before
        ``out_proj`` (apart so :mod:`mpt.model.ragged` can run the projections over several batches at once)."""
        B, T, D = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        q, k, v = qkv.chunk(3, dim=-1)
        if self.q_ln is not None:
            dtype = q.dtype
            q = self.q_ln(q).to(dtype)
            k = self.k_ln(k).to(dtype)
        q, k, v = (t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        dtype = q.dtype
        if k.dtype != dtype:  # a cache of another dtype (KVCache's dtype): attend in the cache's
            q = q.to(k.dtype)
        out = attend(q, k, v, attn_inputs, self.softmax_scale, self.attn_pdrop if self.training else 0.0)
        return out.transpose(1, 2).reshape(B, T, D).to(dtype)


class MPTMLP(nn.Module):
    def __init__(self, config: MPTConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(config.d_model, config.ffn_hidden_size, bias=not config.no_bias)
        self.down_proj = nn.Linear(config.ffn_hidden_size, config.d_model, bias=not config.no_bias)
        self.down_proj._is_residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


class MPTBlock(nn.Module):
    def __init__(self, config: MPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.norm_1 = _norm(config, config.d_model)
        self.attn = MPTAttention(config, layer_idx)
        self.norm_2 = _norm(config, config.d_model)
        self.ffn = MPTMLP(config)
        self.resid_drop = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor, attn_inputs, cache=None) -> torch.Tensor:
        x = x + self.resid_drop(self.attn(self.norm_1(x), attn_inputs, cache))
        return x + self.resid_drop(self.ffn(self.norm_2(x)))


class MPTPreTrainedModel(PreTrainedModel):
    config_class = MPTConfig
    config: MPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = False
    _no_split_modules = ["MPTBlock"]
    # Old transformers .bin files of tied models also hold the tied `lm_head.weight` copy.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.weight$"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """LLM Foundry's initialisation: kaiming / small-init / normal, residual outputs scaled down."""
        ic = self.config.init_config
        d = self.config.d_model
        if isinstance(module, nn.Linear):
            _init_matrix(module.weight, ic, d)
            if getattr(module, "_is_residual", False) and ic["init_div_is_residual"]:
                div = ic["init_div_is_residual"]
                div = math.sqrt(2 * self.config.n_layers) if div is True else float(div)
                module.weight.div_(div)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            if ic["emb_init_std"] is not None:
                module.weight.normal_(0.0, ic["emb_init_std"])
            elif ic["emb_init_uniform_lim"] is not None:
                lim = ic["emb_init_uniform_lim"]
                lo, hi = (-lim, lim) if isinstance(lim, (int, float)) else lim
                module.weight.uniform_(lo, hi)
            else:
                _init_matrix(module.weight, ic, d)
        elif isinstance(module, LayerNorm):
            module.weight.fill_(1.0)
            if module.bias is not None:
                module.bias.zero_()


def _init_matrix(weight: torch.Tensor, ic: dict, d_model: int) -> None:
    if weight.is_meta:
        return
    name = ic["name"]
    if name == "kaiming_normal_":
        nn.init.kaiming_normal_(weight, a=ic["init_gain"], mode=ic["fan_mode"],
                                nonlinearity=ic["init_nonlinearity"])
    elif name == "small_init_":
        weight.normal_(0.0, math.sqrt(2 / (5 * d_model)))
    elif name == "normal_":
        weight.normal_(0.0, ic["init_std"])
    else:
        raise ValueError(f"init_config.name {name!r} is unknown; allowed: kaiming_normal_, small_init_, normal_")


class MPTModel(MPTPreTrainedModel):
    def __init__(self, config: MPTConfig) -> None:
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.max_seq_len, config.d_model) if config.learned_pos_emb else None
        self.emb_drop = nn.Dropout(config.emb_pdrop)
        self.blocks = nn.ModuleList(MPTBlock(config, i) for i in range(config.n_layers))
        self.norm_f = _norm(config, config.d_model)
        # Derived from the config, so neither a parameter nor a buffer: transformers' loader
        # builds models on the meta device and would leave a buffer empty.
        self._slopes: dict[torch.device, torch.Tensor] = {}
        self.post_init()

    def alibi_slopes(self, device: torch.device) -> torch.Tensor | None:
        ac = self.config.attn_config
        if not ac["alibi"]:
            return None
        if device not in self._slopes:
            self._slopes[device] = alibi_slopes(self.config.n_heads, ac["alibi_bias_max"], device)
        return self._slopes[device]

    def scale_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The token embeddings with their gradient (not their value) scaled by ``embedding_fraction``."""
        frac = self.config.embedding_fraction
        return x * frac + x.detach() * (1 - frac) if frac < 1 else x

    def attention_inputs(self, B: int, T: int, past: int, key_mask: torch.Tensor | None, dtype: torch.dtype,
                         cache, device: torch.device, sequence_id: torch.Tensor | None = None):
        """What every layer's attention needs for ``T`` new tokens after ``past`` cached ones; a cache of its
        own ``dtype`` (KVCache's) sets the attention's dtype."""
        dtype = getattr(cache, "dtype", None) or dtype
        return prepare(self.config.attn_config["attn_impl"], B, T, past + T, self.alibi_slopes(device), key_mask,
                       dtype, device, sequence_id)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.wte = value

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                past_key_values=None, cache=None, inputs_embeds: torch.Tensor | None = None,
                use_cache: bool | None = None, sequence_id: torch.LongTensor | None = None,
                **kwargs) -> BaseModelOutputWithPast:
        """``sequence_id`` (B, T): packed rows, see :func:`check_sequence_id`."""
        cache = cache if cache is not None else past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache is None and use_cache and not self.training:
            from .cache import KVCache

            cache = KVCache(self.config.n_layers)
        past = cache.get_seq_length() if cache is not None else 0
        if sequence_id is not None:
            check_sequence_id(sequence_id, B, T, past, self.config.attn_config["attn_uses_sequence_id"])

        key_mask = None
        if attention_mask is not None:
            key_mask = attention_mask.bool()
            if key_mask.shape[1] == T and past:
                key_mask = torch.cat([key_mask.new_ones(B, past), key_mask], dim=1)
            if key_mask.shape[1] != past + T:
                raise ValueError(f"attention_mask has {attention_mask.shape[1]} positions; expected {past + T} "
                                 f"(cached {past} + new {T})")

        if self.wpe is not None:
            if past + T > self.config.max_seq_len:
                raise ValueError(
                    f"sequence length {past + T} exceeds max_seq_len={self.config.max_seq_len}: this model uses "
                    "learned position embeddings (learned_pos_emb), which cannot extrapolate; ALiBi models can")
            # Each packed document starts at position 0, so it computes what it would alone (LLM
            # Foundry keeps the row's positions here, which makes a packed document differ from itself).
            if sequence_id is not None:
                positions = document_positions(sequence_id.to(x.device))
            elif key_mask is None:
                positions = torch.arange(past, past + T, device=x.device)[None]
            else:  # left padding: each row's first real token is position 0 (as MosaicML's code does)
                positions = (key_mask.long().cumsum(1) - 1).clamp(min=0)[:, past:]
            x = x + self.wpe(positions)
        x = self.emb_drop(self.scale_embedding(x))

        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        attn_inputs = self.attention_inputs(B, T, past, key_mask, dtype, cache, x.device, sequence_id)
        for block in self.blocks:
            x = block(x, attn_inputs, cache)
        x = self.norm_f(x)
        return BaseModelOutputWithPast(last_hidden_state=x, **{_CACHE_FIELD: cache if use_cache else None})


class MPTForCausalLM(MPTPreTrainedModel, GenerationMixin):
    def __init__(self, config: MPTConfig) -> None:
        super().__init__(config)
        self.transformer = MPTModel(config)
        # Tied: the logits reuse wte (no lm_head tensor, as in MosaicML's checkpoints).
        self.lm_head = None if config.tie_word_embeddings else \
            nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # a head of its own runs its own forward (an int8 head multiplies differently)
        logits = F.linear(hidden, self.transformer.wte.weight) if self.lm_head is None else self.lm_head(hidden)
        scale = self.config.resolved_logit_scale
        return logits * scale if scale is not None else logits

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                past_key_values=None, cache=None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                logits_to_keep: int = 0, sequence_id: torch.LongTensor | None = None,
                **kwargs) -> CausalLMOutputWithPast:
        """transformers' causal-LM forward. ``cache`` (or ``past_key_values``) is a :class:`KVCache` or
        any transformers cache. With ``labels`` in training mode the loss is computed fused with the
        output projection (loss.py) and ``logits`` is None: the logits are never materialised."""
        out = self.transformer(input_ids, attention_mask=attention_mask,
                               cache=cache if cache is not None else past_key_values,
                               inputs_embeds=inputs_embeds, use_cache=use_cache, sequence_id=sequence_id)
        hidden = out.last_hidden_state
        loss = logits = None
        if labels is not None:
            # Predict token t+1 at position t: shift the labels, not the (large) logits.
            targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1).flatten()
        if labels is not None and self.training and torch.is_grad_enabled():
            # Training: never materialise the (tokens x vocab) logits; see loss.py.
            weight = self.transformer.wte.weight if self.lm_head is None else self.lm_head.weight
            loss = linear_cross_entropy(hidden.flatten(0, 1), weight, targets, self.config.resolved_logit_scale)
        else:
            logits = self.logits(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
            if labels is not None:
                loss = F.cross_entropy(logits.flatten(0, 1).float(), targets, ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: getattr(out, _CACHE_FIELD)})

    def generate(self, *args, **kwargs):
        """transformers' ``generate``, decoding with our :class:`KVCache` unless told otherwise.

        Our config's ``use_cache`` is False (as MosaicML's is, for training), which would make
        transformers' loop run the whole sequence again for every new token; so unless the caller passes
        a cache or ``use_cache=False``, a :class:`KVCache` is made here (transformers' own would
        concatenate every step). For the faster loop, compiled decode included, see
        :func:`mpt.infer.generate_ids`.
        """
        if kwargs.get("use_cache", True) and kwargs.get("cache") is None and kwargs.get("past_key_values") is None:
            from .cache import KVCache

            kwargs["use_cache"] = True
            kwargs[_CACHE_FIELD] = KVCache(self.config.n_layers)
        return super().generate(*args, **kwargs)

    def save_pretrained(self, *args, **kwargs):
        """transformers' writer, without its "Writing model shards" bar (``MPT_VERBOSE=1`` shows it)."""
        with transformers_bars_off():
            return super().save_pretrained(*args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loader, but a checkpoint whose tensors do not match is an error.

        transformers would warn and randomly initialise missing tensors; we list them instead.
        """
        want_info = kwargs.pop("output_loading_info", False)
        # Mismatched shapes are collected (not raised by transformers) so one error lists all problems.
        kwargs.setdefault("ignore_mismatched_sizes", True)
        with transformers_bars_off():
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                                  **kwargs)
        problems = []
        for key, label in (("missing_keys", "missing"), ("unexpected_keys", "unexpected"),
                           ("mismatched_keys", "wrong shape")):
            names = sorted(str(n) for n in (info.get(key) or []))
            if names:
                problems.append(f"{label} ({len(names)}): {', '.join(names)}")
        if problems:
            raise MPTCheckpointError(f"checkpoint {pretrained_model_name_or_path} does not match its config "
                                     f"({model.config.n_layers} layers, d_model {model.config.d_model}):\n  "
                                     + "\n  ".join(problems))
        return (model, info) if want_info else model
