"""A request's life on the scheduler: a :class:`Job` holds its engine rows (one per choice) and the queue
their updates arrive on, from the decode thread to the event loop.

:class:`Jobs` is the server's set of them, with their metrics; :meth:`Job.release` frees a job's rows
(done, failed, or its client gone) and :meth:`Jobs.fail_unfinished` ends every row with a 503 when
the server stops. :func:`unless_gone` runs work until the client disconnects.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from starlette.requests import Request

from .batching import Row, Update
from .guard import ClientGone
from .metrics import Metrics
from .protocol import APIError
from .sampling import SamplingParams
from .scheduler import Scheduler

T = TypeVar("T")


class Jobs:
    """The server's jobs in flight (its length is their number), started on its scheduler."""

    def __init__(self, scheduler: Scheduler, device: torch.device | str, metrics: Metrics | None) -> None:
        self.scheduler, self.device, self.metrics = scheduler, device, metrics
        self.running: set[Job] = set()
        # Updates from the decode thread wait here for the event loop: one wake-up carries a whole step's rows,
        # where a call_soon_threadsafe per row woke the loop (and took the GIL from the decode thread) 8 times a
        # step at 8 clients.
        self._mail: list[tuple[Job, Update]] = []
        self._mail_lock = threading.Lock()
        self._drain_scheduled = False

    def __len__(self) -> int:
        return len(self.running)

    def start(self, prompts: list[list[int]], n: int, params: SamplingParams) -> Job:
        job = Job(self, prompts, n, params)
        self.running.add(job)
        self.scheduler.submit(job.rows, job._from_thread)
        if self.metrics is not None:
            self.metrics.prompt_tokens.inc(sum(len(p) for p in prompts))
        return job

    def post(self, job: Job, u: Update) -> None:
        """From the decode thread: ``u`` for ``job``, delivered on the event loop with the others of its step.

        A collecting job's (a non-streamed answer's) updates before its rows' last wait in the mailbox for a
        wake-up that something else needs: the event loop woken every step took a core from the decode thread's
        OpenMP threads (8 clients, bfloat16: 5-10 % of the tokens per second).
        """
        if job.first_token is None and u.token_id is not None:
            job.first_token = time.monotonic()  # when it came, not when the loop saw it
        with self._mail_lock:
            self._mail.append((job, u))
            if self._drain_scheduled or (job.collecting and u.finish_reason is None):
                return
            self._drain_scheduled = True
        try:
            job.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass

    def _drain(self) -> None:
        with self._mail_lock:
            mail, self._mail = self._mail, []
            self._drain_scheduled = False
        for job, u in mail:
            job._deliver(u)

    def fail_unfinished(self, message: str) -> None:
        """End every job's unfinished rows now with a 503 error (the server is stopping)."""
        for job in list(self.running):
            job.fail_unfinished(message)

    def record(self, job: Job, tokens: int, finished: bool) -> None:
        if self.metrics is None:
            return
        self.metrics.generation_tokens.inc(tokens)
        if job.first_token is not None:
            self.metrics.first_token_seconds.observe(job.first_token - job.admitted)
        if finished:
            self.metrics.request_seconds.observe(time.monotonic() - job.admitted)


@dataclass
class Collected:
    """One choice of a non-streaming answer, as its updates arrive."""

    texts: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    tops: list = field(default_factory=list)
    finish: str | None = None


class Job:
    """One HTTP request: its engine rows (one per choice) and the queue their updates arrive on."""

    def __init__(self, jobs: Jobs, prompts: list[list[int]], n: int, params: SamplingParams) -> None:
        self.jobs = jobs
        self.n = n
        key = uuid.uuid4().hex[:24]
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Update] = asyncio.Queue()
        self.admitted = time.monotonic()
        self.first_token: float | None = None
        self.rows = []
        for p, ids in enumerate(prompts):
            for c in range(n):
                index = p * n + c
                gen = (None if params.seed is None else
                       torch.Generator(jobs.device).manual_seed((params.seed + index) % 2**64))
                self.rows.append(Row((key, index), ids, params, gen))
        self.unfinished = {r.key for r in self.rows}  # as the scheduler sees it
        self.collecting = False  # collect() reads the updates only once every row ended

    @property
    def prompts(self) -> list[list[int]]:
        return [r.prompt_ids for r in self.rows[::self.n]]

    def _from_thread(self, u: Update) -> None:
        self.jobs.post(self, u)

    def _deliver(self, u: Update) -> None:
        if u.finish_reason is not None:
            self.unfinished.discard(u.key)
            if not self.unfinished:
                self.jobs.running.discard(self)
        self.queue.put_nowait(u)

    def fail_unfinished(self, message: str) -> None:
        """End every unfinished row now with a 503 error its client receives (the server is stopping)."""
        keys = list(self.unfinished)
        self.jobs.scheduler.cancel(keys)
        for key in keys:
            self._deliver(Update(key, None, "", "error", message, status=503))

    def release(self) -> None:
        """Free the rows still in the batch (they leave before the next step) and leave the server's jobs: the
        answer is complete, failed, or its client is gone."""
        if self.unfinished:
            self.jobs.scheduler.cancel(list(self.unfinished))
            self.unfinished.clear()
        self.jobs.running.discard(self)

    async def updates(self) -> AsyncIterator[Update]:
        """Updates until every choice finished (a client that leaves is noticed by :func:`unless_gone` or, when
        streaming, by starlette, which cancels the response and so this)."""
        open_keys = {r.key for r in self.rows}
        tokens = 0
        try:
            while open_keys:
                u = await self.queue.get()
                if u.finish_reason == "error":
                    self.release()
                    message = u.error if u.status != 500 else f"generation failed: {u.error}"
                    raise APIError(u.status, message, code="server_shutting_down" if u.status == 503 else None)
                if u.token_id is not None:
                    tokens += 1
                    self.first_token = self.first_token or time.monotonic()
                if u.finish_reason is not None:
                    open_keys.discard(u.key)
                yield u
        finally:
            self.jobs.record(self, tokens, finished=not open_keys)

    async def collect(self) -> dict[int, Collected]:
        """Every choice's updates, gathered (wrap it in :func:`unless_gone`: nothing here watches the client)."""
        rows = {r.key[1]: Collected() for r in self.rows}
        self.collecting = True
        try:
            async for u in self.updates():
                row = rows[u.key[1]]
                row.texts.append(u.text)
                if u.token_id is not None:
                    row.ids.append(u.token_id)
                    row.logprobs.append(u.logprob)
                    row.tops.append(u.top_logprobs)
                if u.finish_reason is not None:
                    row.finish = u.finish_reason
        finally:
            self.release()
        return rows


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (the body was read already: what comes is the end)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_gone(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, or :class:`ClientGone` as soon as the client disconnects, ``work`` then cancelled.

    Waiting for the disconnect itself, not polling between tokens: a poll after 0.5 s without a token never
    came while the model decoded, so a client that left kept its rows (and its place under --max-concurrent)
    for the whole generation.
    """
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # its cleanup (freeing rows) runs now
    if task.cancelled():
        raise ClientGone
    return task.result()
