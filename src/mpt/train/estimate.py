"""Memory per GPU of a training recipe, estimated from the config alone (nothing is built or loaded).

What `mpt train RECIPE --dry-run` prints (:func:`memory_lines`) before a long-context run is launched:
the terms of :class:`MemoryEstimate`, computed by :func:`estimate_memory`: fp32 training state, FSDP's
gathered blocks, activations, torch attention's score matrices and the fused loss's chunk of logits.
It leaves out the CUDA context, the allocator's fragmentation and communication buffers, so it is
a floor to compare with the GPU's memory, not a promise: keep 10-20% spare.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..model import MPTConfig
from ..presets import load_model_config, model_info
from .recipe import Recipe, model_overrides

GIB = 1024**3
LOSS_CHUNK_BYTES = 128 * 1024**2


@dataclass
class MemoryEstimate:
    ranks: int                 # ranks the estimate assumes
    shard_ranks: int           # ranks one copy of the training state is split over
    params: int
    state_gib: float           # weights + gradients + optimizer buffers on one rank
    gathered_gib: float        # FSDP's all-gathered blocks
    activations_gib: float
    attention_gib: float       # torch attention's score matrices (0 for flash / flex)
    loss_gib: float

    @property
    def total_gib(self) -> float:
        return self.state_gib + self.gathered_gib + self.activations_gib + self.attention_gib + self.loss_gib


def recipe_model_config(recipe: Recipe) -> MPTConfig:
    """The architecture the recipe trains: ``init_from``'s config.json when that folder exists, else
    the preset, with the recipe's field overrides (as the loop applies them)."""
    m = recipe.model
    if m.init_from and (Path(m.init_from) / "config.json").is_file():
        from ..model.load import read_config_dict

        base = MPTConfig(**read_config_dict(m.init_from))
    elif m.preset:
        base = load_model_config(m.preset)
    else:
        raise ValueError(f"model.init_from={m.init_from!r} has no config.json yet and model.preset is null: "
                         "give model.preset (the architecture of init_from) for a memory estimate")
    fields = base.to_dict()
    fields.update(model_overrides(m.fields, base.attn_config, base.init_config))
    return MPTConfig(**fields)


def estimate_memory(recipe: Recipe, ranks: int | None = None) -> MemoryEstimate:
    """Per-GPU memory of one training step; ``ranks`` default: $WORLD_SIZE, else 8 (one node).

    - training state, fp32: weights, gradients and optimizer buffers (Lion one, AdamW two), sharded over
      the ranks by FSDP / HSDP (divided by the ranks of a shard group), whole on every rank otherwise;
    - FSDP's gathered weights: the block being computed and the next (prefetched), fp32;
    - activations, per micro-batch of ``b`` x ``T`` tokens, hidden size ``h``, ``a`` heads: a block keeps
      about ``34 * T * b * h`` bytes at 16 bits (Korthikanti et al., 2022, "Reducing Activation
      Recomputation in Large Transformer Models", without the attention-score term: flash and flex
      attention never hold it; twice that at fp32). The ``torch`` backend holds the scores and
      probabilities, ``a * T * T * b`` fp32 values each, per block. With activation checkpointing only
      each block's input is kept (``T * b * h`` fp32) plus one block's activations during its recompute;
    - the loss: the fused loss (model/loss.py) holds one chunk of fp32 logits, about 128 MiB, never all.
    """
    ranks = ranks or int(os.environ.get("WORLD_SIZE", 8))
    cfg = recipe_model_config(recipe)
    t = recipe.train
    micro = t.micro_batch_size if t.micro_batch_size != "auto" else 1
    strategy = recipe.parallel.strategy
    if strategy == "auto":
        strategy = "fsdp" if ranks > 1 else "none"
    shard = {"fsdp": ranks, "hsdp": max(1, ranks // recipe.parallel.replicas)}.get(strategy, 1)
    info = model_info(cfg)
    params = info.params
    if recipe.model.lora is not None:
        # frozen base: weights only; the adapters' state is negligible beside them
        state = params * 4 / shard
    else:
        buffers = 1 if recipe.optimizer.name == "lion" else 2
        state = params * 4 * (2 + buffers) / shard
    block = info.non_embedding_params / cfg.n_layers
    gathered = 2 * block * 4 if shard > 1 else 0
    tokens = micro * cfg.max_seq_len
    h, a, layers = cfg.d_model, cfg.n_heads, cfg.n_layers
    per_block = 34 * tokens * h * (1 if t.precision == "bf16" else 2)
    torch_attn = cfg.attn_config["attn_impl"] == "torch"
    scores = 2 * a * cfg.max_seq_len * tokens * 4 if torch_attn else 0   # scores and probabilities, fp32
    if t.activation_checkpointing:
        activations = layers * tokens * h * 4 + per_block
        attention = scores
    else:
        activations = layers * per_block
        attention = layers * scores
    return MemoryEstimate(ranks, shard, params, state / GIB, gathered / GIB, activations / GIB, attention / GIB,
                          min(LOSS_CHUNK_BYTES, tokens * cfg.vocab_size * 4) / GIB)


def _count(n: int) -> str:
    return f"{n / 1e9:,.2f}B" if n >= 1e9 else f"{n / 1e6:,.2f}M"


def memory_lines(recipe: Recipe, ranks: int | None = None) -> list[str]:
    """The estimate as the lines `mpt train --dry-run` prints: per GPU on one node, or, for a run that would
    train on this machine's CPU (``train.device: cpu``, or ``auto`` without CUDA), per process."""
    import torch

    cpu = recipe.train.device == "cpu" or (recipe.train.device == "auto" and not torch.cuda.is_available())
    if cpu:
        ranks = ranks or int(os.environ.get("WORLD_SIZE", 1))
    e = estimate_memory(recipe, ranks)
    cfg = recipe_model_config(recipe)
    t = recipe.train
    micro = t.micro_batch_size if t.micro_batch_size != "auto" else 1
    how = f"sharded over {e.shard_ranks} ranks" if e.shard_ranks > 1 else "whole on each rank"
    where = (f"per CPU process on {e.ranks} process(es) ($WORLD_SIZE, else 1)" if cpu
             else f"per GPU on {e.ranks} GPUs ($WORLD_SIZE, else 8)")
    lines = [
        f"memory estimate {where}: {_count(e.params)} parameters, "
        f"micro-batch {micro} x {cfg.max_seq_len:,} tokens, {t.precision}, attention {cfg.attn_config['attn_impl']}, "
        f"activation checkpointing {'on' if t.activation_checkpointing else 'off'}",
        f"  training state {e.state_gib:,.1f} GiB (fp32 weights, gradients, {recipe.optimizer.name} state; {how})"
        + (f" + gathered blocks {e.gathered_gib:,.1f} GiB" if e.gathered_gib else ""),
        f"  activations {e.activations_gib:,.1f} GiB"
        + (f" + attention scores {e.attention_gib:,.1f} GiB (torch attention; flex or flash hold none)"
           if e.attention_gib else "")
        + f" + loss chunk {e.loss_gib:,.2f} GiB",
        f"  total about {e.total_gib:,.1f} GiB, a floor: add "
        + ("the Python process, torch and allocator slack" if cpu else "the CUDA context and allocator slack (10-20%)"),
    ]
    if cpu and recipe.train.device == "auto":
        lines.append("  (no CUDA here: this run would train on the CPU; add train.device=cuda for the estimate per GPU)")
    return lines
