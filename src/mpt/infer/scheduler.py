"""The server's decode loop: one background thread drives the BatchEngine; requests join between steps.

Request handlers (on the asyncio event loop) call :meth:`Scheduler.submit` with engine requests and a callback
(:meth:`Scheduler.score` for ``echo`` with ``logprobs``). The thread admits waiting requests whenever the batch
has room (their prompts run a chunk per decode step, inside its forward, then they merge into the batch), runs
one decode step for every row, and hands each update to its callback. A handler whose client went away calls
:meth:`Scheduler.cancel`; the row leaves the batch before the next step. The model is only ever touched from
this thread, so a compiled decode step (:class:`~mpt.infer.batching.BatchEngine`'s ``compile``, the default on
CUDA) is compiled and CUDA-graph-captured on this thread too.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future

from .batching import BatchEngine, Prefill, Row, Update
from .logprobs import PromptScorer

log = logging.getLogger("mpt.serve")


class Scheduler:
    MIN_CHUNK = 16  # prompt tokens per paced chunk at least, so a slow model still makes progress
    # A chunk run inside a decode step is sized for a third of prefill_stall, and at most 1.5x the last chunk: its
    # cost grows faster than its length (attention over the prompt so far) and is measured as a difference of two
    # noisy times. benchmarks/bench_serve_join.py, streams' p95 gap over a plain step's: 1.81-1.86x so, against
    # 1.83-2.57x at half and 2.47-3.07x at the whole stall (BENCHMARKS.md).
    FUSED_SHARE = 0.35
    FUSED_GROWTH = 1.5

    def __init__(self, engine: BatchEngine, max_batch_size: int = 16, prefill_chunk: int | None = None,
                 prefill_stall: float = 1.0) -> None:
        self.engine = engine
        self.prefill_chunk = prefill_chunk
        self.prefill_stall = prefill_stall  # 0: chunks of prefill_chunk tokens whatever the timing
        self._step_s: float | None = None  # a decode step's seconds (moving average)
        self._prefill_rate: float | None = None  # prefilled prompt positions x rows per second (last chunk)
        self._score_rate: float | None = None  # scored prompt positions per second (last chunk)
        self._scoring: list[tuple[PromptScorer, Future]] = []  # oldest first; one chunk of the first per turn
        self._score_turn = False  # whether this loop turn's side work is scoring (else a prefill chunk)
        self._prefill: Prefill | None = None  # rows joining, their prompts partly run
        self._cancel_on_join: set[Hashable] = set()  # cancelled while prefilling: they leave as soon as they join
        self.max_rows = min(max_batch_size, engine.max_rows or max_batch_size)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: list[Row] = []
        self._callbacks: dict[Hashable, Callable[[Update], None]] = {}
        self._cancelled: set[Hashable] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mpt-decode", daemon=True)
        self.steps = 0
        self.on_step: Callable[[int], None] | None = None  # called with the batch size after each step (metrics)

    @property
    def running(self) -> int:
        return len(self.engine)

    @property
    def waiting(self) -> int:
        joining = len(self._prefill.rows) if self._prefill is not None else 0
        return len(self._waiting) + self._inbox.qsize() + joining + len(self._scoring)

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(None)  # wake the thread if it is idle
        self._thread.join(timeout=10)

    def submit(self, requests: Sequence[Row], on_update: Callable[[Update], None]) -> None:
        self._inbox.put((list(requests), on_update))

    def score(self, scorer: PromptScorer) -> Future:
        """Score ``scorer``'s prompts on the decode thread, a paced chunk per loop turn; the future gets its
        ``results``. Cancelling the future drops the work at the next turn."""
        future: Future = Future()
        self._inbox.put((scorer, future))
        return future

    def cancel(self, keys: Sequence[Hashable]) -> None:
        with self._lock:
            self._cancelled.update(keys)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._take_inbox(block=not self._waiting and not len(self.engine) and self._prefill is None
                             and not self._scoring)
            with self._lock:
                cancelled, self._cancelled = self._cancelled, set()
            if cancelled:
                self._waiting = [r for r in self._waiting if r.key not in cancelled]
                self.engine.cancel(cancelled)
                if self._prefill is not None:
                    self._cancel_on_join |= cancelled & {r.key for r in self._prefill.rows}
                for key in cancelled:
                    self._callbacks.pop(key, None)
            self._scoring = [(s, f) for s, f in self._scoring if not f.cancelled()]  # their clients left
            # Scoring is paced like prefill, with its own measured rate (every position's logits cost more
            # than a prefill's last one): a chunk per loop turn, taking turns with a joining prompt's chunks,
            # so neither a long scoring request nor a burst of joining prompts holds up the other or the
            # running streams.
            fused: tuple[Prefill, int | None] | None = None  # a joining chunk to run inside this decode step
            if self._scoring and (self._score_turn or not self._admissible()):
                updates = []
                self._score_chunk()
            else:
                updates, fused = self._admit()
            self._score_turn = not self._score_turn
            size = len(self.engine)
            try:
                start = time.perf_counter()
                updates += self.engine.step(*(fused or ()))
                took = time.perf_counter() - start
                if size:
                    self.steps += 1  # decode steps actually run, not idle turns of the loop
                if fused is not None:
                    self._time_fused(fused[0], fused[1], took)
                elif size:
                    self._step_s = took if self._step_s is None else 0.8 * self._step_s + 0.2 * took
            except Exception as err:  # the batch's forward pass failed (e.g. out of memory): all its rows fail
                log.error("decode step failed:\n%s", traceback.format_exc())
                updates += [Update(r.key, None, "", "error", f"{type(err).__name__}: {err}")
                            for r in self.engine.reset()]
            if fused is not None:
                updates += self._chunk_ran(fused[0])
            if size and self.on_step is not None:
                self.on_step(size)
            for u in updates:
                self._deliver(u)

    def _admit(self) -> tuple[list[Update], tuple[Prefill, int | None] | None]:
        """Prefill waiting rows into free batch slots, one chunk per call; a failed prefill fails those rows only.

        While rows decode on an engine that :attr:`~BatchEngine.fuses`, the chunk is not run here: it is returned
        (with its size) for the decode step to run inside its forward.
        """
        joining = self._prefill.rows if self._prefill is not None else []
        try:
            if self._prefill is None:
                free = self.max_rows - len(self.engine)
                if free <= 0 or not self._waiting:
                    return [], None
                joining, self._waiting = self._waiting[:free], self._waiting[free:]
                self._prefill = self.engine.prefill(joining, self.prefill_chunk)
            tokens, before = self._chunk_tokens(len(self._prefill.rows)), self._prefill.done
            if self.engine.fuses and len(self.engine):
                if tokens is not None and self._prefill_rate is not None:
                    grown = int(self.FUSED_GROWTH * self._prefill.ran) if self._prefill.ran else tokens
                    tokens = max(self.MIN_CHUNK, min(int(tokens * self.FUSED_SHARE), grown))
                return [], (self._prefill, tokens)
            start = time.perf_counter()
            self._prefill.advance(tokens)
            if tokens is not None and self._prefill.done - before == tokens:  # a whole paced chunk: time it
                self._prefill_rate = tokens * len(self._prefill.rows) / max(time.perf_counter() - start, 1e-9)
        except Exception as err:
            if self._prefill is None:  # it could not even start (engine.prefill refused these rows)
                log.error("prefill failed:\n%s", traceback.format_exc())
                return [Update(r.key, None, "", "error", f"{type(err).__name__}: {err}") for r in joining], None
            self._prefill.error = err
        return self._chunk_ran(self._prefill), None

    def _chunk_ran(self, prefill: Prefill) -> list[Update]:
        """After a chunk of ``prefill``: its rows join the batch once it is whole; if it failed, they alone fail."""
        if prefill.error is not None:
            err = prefill.error
            log.error("prefill failed:\n%s", "".join(traceback.format_exception(err)))
            self._prefill, self._cancel_on_join = None, set()
            return [Update(r.key, None, "", "error", f"{type(err).__name__}: {err}") for r in prefill.rows]
        if prefill.finished:
            self._prefill = None
            try:
                self.engine.join(prefill)
            except Exception as err:
                prefill.error = err
                return self._chunk_ran(prefill)
            cancelled, self._cancel_on_join = self._cancel_on_join, set()
            self.engine.cancel(cancelled)
        return []

    def _time_fused(self, prefill: Prefill, tokens: int | None, took: float) -> None:
        """The prefill rate of a chunk run inside a decode step: its positions over what it added to the step.

        A difference of two noisy times (the next chunk's growth is bounded in :meth:`_admit`).
        """
        if tokens is None or self._step_s is None or prefill.error is not None or prefill.ran != tokens:
            return  # only a whole paced chunk is timed
        self._prefill_rate = tokens * len(prefill.rows) / max(took - self._step_s, 0.01 * self._step_s)

    def _admissible(self) -> bool:
        """Whether :meth:`_admit` has work: a prefill under way, or rows waiting for a free slot."""
        return self._prefill is not None or (bool(self._waiting) and len(self.engine) < self.max_rows)

    def _score_chunk(self) -> None:
        """One paced chunk of the oldest scoring request; its future gets the results (or the error) at the end."""
        scorer, future = self._scoring[0]
        tokens = self._chunk_tokens(1, self._score_rate or 0.0)
        try:
            start = time.perf_counter()
            done = scorer.advance(tokens)
            if tokens is not None and scorer.ran == tokens:
                self._score_rate = tokens / max(time.perf_counter() - start, 1e-9)
        except Exception as err:  # this request's scoring failed (e.g. out of memory): it alone gets the error
            log.error("scoring failed:\n%s", traceback.format_exc())
            self._scoring.pop(0)
            if future.set_running_or_notify_cancel():
                future.set_exception(err)
            return
        if done:
            self._scoring.pop(0)
            if future.set_running_or_notify_cancel():
                future.set_result(scorer.results)

    def _chunk_tokens(self, rows: int, rate: float | None = None) -> int | None:
        """Prompt positions to run this turn: about ``prefill_stall`` decode steps' worth at ``rate`` (positions x
        rows per second; default: the prefill rate; 0: not measured yet) while rows decode (a small first chunk
        measures the rate); None (``prefill_chunk``) when none do.

        Each loop turn runs one chunk and one decode step, so the running rows keep streaming. Sized from
        measured times, a chunk takes about ``prefill_stall`` decode steps: the running rows' inter-token gap
        then stays near ``1 + prefill_stall`` times a plain step's, on a CPU or a GPU alike (a fixed token
        count would be far too small for one and too large for the other). With no row decoding there is
        nobody to stall, and ``prefill_chunk`` tokens per forward bound a prompt's activations.
        """
        rate = self._prefill_rate if rate is None else rate
        if not len(self.engine) or not self.prefill_stall:
            return None
        if self._step_s is None or not rate:
            tokens = self.MIN_CHUNK
        else:
            tokens = max(self.MIN_CHUNK, int(rate * self._step_s * self.prefill_stall / rows))
        return min(tokens, self.prefill_chunk) if self.prefill_chunk else tokens

    def _deliver(self, u: Update) -> None:
        callback = self._callbacks.get(u.key)
        if u.finish_reason is not None:
            self._callbacks.pop(u.key, None)
        if callback is None:
            return
        try:
            callback(u)
        except Exception:  # one request's handler must not stop the decode thread that serves everyone
            log.error("delivering an update to %r failed:\n%s", u.key, traceback.format_exc())

    def _take_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if isinstance(item[0] if item else None, PromptScorer):
                    self._scoring.append(item)
                elif item is not None:
                    requests, callback = item
                    for r in requests:
                        self._callbacks[r.key] = callback
                    self._waiting.extend(requests)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass
