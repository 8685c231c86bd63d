"""The one tiny MPT the suite builds: `tiny_config(**fields)` and `tiny_model(seed, **fields)`.

A test names only the fields that matter to it (a vocabulary that fits its tokenizer, a longer
context, a backend); the rest comes from `FIELDS`, so a change to `MPTConfig` touches one place.
"""

import torch

from mpt import MPTConfig, MPTForCausalLM

FIELDS = dict(d_model=32, n_heads=2, n_layers=2, max_seq_len=32, vocab_size=64)


def tiny_config(**fields) -> MPTConfig:
    return MPTConfig(**{**FIELDS, **fields})


def tiny_model(seed: int | None = 0, **fields) -> MPTForCausalLM:
    """A randomly initialised tiny MPT in eval mode; ``seed=None`` keeps the caller's RNG state."""
    if seed is not None:
        torch.manual_seed(seed)
    return MPTForCausalLM(tiny_config(**fields)).eval()
