"""The one-token decode step over a static KV cache, compiled with ``torch.compile`` when asked.

:class:`StaticDecoder` runs :func:`decode_step` (compiled by :func:`compiled_step`) over a
:class:`~mpt.model.cache.KVCache`'s preallocated buffers, ``(rows, H, C, D)`` per layer: the new key/value
is written in place at column ``pos`` (a tensor), and rows and capacity ``C`` change only at buckets
(:func:`row_bucket`, :func:`bucket`). On CUDA the step attends over the whole buffer, unwritten columns
masked (fixed shapes, which CUDA graphs replay); on CPU the capacity and the attended columns are dynamic
dimensions (one graph per row bucket, no unwritten column read). Greedy tokens are tested identical to
the eager step (also past ``max_seq_len``).
"""

from __future__ import annotations

import inspect
import logging

import torch

from .attention import AttentionInputs
from .cache import KVCache

log = logging.getLogger("mpt.model")


def bucket(n: int) -> int:
    """Round ``n`` up to a capacity with at most 12.5 % slack: 64, then multiples of 2**(bits(n) - 4)."""
    if n <= 64:
        return 64
    step = 1 << max(n.bit_length() - 4, 0)
    return -(-n // step) * step


def row_bucket(rows: int) -> int:
    """Rows a decode step runs with: the next power of two (padding rows are computed and dropped), so a
    serving batch of 1-16 rows meets five shapes, not sixteen."""
    return 1 << max(rows - 1, 0).bit_length()


class _StaticView:
    """The ``update`` surface ``MPTAttention`` calls, writing column ``pos`` of fixed-shape buffers in place and
    returning their first ``columns`` columns (the ones attended to)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], pos: torch.Tensor, columns) -> None:
        self.keys, self.values, self.pos, self.columns = keys, values, pos, columns

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *args, **kwargs):
        self.keys[layer_idx].index_copy_(2, self.pos, k)
        self.values[layer_idx].index_copy_(2, self.pos, v)
        return self.keys[layer_idx][:, :, :self.columns], self.values[layer_idx][:, :, :self.columns]


def decode_step(model, ids: torch.Tensor, pos: torch.Tensor, key_mask: torch.Tensor,
                keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
    """Logits ``(rows, V)`` for ``ids`` ``(rows, 1)`` written at cache column ``pos`` (a 1-element long tensor).

    ``key_mask`` ``(rows, N)`` bool: True for every real token up to and including column ``pos``; the step
    attends to the buffers' first ``N`` columns: the whole capacity (CUDA: fixed shapes for its graphs) or the
    written ones (CPU: ``N`` is dynamic, so attention reads no unwritten column).

    The ALiBi bias of every real column is the eager one, ``slope * (j - pos)``, and padding and unwritten
    columns get the same large negative value, so a masked key weighs exactly zero. The step reuses the
    model's own blocks (``MPTBlock.forward``): only the embedding and the mask are built here.
    """
    tr = model.transformer
    x = tr.wte(ids)
    if tr.wpe is not None:  # a row's position counts its real tokens (left padding starts at 0, as eager)
        x = x + tr.wpe(key_mask.long().sum(1, keepdim=True) - 1)
    x = tr.emb_drop(tr.scale_embedding(x))
    C = key_mask.shape[1]
    dtype = keys[0].dtype  # the attention's (a cache may keep another dtype than the model's: KVCache)
    neg = torch.finfo(dtype).min
    slopes = tr.alibi_slopes(x.device)
    if slopes is None:
        mask = torch.zeros(1, 1, 1, C, dtype=dtype, device=x.device)
    else:
        rel = torch.arange(C, device=x.device) - pos  # j - i, as the eager mask computes it
        mask = (slopes[:, None, None] * rel).to(dtype)[None]
    mask = mask.masked_fill(~key_mask[:, None, None, :], neg)
    inp = AttentionInputs(1, C, slopes, key_mask, "torch", sdpa_mask=mask)
    cache = _StaticView(keys, values, pos, C)
    for block in tr.blocks:
        x = block(x, inp, cache)
    return model.logits(tr.norm_f(x))[:, -1]


_COMPILED: dict[str, object] = {}


def compiled_step(device_type: str):
    """``decode_step`` under ``torch.compile`` (one compiled function per device type, shared by all engines).

    On CUDA ``dynamic=False`` (one graph per shape) and ``mode="reduce-overhead"`` capture the step in a CUDA
    graph, so a batch-1 decode is no longer bound by launching a few hundred kernels. On CPU the capacity is
    marked dynamic (:meth:`StaticDecoder.__call__`): one graph serves every capacity, so a generation does not
    stop for seconds to compile each time its cache grows (BENCHMARKS.md, compiled decode over packed weights).
    """
    if device_type not in _COMPILED:
        cuda = device_type == "cuda"
        mode = "reduce-overhead" if cuda else None
        # A server meets a shape per (row bucket, capacity bucket): more than dynamo's default limit of 8
        # recompiles, past which fullgraph=True raises (and the engine would decode eagerly from then on).
        # (recent torch.compile takes recompile_limit; older versions keep the global limit of 8.)
        extra = {"recompile_limit": 64} if "recompile_limit" in inspect.signature(torch.compile).parameters else {}
        _COMPILED[device_type] = torch.compile(decode_step, dynamic=False if cuda else None, fullgraph=True,
                                               mode=mode, **extra)
    return _COMPILED[device_type]


class StaticDecoder:
    """Runs decode steps of a :class:`KVCache` over its whole (bucketed) buffer; ``compile``: through torch.compile."""

    def __init__(self, model, compile: bool = True) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.step_fn = compiled_step(self.device.type) if compile else decode_step

    def prepare(self, cache: KVCache, length: int, rows: int) -> int:
        """Make ``cache``'s buffers contiguous, ``row_bucket(rows)`` rows (the rest zeros) and a bucketed capacity
        above ``length + 1``; return that capacity."""
        n, cap = cache.keys[0].shape[0], cache.keys[0].shape[2]
        # The column written, plus one: the attended columns (length + 1) stay fewer than the capacity, else a CPU
        # graph, compiled for fewer, would compile again for equal. Inference tensors only: a buffer made outside
        # inference mode fails the graphs' guards (a recompile).
        need = length + 2
        if (n == row_bucket(rows) and cap >= need and cap == bucket(cap)
                and all(k.is_contiguous() and k.is_inference() for k in (*cache.keys, *cache.values))):
            return cap
        # Growing: by half again, so a long decode recompiles a handful of times, not every bucket.
        new_cap = bucket(max(need, cap if cap >= need else (3 * need) // 2))
        for bufs in (cache.keys, cache.values):
            for i, buf in enumerate(bufs):
                new = buf.new_zeros(row_bucket(rows), buf.shape[1], new_cap, buf.shape[3])
                new[:rows, :, :length] = buf[:rows, :, :length]
                if self.device.type == "cuda":  # CUDA graphs cannot replay a step whose mutated inputs move
                    torch._dynamo.mark_static_address(new)
                bufs[i] = new
        return new_cap

    @staticmethod
    def unpad(cache: KVCache, rows: int) -> None:
        """Drop the padding rows :meth:`prepare` added (views, no copy), for an eager forward over the ``rows``
        live ones; the next compiled step pads them again."""
        if cache.keys[0].shape[0] > rows:
            cache.keys[:] = [k[:rows] for k in cache.keys]
            cache.values[:] = [v[:rows] for v in cache.values]

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, cache: KVCache, mask: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(rows, V)`` for ``ids`` ``(rows, 1)`` appended to ``cache``; ``mask`` ``(rows, L + 1)``, None: no padding."""
        length, rows = cache.get_seq_length(), ids.shape[0]
        cap = self.prepare(cache, length, rows)
        n = row_bucket(rows)
        # CUDA graphs need fixed shapes: attend over the whole capacity. On CPU the attended columns are a dynamic
        # dimension like the capacity, so no graph attends to unwritten ones (up to a third of a grown buffer).
        columns = cap if self.device.type == "cuda" else length + 1
        key_mask = torch.zeros(n, columns, dtype=torch.bool, device=self.device)
        if mask is None:
            key_mask[:rows, :length + 1] = True
        else:
            key_mask[:rows, :length + 1] = mask.bool()
        # Padding rows attend to their own (zero) token: no all-masked softmax. Every operation is row-wise,
        # so they never touch the real rows, and their logits are dropped.
        key_mask[rows:, length] = True
        if n > rows:
            ids = torch.cat([ids, ids.new_zeros(n - rows, 1)])
        pos = torch.tensor([length], device=self.device)
        if self.device.type == "cpu" and self.step_fn is not decode_step:
            for t in (key_mask, *cache.keys, *cache.values):
                dim = t.dim() - 1 if t is key_mask else 2  # the attended columns; the capacity
                # (a buffer kept from the last step is marked already: marking 17 tensors a step cost ~2 %)
                if dim not in getattr(t, "_dynamo_dynamic_indices", ()):
                    torch._dynamo.mark_dynamic(t, dim)
        try:
            logits = self.step_fn(self.model, ids, pos, key_mask, cache.keys, cache.values)
        except Exception:
            if self.step_fn is decode_step:
                raise
            # A model torch.compile cannot take (e.g. a custom quantised layer): decode eagerly instead.
            # Rerunning is safe: the step only wrote column ``pos``, which it writes again.
            log.warning("compiled decode failed; this engine decodes eagerly from now on", exc_info=True)
            self.step_fn = decode_step
            logits = decode_step(self.model, ids, pos, key_mask, cache.keys, cache.values)
        cache.lengths = [length + 1] * len(cache.lengths)
        # CUDA graphs reuse their output memory on the next replay; the engine keeps these logits a step.
        logits = logits[:rows]
        return logits.clone() if self.device.type == "cuda" else logits
