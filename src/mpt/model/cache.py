"""A key/value cache with preallocated, geometrically growing buffers.

transformers' ``DynamicCache`` concatenates every step (copying the whole context each time);
this one writes into spare capacity and doubles only when full, so a decode step touches the
context only inside attention. Its ``dtype`` may differ from the model's: a float16 model on CPU attends in
float32 over a float32 cache (:func:`attention_dtype`). It has the same ``update``/``get_seq_length`` surface as
transformers' caches (and the few flags and ``reorder_cache`` their ``generate`` reads), and the model
accepts either; ``MPTForCausalLM.generate`` gives transformers' loop one of these by default. The
compiled decode step (:mod:`mpt.model.decode`) attends over these same buffers at a fixed shape.
"""

from __future__ import annotations

import torch

from .load import cpu_has_bf16


class KVCache:
    # transformers' generate asks a cache passed to it whether its own compile path may use it: no (our
    # compiled decode is mpt.model.decode, which uses this cache's buffers directly).
    is_compileable = False

    def __init__(self, n_layers: int, capacity: int = 0, dtype: torch.dtype | None = None) -> None:
        """``capacity``: tokens to reserve on first use (prompt + new tokens avoids any regrowth). ``dtype``: the
        buffers' (None: the first keys'); the attention then runs in it (``MPTAttention``)."""
        self.capacity = capacity
        self.dtype = dtype
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.lengths = [0] * n_layers

    # What transformers' generate (5.x) reads off a cache it is given: plain attention in every layer,
    # no sliding window, and crop() puts it back exactly.
    is_croppable = True

    @property
    def is_linear(self) -> list[bool]:
        return [False] * len(self.lengths)

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.lengths)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Append ``k, v`` of shape ``(B, H, T, D)``; return the whole cached ``(K, V)`` as views."""
        start = self.lengths[layer_idx]
        end = start + k.shape[2]
        kbuf, vbuf = self.keys[layer_idx], self.values[layer_idx]
        if kbuf is None or end > kbuf.shape[2]:
            new_cap = max(end, self.capacity, 2 * (kbuf.shape[2] if kbuf is not None else 0))
            shape = (k.shape[0], k.shape[1], new_cap, k.shape[3])
            # Zeros, not uninitialised memory: the compiled decode step (decode.py) attends over the whole
            # buffer with the unwritten columns masked, and a masked NaN would still poison softmax @ V.
            new_k = k.new_zeros(shape, dtype=self.dtype)
            new_v = v.new_zeros(shape, dtype=self.dtype)
            if kbuf is not None:
                new_k[:, :, :start] = kbuf[:, :, :start]
                new_v[:, :, :start] = vbuf[:, :, :start]
            self.keys[layer_idx], self.values[layer_idx] = kbuf, vbuf = new_k, new_v
        kbuf[:, :, start:end] = k
        vbuf[:, :, start:end] = v
        self.lengths[layer_idx] = end
        return kbuf[:, :, :end], vbuf[:, :, :end]

    def crop(self, length: int) -> None:
        """Forget everything after the first ``length`` tokens (reuse a shared prefix)."""
        self.lengths = [min(n, length) for n in self.lengths]

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """transformers' beam search: row ``i`` becomes row ``beam_idx[i]`` (rows may repeat)."""
        self.select(beam_idx)

    def select(self, batch_index: torch.Tensor) -> None:
        """Keep only these batch rows (finished sequences leave the batch)."""
        # Advanced indexing rather than index_select: benchmarks/bench_kernels.py times both on CPU (BENCHMARKS.md).
        for i, (kbuf, vbuf) in enumerate(zip(self.keys, self.values, strict=True)):
            if kbuf is not None:
                self.keys[i] = kbuf[batch_index]
                self.values[i] = vbuf[batch_index]


def attention_dtype(dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The dtype a decoding cache (and so the attention) should have for a model of ``dtype`` on ``device``.

    float32 for a float16 model on CPU, and for a bfloat16 one on a CPU without native bfloat16 (neither
    avx512_bf16 nor AMX): PyTorch's SDPA runs those half-precision inputs several times slower than float32.
    Elsewhere ``dtype`` itself: with native bfloat16 (torch 2.13, AVX-512 BF16) bfloat16 SDPA measured faster
    than float32 at every decode and prefill shape tried (8 rows x 8 heads over 155 keys, 8 layers: 670 us
    against 1,080), and a bfloat16 engine step 1.25x faster over a bfloat16 cache (BENCHMARKS.md).
    """
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu and (dtype == torch.float16 or (dtype == torch.bfloat16 and not cpu_has_bf16())):
        return torch.float32
    return dtype
