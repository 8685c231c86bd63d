"""Continuous batching: sequences join and leave a running decode batch between steps.

All rows share one :class:`~mpt.model.KVCache` and one attention mask of shape ``(rows, L)``.
Rows are right-aligned (left-padded): a row that joins is prefilled on its own (several joining
rows are prefilled together), then its cache is merged with the running one, the shorter side
padded on the left with masked zeros. ALiBi biases depend only on the distance between query and
key, so padding changes nothing in a row's numbers. Finished and cancelled rows leave with
``KVCache.select``, and columns that no remaining row attends to are cut off the left, so the
cache is as long as the longest live row, not the age of the batch.

Models with learned position embeddings would see shifted positions in padded rows, so they run
one sequence at a time (``max_rows`` = 1).

Chunked prefill: a :class:`Prefill` runs its prompts forward ``chunk`` tokens at a time into a cache
of its own, so the scheduler can put a decode step of the running rows between two chunks: a long
prompt joining no longer stalls everyone's stream for its whole prefill.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..model import KVCache, MPTForCausalLM
from .logprobs import TopK, token_logprob
from .sampling import SamplingParams, pick_token
from .text import TextStream

log = logging.getLogger("mpt.serve")


@dataclass
class Row:
    """One sequence to continue (a row of the batch once admitted). ``key`` identifies it in updates (e.g. (request id, choice index))."""

    key: Hashable
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None = None
    out_ids: list[int] = field(default_factory=list)
    text: TextStream | None = None
    finish_reason: str | None = None


@dataclass
class Update:
    """What one step produced for one sequence: its new token, the text now final, and whether it ended."""

    key: Hashable
    token_id: int | None
    text: str
    finish_reason: str | None = None  # "stop" (EOS / stop string), "length", "error"
    error: str | None = None
    status: int = 500  # the HTTP status an "error" update becomes (503: the server cut it while stopping)
    logprob: float | None = None  # of token_id, when the row's params ask for logprobs
    top_logprobs: TopK | None = None


class BatchEngine:
    def __init__(self, model: MPTForCausalLM, decode: Callable[[Sequence[int]], str],
                 stop_token_ids: Iterable[int], pad_token_id: int = 0) -> None:
        self.model = model
        self.decode = decode
        self.stop_token_ids = set(stop_token_ids)
        self.pad_token_id = pad_token_id
        self.device = next(model.parameters()).device
        self.max_rows = 1 if model.transformer.wpe is not None else None  # see the module docstring
        self.rows: list[Row] = []
        self.cache: KVCache | None = None
        self.mask: torch.Tensor | None = None  # (rows, L) long, 0 = padding
        self.logits: torch.Tensor | None = None  # (rows, V): scores for each row's next token

    def __len__(self) -> int:
        return len(self.rows)

    def reset(self) -> list[Row]:
        rows, self.rows = self.rows, []
        self.cache = self.mask = self.logits = None
        return rows

    def prefill(self, requests: Sequence[Row], chunk: int | None = None) -> Prefill:
        """Start prefilling these sequences together, ``chunk`` tokens per :meth:`Prefill.advance` (None: all)."""
        for r in requests:
            if not r.prompt_ids:
                raise ValueError(f"request {r.key!r} has an empty prompt")
            r.text = TextStream(self.decode, r.params.stop)
        return Prefill(self, list(requests), chunk)

    def add(self, requests: Sequence[Row]) -> None:
        """Prefill these sequences together and merge them into the running batch."""
        if not requests:
            return
        prefill = self.prefill(requests)
        while not prefill.advance():
            pass
        self.join(prefill)

    def join(self, prefill: Prefill) -> None:
        """Merge a finished prefill's rows into the running batch."""
        cache, mask, logits = prefill.cache, prefill.mask, prefill.logits
        # Nothing of the running batch changes until all of this succeeded: a failed merge fails only the
        # joining rows.
        if self.rows:
            cache, mask = _merge(self.cache, self.mask, cache, mask)
            logits = torch.cat([self.logits, logits.to(self.logits.dtype)])
        self.cache, self.mask, self.logits = cache, mask, logits
        self.rows.extend(prefill.rows)

    def cancel(self, keys: set[Hashable]) -> None:
        keep = [i for i, r in enumerate(self.rows) if r.key not in keys]
        if len(keep) < len(self.rows):
            self._keep(keep)

    @torch.inference_mode()
    def step(self) -> list[Update]:
        """Sample one token for every row, retire finished rows, run the others one position forward."""
        if not self.rows:
            return []
        updates, keep, tokens = [], [], []
        for i, r in enumerate(self.rows):
            try:
                tok = pick_token(self.logits[i], r.params, r.prompt_ids + r.out_ids, r.generator)
                update = self._advance(r, tok)
                if r.params.logprobs is not None:
                    update.logprob, update.top_logprobs = token_logprob(self.logits[i], tok, r.params.logprobs)
                updates.append(update)
            except Exception as err:  # sampling or stop matching failed for this row: it alone ends
                log.exception("request %r failed while sampling", r.key)
                r.finish_reason = "error"
                updates.append(Update(r.key, None, "", "error", f"{type(err).__name__}: {err}"))
            if r.finish_reason is None:
                keep.append(i)
                tokens.append(tok)
        if len(keep) < len(self.rows):
            self._keep(keep)
        if self.rows:
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
            ids = torch.tensor(tokens, device=self.device)[:, None]
            out = self.model(ids, attention_mask=self.mask, cache=self.cache, use_cache=True)
            self.logits = out.logits[:, -1]
        return updates

    def _advance(self, r: Row, tok: int) -> Update:
        r.out_ids.append(tok)
        if tok in self.stop_token_ids:
            text, r.finish_reason = r.text.flush(), "stop"
        else:
            text = r.text.push(tok)
            if r.text.stopped:
                r.finish_reason = "stop"
            elif len(r.out_ids) >= r.params.max_new_tokens:
                text, r.finish_reason = text + r.text.flush(), "length"
        return Update(r.key, tok, text, r.finish_reason)

    def _keep(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.reset()
            return
        index = torch.tensor(keep, device=self.device)
        self.cache.select(index)
        self.mask, self.logits = self.mask[index], self.logits[index]
        # Columns no remaining row attends to: drop them so the cache shrinks with the batch.
        first = int(self.mask.any(dim=0).long().argmax())
        if first:
            for i, (k, v) in enumerate(zip(self.cache.keys, self.cache.values, strict=True)):
                self.cache.keys[i], self.cache.values[i] = k[:, :, first:], v[:, :, first:]
            self.cache.lengths = [n - first for n in self.cache.lengths]
            self.mask = self.mask[:, first:]


class Prefill:
    """Prompts being run forward into a cache of their own, a chunk at a time, before they join the batch."""

    def __init__(self, engine: BatchEngine, rows: list[Row], chunk: int | None) -> None:
        self.engine, self.rows = engine, rows
        n = max(len(r.prompt_ids) for r in rows)
        self.chunk = chunk or n
        ids = torch.full((len(rows), n), engine.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, n - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, n - len(r.prompt_ids):] = 1
        self.ids, self.mask = ids.to(engine.device), mask.to(engine.device)
        self.padded = not bool(mask.all())
        self.cache = KVCache(engine.model.config.n_layers, capacity=n + 16)
        self.done = 0  # prompt positions already in the cache
        self.logits: torch.Tensor | None = None

    @torch.inference_mode()
    def advance(self) -> bool:
        """Run the next chunk forward; True once the whole prompt is in the cache (``logits`` then set)."""
        end = min(self.done + self.chunk, self.ids.shape[1])
        out = self.engine.model(self.ids[:, self.done:end], attention_mask=self.mask[:, :end] if self.padded else None,
                                cache=self.cache, use_cache=True, logits_to_keep=1)
        self.done = end
        if end == self.ids.shape[1]:
            self.logits = out.logits[:, -1]
            return True
        return False


def _merge(a: KVCache, mask_a: torch.Tensor, b: KVCache, mask_b: torch.Tensor) -> tuple[KVCache, torch.Tensor]:
    """Stack two caches' rows, right-aligned; the shorter side is padded on the left with masked zeros.

    Zeros, not uninitialised memory: a masked key gets zero weight, but 0 * NaN would still be NaN.
    """
    la, lb = mask_a.shape[1], mask_b.shape[1]
    n = max(la, lb)
    ra, rb = mask_a.shape[0], mask_b.shape[0]
    merged = KVCache(len(a.keys))
    for i in range(len(a.keys)):
        for src_a, src_b, dst in ((a.keys[i], b.keys[i], merged.keys), (a.values[i], b.values[i], merged.values)):
            h, d = src_a.shape[1], src_a.shape[3]
            buf = src_a.new_zeros(ra + rb, h, n + 16, d)  # some room so the next steps do not regrow
            buf[:ra, :, n - la:n] = src_a[:, :, :la]
            buf[ra:, :, n - lb:n] = src_b[:, :, :lb]
            dst[i] = buf
        merged.lengths[i] = n
    mask = mask_a.new_zeros(ra + rb, n)
    mask[:ra, n - la:] = mask_a
    mask[ra:, n - lb:] = mask_b
    return merged, mask


def run(engine: BatchEngine, requests: Sequence[Row], max_rows: int = 16) -> Iterator[Update]:
    """Generate for all ``requests`` with at most ``max_rows`` decoding at once; waiting ones join as rows finish."""
    waiting = list(requests)
    limit = min(max_rows, engine.max_rows or max_rows)
    while waiting or len(engine):
        free = limit - len(engine)
        if free > 0 and waiting:
            engine.add(waiting[:free])
            waiting = waiting[free:]
        yield from engine.step()
