"""One forward over several batches at once, each with its own cache: a decode step and a joining prompt's chunk.

At serving sizes a step is bound by reading the weights, not by arithmetic: a separate forward for a joining
prompt reads every weight again. :func:`forward_groups` runs the projections, norms and MLPs once over the
tokens of all groups flattened together, and only attention per group, over that group's own cache and mask
(vLLM's chunked prefill does the same inside its decode step). The numbers per token are those of separate
forwards up to the matmul's summation order. Learned position embeddings are not handled (their engine serves
one row at a time, so it has nothing to fuse).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Group:
    """``ids`` (B, T) to run after what ``cache`` holds; ``mask`` (B, cached + T), 1 = real token (None: no padding)."""

    ids: torch.Tensor
    cache: object
    mask: torch.Tensor | None = None


@torch.inference_mode()
def forward_groups(model, groups: list[Group]) -> list[torch.Tensor]:
    """Each group's logits at its last position, ``(B, V)`` per group, with its cache advanced by ``T``."""
    tr = model.transformer
    if tr.wpe is not None:
        raise ValueError("forward_groups does not handle learned position embeddings (learned_pos_emb)")
    D = model.config.d_model
    x = tr.scale_embedding(tr.wte(torch.cat([g.ids.reshape(-1) for g in groups])))
    inputs = []
    for g in groups:
        B, T = g.ids.shape
        key_mask = g.mask.bool() if g.mask is not None else None
        inputs.append(tr.attention_inputs(B, T, g.cache.get_seq_length(), key_mask, x.dtype, g.cache, x.device))
    sizes = [g.ids.numel() for g in groups]
    for block in tr.blocks:
        qkv = block.attn.Wqkv(block.norm_1(x))
        mixed = [block.attn.mix(part.view(*g.ids.shape, -1), inp, g.cache).reshape(-1, D)
                 for part, g, inp in zip(qkv.split(sizes), groups, inputs, strict=True)]
        x = x + block.attn.out_proj(torch.cat(mixed))
        x = x + block.ffn(block.norm_2(x))
    last, start = [], 0  # each row's last token in the flattened tokens
    for g in groups:
        B, T = g.ids.shape
        last += [start + (i + 1) * T - 1 for i in range(B)]
        start += B * T
    logits = model.logits(tr.norm_f(x[torch.tensor(last, device=x.device)]))
    return list(logits.split([g.ids.shape[0] for g in groups]))
