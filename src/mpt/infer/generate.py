"""Static generation: a batch of prompt ids in, one tensor of prompts and continuations out.

It runs on the continuous-batching engine (batching.py) with every row joining at once, so the
server, ``mpt.load(...).generate`` and this function share one decode loop and one stop rule. Like
that engine, it is leaner than transformers' ``generate``, whose per-step bookkeeping (logits
processors, mask rebuilding, cache concatenation) costs more than a small model's forward pass: the
cache is preallocated for prompt + new tokens and only the last position's logits are kept. With
``compile`` its decode steps run compiled over a static cache, and ``prefill_chunk`` bounds the
tokens of one prefill forward (both the engine's).
"""

from __future__ import annotations

import torch

from ..model import MPTForCausalLM
from .batching import BatchEngine, Row
from .sampling import SamplingParams


@torch.inference_mode()
def generate_ids(model: MPTForCausalLM, input_ids: torch.Tensor, max_new_tokens: int,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 eos_token_id: int | None = None, attention_mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, compile: bool | None = None,
                 prefill_chunk: int | None = None) -> torch.Tensor:
    """Return ``(B, T + n)`` token ids; a row that ends early (at ``eos_token_id``) is padded with it.

    Continues past ``max_seq_len`` for ALiBi models (no position embedding limits it); a model with
    learned position embeddings stops when its window is full (rows that end there are padded with
    ``eos_token_id``, or 0 without one). ``attention_mask`` marks left padding in a batch of prompts
    of different lengths. Sampled rows draw from ``generator`` one after the other.

    ``compile``: decode through ``torch.compile`` over a static cache (default: on CUDA only; on CPU
    the inductor compile takes ~10-60 s, more than most short generations save; see
    :class:`~mpt.infer.batching.BatchEngine`). Greedy tokens are the eager ones.
    ``prefill_chunk``: read the prompts at most this many tokens per forward (None: all at once), so a
    very long prompt's activations stay bounded; the cache still holds the whole prompt.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if max_new_tokens == 0:
        return input_ids.clone()
    prompts = input_ids.tolist()
    if attention_mask is not None:
        prompts = [[t for t, m in zip(ids, row, strict=True) if m] for ids, row in zip(
            prompts, attention_mask.tolist(), strict=True)]
    params = SamplingParams(max_new_tokens, temperature, top_p, top_k)
    rows = [Row(i, ids, params, generator) for i, ids in enumerate(prompts)]
    engine = BatchEngine(model, None, [] if eos_token_id is None else [eos_token_id], compile=compile)
    engine.add(rows, reserve=max_new_tokens, chunk=prefill_chunk)
    while len(engine):
        for u in engine.step():
            if u.finish_reason == "error":
                raise ValueError(f"generation failed for row {u.key}: {u.error}")
    n = max(len(r.out_ids) for r in rows)
    fill = eos_token_id if eos_token_id is not None else 0
    new = torch.tensor([r.out_ids + [fill] * (n - len(r.out_ids)) for r in rows], dtype=input_ids.dtype,
                       device=input_ids.device)
    return torch.cat([input_ids, new], dim=1)
