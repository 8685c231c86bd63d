"""The server's decode loop: one background thread drives the BatchEngine; requests join between steps.

Request handlers (on the asyncio event loop) call :meth:`Scheduler.submit` with engine requests and
a callback; the thread admits waiting requests whenever the batch has room (prefilling them and
merging them into the running batch), runs one decode step for every row, and hands each update to
its callback. A long prompt is prefilled ``prefill_chunk`` tokens per loop turn, each turn also
running a decode step, so the running rows keep streaming while it joins. A handler whose client went away calls :meth:`cancel`; the row leaves the batch
before the next step. The model is only ever touched from this thread. The decode step is the
engine's: compiled over a static cache when the engine was built with ``compile`` (the default on
CUDA, see :class:`~mpt.infer.batching.BatchEngine`), so it is compiled and CUDA-graph-captured on
this thread too.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future

from .batching import BatchEngine, Prefill, Row, Update

log = logging.getLogger("mpt.serve")


class Scheduler:
    def __init__(self, engine: BatchEngine, max_batch_size: int = 16, prefill_chunk: int | None = None) -> None:
        self.engine = engine
        self.prefill_chunk = prefill_chunk
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
        return len(self._waiting) + self._inbox.qsize() + joining

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(None)  # wake the thread if it is idle
        self._thread.join(timeout=10)

    def submit(self, requests: Sequence[Row], on_update: Callable[[Update], None]) -> None:
        self._inbox.put((list(requests), on_update))

    def call(self, fn: Callable[[], object]) -> Future:
        """Run ``fn`` on the decode thread between two steps (the model is only touched from there)."""
        future: Future = Future()
        self._inbox.put((fn, future))
        return future

    def cancel(self, keys: Sequence[Hashable]) -> None:
        with self._lock:
            self._cancelled.update(keys)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._take_inbox(block=not self._waiting and not len(self.engine) and self._prefill is None)
            with self._lock:
                cancelled, self._cancelled = self._cancelled, set()
            if cancelled:
                self._waiting = [r for r in self._waiting if r.key not in cancelled]
                self.engine.cancel(cancelled)
                if self._prefill is not None:
                    self._cancel_on_join |= cancelled & {r.key for r in self._prefill.rows}
                for key in cancelled:
                    self._callbacks.pop(key, None)
            updates = self._admit()
            size = len(self.engine)
            try:
                updates += self.engine.step()
                self.steps += size > 0  # decode steps actually run, not idle turns of the loop
            except Exception as err:  # the batch's forward pass failed (e.g. out of memory): all its rows fail
                log.error("decode step failed:\n%s", traceback.format_exc())
                updates += [Update(r.key, None, "", "error", f"{type(err).__name__}: {err}")
                            for r in self.engine.reset()]
            if size and self.on_step is not None:
                self.on_step(size)
            for u in updates:
                self._deliver(u)

    def _admit(self) -> list[Update]:
        """Prefill waiting rows into free batch slots, one chunk per call; a failed prefill fails those rows only."""
        joining = self._prefill.rows if self._prefill is not None else []
        try:
            if self._prefill is None:
                free = self.max_rows - len(self.engine)
                if free <= 0 or not self._waiting:
                    return []
                joining, self._waiting = self._waiting[:free], self._waiting[free:]
                self._prefill = self.engine.prefill(joining, self.prefill_chunk)
            if self._prefill.advance():
                prefill, self._prefill = self._prefill, None
                self.engine.join(prefill)
                cancelled, self._cancel_on_join = self._cancel_on_join, set()
                self.engine.cancel(cancelled)
        except Exception as err:
            log.error("prefill failed:\n%s", traceback.format_exc())
            self._prefill, self._cancel_on_join = None, set()
            return [Update(r.key, None, "", "error", f"{type(err).__name__}: {err}") for r in joining]
        return []

    @staticmethod
    def _run_call(fn: Callable[[], object], future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except Exception as err:  # it is the caller's to report; the decode thread goes on
            future.set_exception(err)

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
                if callable(item[0] if item else None):
                    self._run_call(*item)
                elif item is not None:
                    requests, callback = item
                    for r in requests:
                        self._callbacks[r.key] = callback
                    self._waiting.extend(requests)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass
