"""ALiBi and the attention backends, chosen in one place (:func:`prepare` per forward, then :func:`attend`).

Backends (``attn_config.attn_impl``): ``torch`` (the default, everywhere): SDPA with the ALiBi bias and the
causal/padding mask folded into one additive mask; ``flash``: flash-attn >= 2.4 with ``alibi_slopes``, CUDA
only, unpadded batches (others take ``torch``); ``flex``: FlexAttention with an ALiBi ``score_mod`` and no
bias tensor, the path for long sequences and ``torch.compile`` on GPUs (on CPU unfused, forward only).
Packed rows (``attn_uses_sequence_id``) attend only within their document: ``torch`` folds that into its
mask, ``flex`` skips whole blocks across a boundary, ``flash`` falls back to ``torch``. Single-token decode
steps always take ``torch``. :func:`alibi_slopes` gives the per-head slopes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .fields import ATTN_IMPLS


def alibi_slopes(n_heads: int, alibi_bias_max: float = 8.0, device: torch.device | str | None = None) -> torch.Tensor:
    """Per-head ALiBi slopes, float32, shape ``(n_heads,)``.

    For a power-of-two head count ``n`` the slopes are ``2 ** (-alibi_bias_max * k / n)``,
    k = 1..n. Otherwise they are computed for the next power of two and the odd-indexed
    slopes are taken first, then the even ones, truncated to ``n_heads`` (as in the ALiBi
    paper's recipe and MosaicML's code).
    """
    n = 2 ** math.ceil(math.log2(n_heads))
    exponents = torch.arange(1, n + 1, dtype=torch.float32, device=device) * (alibi_bias_max / n)
    slopes = torch.pow(2.0, -exponents)
    if n != n_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
    return slopes


@dataclass
class AttentionInputs:
    """What every layer's attention needs; built once per forward by :func:`prepare`."""

    q_len: int
    k_len: int
    slopes: torch.Tensor | None  # (H,) float32, or None without ALiBi
    key_mask: torch.Tensor | None  # (B, k_len) bool, True = attend; None = no padding
    impl: str
    sequence_id: torch.Tensor | None = None  # (B, q_len == k_len) long; attend within equal ids only
    sdpa_mask: torch.Tensor | None = None  # additive mask for the torch path
    block_mask: object | None = None  # FlexAttention BlockMask


def _sdpa_mask(inp: AttentionInputs, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """Additive (B|1, H|1, q_len, k_len) mask: ALiBi bias, causal and padding masks together.

    The bias is ``slope_h * (j - i)`` for query position ``i`` and key position ``j <= i``. MosaicML's code
    adds ``slope_h * (j - (T - 1))`` instead; the two differ by a constant per query row, which softmax
    ignores. It depends only on ``j - i``, so ALiBi stays exact per document of a packed row, wherever the
    document sits in the row.
    """
    offset = inp.k_len - inp.q_len
    rel = (torch.arange(inp.k_len, device=device)[None, :]
           - torch.arange(offset, inp.k_len, device=device)[:, None])  # j - i, (q_len, k_len)
    neg = torch.finfo(dtype).min
    if inp.slopes is None:
        if inp.key_mask is None and inp.q_len == 1:
            return None
        mask = torch.zeros(1, 1, inp.q_len, inp.k_len, dtype=dtype, device=device)
    else:
        mask = (inp.slopes.to(device)[:, None, None] * rel).to(dtype)[None]
    if inp.q_len > 1:
        mask = mask.masked_fill(rel > 0, neg)
    if inp.key_mask is not None:
        mask = mask.masked_fill(~inp.key_mask[:, None, None, :], neg)
    if inp.sequence_id is not None:
        seq = inp.sequence_id.to(device)
        mask = mask.masked_fill(seq[:, None, :, None] != seq[:, None, None, :], neg)
    return mask


def _flex_block_mask(inp: AttentionInputs, batch: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    offset = inp.k_len - inp.q_len
    key_mask, seq = inp.key_mask, inp.sequence_id

    if key_mask is None and seq is None:
        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx <= q_idx + offset
        return create_block_mask(mask_mod, None, None, inp.q_len, inp.k_len, device=device)

    seq = seq.to(device) if seq is not None else None
    key_mask = key_mask.to(device) if key_mask is not None else None

    # Per-row masks; create_block_mask evaluates this per block and drops the blocks where it is
    # False everywhere (another document's keys), so packing costs no attention FLOPs.
    def row_mask_mod(b, h, q_idx, kv_idx):
        allowed = kv_idx <= q_idx + offset
        if key_mask is not None:
            allowed = allowed & key_mask[b, kv_idx]
        if seq is not None:
            allowed = allowed & (seq[b, q_idx] == seq[b, kv_idx])
        return allowed
    return create_block_mask(row_mask_mod, batch, None, inp.q_len, inp.k_len, device=device)


def prepare(impl: str, batch: int, q_len: int, k_len: int, slopes: torch.Tensor | None,
            key_mask: torch.Tensor | None, dtype: torch.dtype, device: torch.device,
            sequence_id: torch.Tensor | None = None) -> AttentionInputs:
    """Precompute what the chosen backend needs, once for all layers.

    ``sequence_id`` (B, q_len) is validated by the model; it needs ``q_len == k_len`` (no cache).
    """
    if key_mask is not None and bool(key_mask.all()):
        key_mask = None
    # With one query the bias is a single row, and SDPA is the fastest kernel for that shape on every device.
    if q_len == 1 or (impl == "flash" and (key_mask is not None or sequence_id is not None)):
        impl = "torch"
    inp = AttentionInputs(q_len, k_len, slopes, key_mask, impl, sequence_id)
    if impl == "torch":
        inp.sdpa_mask = _sdpa_mask(inp, dtype, device)
    elif impl == "flex":
        inp.block_mask = _flex_block_mask(inp, batch, device)
    return inp


_compiled_flex = None


def _flex_attention(q, k, v, score_mod, block_mask, scale):
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled_flex
    if q.device.type == "cpu":
        # Compiling takes tens of seconds on CPU and the CPU kernel is inference-only; the unfused
        # path gives the same numbers.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inp: AttentionInputs,
           scale: float, dropout_p: float = 0.0) -> torch.Tensor:
    """Attention for ``q, k, v`` of shape ``(B, H, T, head_dim)``; returns ``(B, H, q_len, head_dim)``."""
    if inp.impl == "torch":
        if inp.sdpa_mask is None:  # one query, no ALiBi, no padding: attend to everything
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=inp.sdpa_mask, dropout_p=dropout_p, scale=scale)

    if inp.impl == "flex":
        if dropout_p:
            raise ValueError("attn_impl 'flex' has no attention dropout; set attn_config.attn_pdrop=0 "
                             "or use attn_impl 'torch'")
        offset = inp.k_len - inp.q_len
        slopes = inp.slopes
        if slopes is None:
            score_mod = None
        else:
            slopes = slopes.to(q.device)

            def score_mod(score, b, h, q_idx, kv_idx):
                return score + slopes[h] * (kv_idx - q_idx - offset)
        return _flex_attention(q, k, v, score_mod, inp.block_mask, scale)

    if inp.impl == "flash":
        from flash_attn import flash_attn_func

        slopes = inp.slopes.to(q.device) if inp.slopes is not None else None
        # flash-attn wants (B, T, H, D); its causal mask is aligned bottom-right (queries are
        # the last q_len keys), and its ALiBi bias -slope*|i - j| equals slope*(j - i) there.
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p,
                              softmax_scale=scale, causal=True, alibi_slopes=slopes)
        return out.transpose(1, 2)

    raise ValueError(f"attn_impl {inp.impl!r} is unknown; allowed: {', '.join(ATTN_IMPLS)}")
