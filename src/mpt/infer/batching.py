"""Continuous batching: sequences join and leave a running decode batch between steps.

:class:`BatchEngine` holds the rows (one :class:`~mpt.model.KVCache` and one ``(rows, L)`` attention mask,
rows right-aligned); :class:`Prefill` runs joining prompts forward ``chunk`` tokens at a time into a cache
of their own, :meth:`BatchEngine.join` merges them in, :meth:`BatchEngine.step` decodes one token for
every row, and :func:`run` drives a list of requests through. Every generation path decodes here (the
server, ``mpt.load(...).generate``, :func:`~mpt.infer.generate.generate_ids`) under one stop rule
(:meth:`BatchEngine._advance`). With ``compile`` (the default on CUDA) each decode step runs through
:class:`~mpt.model.decode.StaticDecoder`, a static cache for ``torch.compile``; prefill, and on CPU a
step with a joining chunk, stays eager.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..model import KVCache, MPTForCausalLM
from ..model.cache import attention_dtype
from ..model.decode import StaticDecoder, bucket
from ..model.ragged import Group, forward_groups
from .logprobs import TopK, token_logprob
from .sampling import SamplingParams, greedy_tokens, pick_token
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
    def __init__(self, model: MPTForCausalLM, decode: Callable[[Sequence[int]], str] | None,
                 stop_token_ids: Iterable[int], pad_token_id: int = 0, compile: bool | None = None) -> None:
        """``decode``: token ids to text, for streamed text and stop strings; None: ids only (``Update.text`` "").

        ``compile``: decode steps over a static cache through ``torch.compile`` (:mod:`mpt.model.decode`).
        None (the default) means on CUDA, where CUDA graphs remove the per-kernel launch cost that bounds
        batch-1 decode and the compile (tens of seconds) is paid once per process; off on CPU, where the
        compile takes longer than most short generations it would speed up (``compile=True`` for long ones).
        """
        self.model = model
        self.decode = decode
        self.stop_token_ids = set(stop_token_ids)
        self.pad_token_id = pad_token_id
        param = next(model.parameters())
        self.device = param.device
        self.cache_dtype = attention_dtype(param.dtype, self.device)  # float32 where CPU attention in half is slow
        learned_positions = model.transformer.wpe is not None
        # Models with learned position embeddings are served one sequence at a time (here, in run and in the
        # scheduler); generate_ids batches their rows, all joining at once (tested equal to one at a time).
        self.max_rows = 1 if learned_positions else None
        self.window = model.config.max_seq_len if learned_positions else None  # positions a row may fill
        self.rows: list[Row] = []
        self.cache: KVCache | None = None
        self.mask: torch.Tensor | None = None  # (rows, L) long, 0 = padding
        self.padded = False  # whether the mask has a 0; if not, the model runs without it (no per-step check)
        self.logits: torch.Tensor | None = None  # (rows, V): scores for each row's next token
        if compile is None:
            compile = self.device.type == "cuda"
        self.decoder = StaticDecoder(model, compile=True) if compile else None
        self.fuse_joins = True  # False: a joining chunk runs in a forward of its own (benchmarks/bench_joins.py)

    def __len__(self) -> int:
        return len(self.rows)

    def reset(self) -> list[Row]:
        rows, self.rows = self.rows, []
        self.cache = self.mask = self.logits = None
        self.padded = False
        return rows

    def prefill(self, requests: Sequence[Row], chunk: int | None = None, reserve: int = 16) -> Prefill:
        """Start prefilling these sequences together, ``chunk`` tokens per :meth:`Prefill.advance` (None: all).

        ``reserve``: cache positions to allocate beyond the prompts, for the tokens to come.
        """
        for r in requests:
            if not r.prompt_ids:
                raise ValueError(f"request {r.key!r} has an empty prompt")
            if self.decode is None and r.params.stop:
                raise ValueError(f"request {r.key!r} has stop strings, but this engine has no decode function")
            r.text = TextStream(self.decode, r.params.stop) if self.decode is not None else None
        return Prefill(self, list(requests), chunk, reserve)

    def add(self, requests: Sequence[Row], reserve: int = 16, chunk: int | None = None) -> None:
        """Prefill these sequences together (``chunk`` tokens per forward; None: all) and merge them into the batch."""
        if not requests:
            return
        prefill = self.prefill(requests, chunk, reserve=reserve)
        while not prefill.advance():
            pass
        self.join(prefill)

    @torch.inference_mode()  # the merged buffers as inference tensors, as a compiled step's graphs were built on
    def join(self, prefill: Prefill) -> None:
        """Merge a finished prefill's rows into the running batch."""
        cache, mask, logits = prefill.cache, prefill.mask, prefill.logits
        # Nothing of the running batch changes until all of this succeeded: a failed merge fails only the
        # joining rows.
        padded = prefill.padded
        if self.rows:
            cache, mask = _merge(self.cache, self.mask, cache, mask)
            logits = torch.cat([self.logits, logits.to(self.logits.dtype)])
            padded = not bool(mask.all())
        self.cache, self.mask, self.logits, self.padded = cache, mask, logits, padded
        self.rows.extend(prefill.rows)

    @torch.inference_mode()
    def cancel(self, keys: set[Hashable]) -> None:
        keep = [i for i, r in enumerate(self.rows) if r.key not in keys]
        if len(keep) < len(self.rows):
            self._keep(keep)

    @property
    def fuses(self) -> bool:
        """Whether :meth:`step` runs a joining prompt's chunk in the decode step's forward (ALiBi or no positions:
        learned positions serve one row at a time). That forward is eager: on CPU a compiling engine runs its
        steps with a joining chunk so (one read of the weights for both beats a compiled step plus a forward of
        the chunk's own); on CUDA the compiled step's graphs keep their buffers in place, so the chunk runs apart."""
        return (self.fuse_joins and self.model.transformer.wpe is None
                and (self.decoder is None or self.device.type == "cpu"))

    @torch.inference_mode()
    def step(self, joining: Prefill | None = None, positions: int | None = None) -> list[Update]:
        """Sample one token for every row, retire finished rows, run the others one position forward.

        ``joining``: its next ``positions`` prompt positions (None: a whole chunk) run in the same forward when the
        engine :attr:`fuses` (:mod:`mpt.model.ragged`: the weights are read once for both), else right after.
        If that fails, the error goes to ``joining.error`` and those rows alone: the running rows go on.
        """
        if not self.rows:
            if joining is not None:
                joining.advance_alone(positions)
            return []
        updates, keep, tokens = [], [], []
        for i, (r, tok) in enumerate(zip(self.rows, self._pick(), strict=True)):
            try:
                if isinstance(tok, Exception):
                    raise tok
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
            if joining is not None and self.fuses and self._fused(ids, joining, positions):
                return updates
            if self.decoder is not None:
                self.logits = self.decoder(ids, self.cache, self.mask if self.padded else None)
            else:
                out = self.model(ids, attention_mask=self.mask if self.padded else None, cache=self.cache,
                                 use_cache=True)
                self.logits = out.logits[:, -1]
        if joining is not None:
            joining.advance_alone(positions)
        return updates

    def _fused(self, ids: torch.Tensor, joining: Prefill, positions: int | None) -> bool:
        """The decode forward and ``joining``'s next chunk as one; False (both caches put back) if it failed,
        so the caller runs them apart and a failure is pinned on whichever of them it belongs to."""
        start, end = joining.span(positions)
        before = self.cache.get_seq_length()
        if self.decoder is not None:
            self.decoder.unpad(self.cache, len(self.rows))
        groups = [Group(ids, self.cache, self.mask if self.padded else None),
                  Group(joining.ids[:, start:end], joining.cache, joining.mask[:, :end] if joining.padded else None)]
        try:
            self.logits, logits = forward_groups(self.model, groups)
        except Exception:
            log.warning("a decode step fused with a joining prompt's chunk failed; running them apart",
                        exc_info=True)
            self.cache.crop(before)
            joining.cache.crop(start)
            return False
        joining.finish(end, logits)
        return True

    def _pick(self) -> list[int | Exception]:
        """Every row's next token, or the exception picking it raised (that row alone fails)."""
        picks: list[int | Exception | None] = [None] * len(self.rows)
        greedy = [i for i, r in enumerate(self.rows) if r.params.greedy]
        if greedy:  # together: row by row, each pick would wait for the device on its own
            logits = self.logits if len(greedy) == len(self.rows) else self.logits[greedy]
            biased = [(j, self.rows[i]) for j, i in enumerate(greedy) if self.rows[i].params.logit_bias]
            if biased:  # added in float32, as pick_token adds them (a copy: the scores stay as they are)
                logits = logits.to(torch.float32, copy=True)
                for j, r in biased:
                    logits[j].index_add_(0, *r.params.bias_tensors(logits.device))
            for i, tok in zip(greedy, greedy_tokens(logits), strict=True):
                picks[i] = tok
        for i, r in enumerate(self.rows):
            if picks[i] is None:  # sampled rows, and greedy rows whose scores need pick_token's care
                seen = r.prompt_ids + r.out_ids if r.params.repetition_penalty != 1.0 else []
                try:
                    picks[i] = pick_token(self.logits[i], r.params, seen, r.generator)
                except Exception as err:
                    picks[i] = err
        return picks

    def _advance(self, r: Row, tok: int) -> Update:
        """Append ``tok`` to ``r`` and decide whether ``r`` is finished: the one stop rule of every generation path.

        A row ends with "stop" on a stop token (EOS, ChatML's end of turn) or a stop string, and with "length"
        after ``max_new_tokens`` or when a learned-position model's window is full (its next token would have
        no position; ALiBi rows go on past ``max_seq_len``).
        """
        r.out_ids.append(tok)
        stream = r.text
        if tok in self.stop_token_ids:
            r.finish_reason = "stop"
            return Update(r.key, tok, stream.flush() if stream else "", r.finish_reason)
        text = stream.push(tok) if stream else ""
        if stream is not None and stream.stopped:
            r.finish_reason = "stop"
        elif len(r.out_ids) >= r.params.max_new_tokens or (
                self.window is not None and len(r.prompt_ids) + len(r.out_ids) > self.window):
            # (the window: feeding this token would put it at position max_seq_len, which has no embedding)
            r.finish_reason = "length"
            text += stream.flush() if stream else ""
        return Update(r.key, tok, text, r.finish_reason)

    def _keep(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.reset()
            return
        index = torch.tensor(keep, device=self.device)
        self.cache.select(index)
        self.mask, self.logits = self.mask[index], self.logits[index]
        # Columns no remaining row attends to: drop them so the cache shrinks with the batch (as long as the
        # longest live row, not the age of the batch).
        first = int(self.mask.any(dim=0).long().argmax())
        if first:
            for i, (k, v) in enumerate(zip(self.cache.keys, self.cache.values, strict=True)):
                self.cache.keys[i], self.cache.values[i] = k[:, :, first:], v[:, :, first:]
            self.cache.lengths = [n - first for n in self.cache.lengths]
            self.mask = self.mask[:, first:]
        self.padded = not bool(self.mask.all())


class Prefill:
    """Prompts being run forward into a cache of their own, a chunk at a time, before they join the batch.

    Chunks let the scheduler put a decode step of the running rows between two of them, so a long prompt
    joining does not stall everyone's stream for its whole prefill. The same bound on tokens per forward
    lets a prompt longer than one forward's activations (The Great Gatsby, 76k tokens, into an MPT-7B
    shape) be read at all: :func:`~mpt.infer.generate.generate_ids` takes it as ``prefill_chunk``.
    """

    def __init__(self, engine: BatchEngine, rows: list[Row], chunk: int | None, reserve: int = 16) -> None:
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
        # A compiling engine decodes over bucketed capacities: allocate one now, so joining a long prompt
        # (76k tokens: tens of GB of cache on a 7B model) does not copy its cache into a new buffer.
        capacity = bucket(n + reserve) if engine.decoder is not None else n + reserve
        self.cache = KVCache(engine.model.config.n_layers, capacity=capacity, dtype=engine.cache_dtype)
        self.done = 0  # prompt positions already in the cache
        self.ran = 0  # positions the last chunk ran
        self.logits: torch.Tensor | None = None
        self.error: Exception | None = None  # set by BatchEngine.step when a chunk run beside the batch failed

    @property
    def finished(self) -> bool:
        return self.done == self.ids.shape[1]

    def span(self, tokens: int | None = None) -> tuple[int, int]:
        """The prompt positions the next ``tokens`` (at most ``chunk``; None: ``chunk``) cover."""
        return self.done, min(self.done + min(tokens or self.chunk, self.chunk), self.ids.shape[1])

    def finish(self, end: int, logits: torch.Tensor) -> None:
        """Positions up to ``end`` are in the cache; ``logits`` are the last one's."""
        self.done, self.ran = end, end - self.done
        if self.finished:
            self.logits = logits

    @torch.inference_mode()
    def advance(self, tokens: int | None = None) -> bool:
        """Run the next ``tokens`` positions (at most ``chunk``; None: ``chunk``) forward.

        True once the whole prompt is in the cache (``logits`` then set).
        """
        start, end = self.span(tokens)
        out = self.engine.model(self.ids[:, start:end], attention_mask=self.mask[:, :end] if self.padded else None,
                                cache=self.cache, use_cache=True, logits_to_keep=1)
        self.finish(end, out.logits[:, -1])
        return self.finished

    def advance_alone(self, tokens: int | None) -> None:
        """:meth:`advance`, its error kept in ``error`` (for :meth:`BatchEngine.step`, whose rows it must not fail)."""
        try:
            self.advance(tokens)
        except Exception as err:
            self.error = err


def _merge(a: KVCache, mask_a: torch.Tensor, b: KVCache, mask_b: torch.Tensor) -> tuple[KVCache, torch.Tensor]:
    """Stack two caches' rows, right-aligned; the shorter side is padded on the left with masked zeros.

    ALiBi biases depend only on the distance between query and key, so the padding changes nothing in a
    row's numbers.

    Zeros, not uninitialised memory: a masked key gets zero weight, but 0 * NaN would still be NaN.
    """
    la, lb = mask_a.shape[1], mask_b.shape[1]
    n = max(la, lb)
    ra, rb = mask_a.shape[0], mask_b.shape[0]
    merged = KVCache(len(a.keys), dtype=a.dtype)
    for i in range(len(a.keys)):
        for src_a, src_b, dst in ((a.keys[i], b.keys[i], merged.keys), (a.values[i], b.values[i], merged.values)):
            h, d = src_a.shape[1], src_a.shape[3]
            buf = src_a.new_zeros(ra + rb, h, n + 16, d)  # some room so the next steps do not regrow
            # (a compiled decoder's buffers may hold padding rows past the live ones: take the live rows only)
            buf[:ra, :, n - la:n] = src_a[:ra, :, :la]
            buf[ra:, :, n - lb:n] = src_b[:rb, :, :lb]
            dst[i] = buf
        merged.lengths[i] = n
    mask = mask_a.new_zeros(ra + rb, n)
    mask[:ra, n - la:] = mask_a
    mask[ra:, n - lb:] = mask_b
    return merged, mask


def run(engine: BatchEngine, requests: Sequence[Row], max_rows: int = 16,
        prefill_chunk: int | None = None) -> Iterator[Update]:
    """Generate for all ``requests`` with at most ``max_rows`` decoding at once; waiting ones join as rows finish.

    ``prefill_chunk``: prompt tokens per prefill forward (None: whole prompts), for prompts too long for one.
    """
    waiting = list(requests)
    limit = min(max_rows, engine.max_rows or max_rows)
    while waiting or len(engine):
        free = limit - len(engine)
        if free > 0 and waiting:
            engine.add(waiting[:free], chunk=prefill_chunk)
            waiting = waiting[free:]
        yield from engine.step()
