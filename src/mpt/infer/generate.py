"""A lean generation loop on our KV cache.

transformers' ``generate`` works with our model too; this loop exists because its per-step
bookkeeping (logits processors, mask rebuilding, cache concatenation) costs more than a small
model's forward pass. It preallocates the cache for prompt + new tokens and keeps only the last
position's logits.
"""

from __future__ import annotations

import torch

from ..model import KVCache, MPTForCausalLM


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row from ``(B, V)`` logits: greedy at temperature 0."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate_ids(model: MPTForCausalLM, input_ids: torch.Tensor, max_new_tokens: int,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 eos_token_id: int | None = None, attention_mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Return ``(B, T + n)`` token ids; rows that hit ``eos_token_id`` are padded with it.

    Continues past ``max_seq_len`` for ALiBi models (no position embedding limits it).
    ``attention_mask`` marks left padding in a batch of prompts of different lengths.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    B, T = input_ids.shape
    cache = KVCache(model.config.n_layers, capacity=T + max_new_tokens)
    mask = attention_mask
    out = model(input_ids, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
    tokens = [input_ids]
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    for step in range(max_new_tokens):
        nxt = sample_next(out.logits[:, -1], temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            nxt = nxt.masked_fill(done, eos_token_id)
            done |= nxt == eos_token_id
        tokens.append(nxt[:, None])
        if step == max_new_tokens - 1 or (eos_token_id is not None and bool(done.all())):
            break
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        out = model(nxt[:, None], attention_mask=mask, cache=cache, use_cache=True)
    return torch.cat(tokens, dim=1)
