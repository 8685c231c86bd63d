"""`mpt serve`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) and a web chat page.

Routes: ``GET /`` (chat page), ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (``stream: true`` gives server-sent events ending with
``data: [DONE]``). Every request becomes one engine row per choice; rows from all requests share
decode steps on the scheduler's thread (scheduler.py, batching.py). Errors use OpenAI's body
``{"error": {"message", "type", "param", "code"}}``.

One client cannot hurt the others: limits are checked before work (body bytes before parsing,
characters before tokenizing, capacity before queueing; tokenizing runs off the event loop), a
connection is cut when its headers or body arrive too slowly (``header_timeout``, ``body_timeout``)
and their number is capped (connections.py), and a row that fails ends only its own request. ``GET /metrics`` serves Prometheus metrics; on SIGTERM
the server stops accepting, gives running rows ``shutdown_grace`` seconds, then cuts them with a
final error event.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from importlib import resources
from typing import TypeVar

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from .api import LLM
from .batching import Row, Update
from .chat import END_OF_TURN, Message, encode_prompt
from .connections import check_uvicorn, uvicorn_server
from .guard import ClientGone, check_local_request, read_body
from .logprobs import PromptScorer
from .metrics import create_metrics
from .protocol import APIError, ChatCompletionRequest, CompletionRequest, parse
from .sampling import SamplingParams
from .scheduler import Scheduler
from .serve_config import ServeConfig, compile_flag

T = TypeVar("T")


class _DecodeCache:
    """One token's text, decoded once per request: a scored prompt names the same alternatives again and again."""

    def __init__(self, decode) -> None:
        self.decode, self.texts = decode, {}

    def __call__(self, token: int) -> str:
        text = self.texts.get(token)
        if text is None:
            text = self.texts[token] = self.decode([token])
        return text


@dataclass
class _Collected:
    """One choice of a non-streaming answer, as its updates arrive."""

    texts: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    tops: list = field(default_factory=list)
    finish: str | None = None


class Job:
    """One HTTP request: its engine rows (one per choice) and the queue their updates arrive on."""

    def __init__(self, server: Server, prompts: list[list[int]], n: int, params: SamplingParams) -> None:
        self.server = server
        self.id = uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Update] = asyncio.Queue()
        self.admitted = time.monotonic()
        self.first_token: float | None = None
        device = server.llm.device
        self.requests = []
        for p, ids in enumerate(prompts):
            for c in range(n):
                index = p * n + c
                gen = None if params.seed is None else torch.Generator(device).manual_seed((params.seed + index) % 2**64)
                self.requests.append(Row((self.id, index), ids, params, gen))
        self.unfinished = {r.key for r in self.requests}  # as the scheduler sees it

    def start(self) -> None:
        self.server.jobs.add(self)
        self.server.scheduler.submit(self.requests, self._from_thread)

    def _from_thread(self, u: Update) -> None:
        try:
            self.loop.call_soon_threadsafe(self._deliver, u)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass

    def _deliver(self, u: Update) -> None:
        if u.finish_reason is not None:
            self.unfinished.discard(u.key)
            if not self.unfinished:
                self.server.jobs.discard(self)
        self.queue.put_nowait(u)

    def cut(self, message: str) -> None:
        """End every unfinished row now with a 503 error (the server is stopping)."""
        keys = list(self.unfinished)
        self.server.scheduler.cancel(keys)
        for key in keys:
            self._deliver(Update(key, None, "", "error", message, status=503))

    def cancel(self) -> None:
        """The client is gone: free its rows in the batch (they leave before the next step)."""
        if self.unfinished:
            self.server.scheduler.cancel(list(self.unfinished))
            self.unfinished.clear()
        self.server.jobs.discard(self)

    async def updates(self) -> AsyncIterator[Update]:
        """Updates until every choice finished (a client that leaves is noticed by :func:`unless_gone` or, when
        streaming, by starlette, which cancels the response and so this)."""
        open_keys = {r.key for r in self.requests}
        tokens = 0
        try:
            while open_keys:
                u = await self.queue.get()
                if u.finish_reason == "error":
                    self.cancel()
                    message = u.error if u.status != 500 else f"generation failed: {u.error}"
                    raise APIError(u.status, message, code="server_shutting_down" if u.status == 503 else None)
                if u.token_id is not None:
                    tokens += 1
                    self.first_token = self.first_token or time.monotonic()
                if u.finish_reason is not None:
                    open_keys.discard(u.key)
                yield u
        finally:
            self.server.record(self, tokens, finished=not open_keys)


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


class Server:
    def __init__(self, llm: LLM, cfg: ServeConfig) -> None:
        self.llm = llm
        self.cfg = cfg.resolve(llm)
        self.scheduler = Scheduler(llm.engine(compile_flag(cfg.compile)), cfg.max_batch_size, cfg.prefill_chunk or None,
                                   cfg.prefill_stall)
        self.jobs: set[Job] = set()
        self.admitting = 0  # requests past the capacity check that are still tokenizing (not in jobs yet)
        self.draining = False  # SIGTERM arrived: new requests get 503
        self.loop: asyncio.AbstractEventLoop | None = None
        self.metrics = create_metrics(in_flight=lambda: len(self.jobs) + self.admitting,
                                      running=lambda: self.scheduler.running, waiting=lambda: self.scheduler.waiting)
        if self.metrics is not None:
            self.scheduler.on_step = self.metrics.batch_size.observe

    def record(self, job: Job, tokens: int, finished: bool) -> None:
        if self.metrics is None:
            return
        self.metrics.generation_tokens.inc(tokens)
        if job.first_token is not None:
            self.metrics.first_token_seconds.observe(job.first_token - job.admitted)
        if finished:
            self.metrics.request_seconds.observe(time.monotonic() - job.admitted)

    # -- request checks -------------------------------------------------------------------
    def check_model(self, name: str) -> None:
        if name != self.cfg.model_name:
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{self.cfg.model_name}'",
                           param="model", code="model_not_found")

    def check_room(self) -> None:
        if self.draining:
            raise APIError(503, "the server is shutting down; retry on another instance", code="server_shutting_down")
        if len(self.jobs) + self.admitting >= self.cfg.max_concurrent:
            raise APIError(429, f"too many requests in flight (limit {self.cfg.max_concurrent}); retry shortly",
                           code="rate_limit_exceeded", type="rate_limit_error")

    def check_size(self, req, texts: list[str], param: str, prompts: int = 1) -> None:
        """Choices and characters: what can be refused before the text is tokenized."""
        if req.n > self.cfg.max_n or (req.n * prompts > self.cfg.max_n and not getattr(req, "scoring", False)):
            # (scoring requests, lm-eval's batches of prompts, are limited by their tokens: check_score_tokens)
            raise APIError(400, f"n={req.n} x {prompts} prompt(s) is more than the limit of {self.cfg.max_n} "
                                "choices per request (--max-n)", param="n")
        chars = max(len(t) for t in texts)
        if chars > self.cfg.max_prompt_chars:
            raise APIError(400, f"the {param} has {chars} characters; this server accepts at most "
                                f"{self.cfg.max_prompt_chars} (--max-prompt-chars), more than its context of "
                                f"{self.cfg.context_length} tokens can hold", param=param,
                           code="context_length_exceeded")

    def check_score_tokens(self, req, prompts: list[list[int]]) -> None:
        """A scoring request's prompt tokens (times n), within --max-score-tokens."""
        total = req.n * sum(len(p) for p in prompts)
        if total > self.cfg.max_score_tokens:
            raise APIError(400, f"the {len(prompts)} prompt(s) x n={req.n} hold {total} tokens to score; this server "
                                f"scores at most {self.cfg.max_score_tokens} per request (--max-score-tokens): send "
                                "fewer prompts per request (e.g. a smaller lm-eval --batch_size)", param="prompt",
                           code="too_many_tokens")

    async def body(self, request: Request) -> bytes:
        return await read_body(request, self.cfg.max_body_bytes, self.cfg.body_timeout)

    def token_ids(self, ids: list[int], index: int) -> list[int]:
        vocab = self.llm.model.config.vocab_size
        bad = next((t for t in ids if t >= vocab), None)
        if bad is not None:
            raise APIError(400, f"prompt {index} holds token id {bad}, outside this model's vocabulary "
                                f"(ids 0..{vocab - 1})", param="prompt", code="invalid_token_id")
        return ids

    def check_context(self, req, prompt_ids: list[list[int]]) -> int:
        """The longest prompt's length in tokens, refused unless there is room after it."""
        longest = max(len(p) for p in prompt_ids)
        if longest >= self.cfg.context_length:
            raise APIError(400, f"This model's maximum context length is {self.cfg.context_length} tokens; the "
                                f"prompt has {longest}", param="messages" if hasattr(req, "messages") else "prompt",
                           code="context_length_exceeded")
        return longest

    def sampling(self, req, prompt_ids: list[list[int]], max_tokens: int | None, default_max: int | None,
                 stop: list[str], logprobs: int | None = None) -> SamplingParams:
        cfg = self.cfg
        longest = self.check_context(req, prompt_ids)
        if max_tokens is None:
            max_tokens = min(default_max or cfg.max_tokens, cfg.max_tokens, cfg.context_length - longest)
        if max_tokens > cfg.max_tokens:
            raise APIError(400, f"max_tokens={max_tokens} is above this server's limit of {cfg.max_tokens}",
                           param="max_tokens")
        if longest + max_tokens > cfg.context_length:
            raise APIError(400, f"This model's maximum context length is {cfg.context_length} tokens. However, "
                                f"you requested {longest + max_tokens} tokens ({longest} in the prompt, "
                                f"{max_tokens} for the completion)", param="max_tokens",
                           code="context_length_exceeded")
        bias = req.token_bias
        vocab = self.llm.model.config.vocab_size
        if bias and max(bias) >= vocab:
            raise APIError(400, f"logit_bias names token id {max(bias)}, outside this model's vocabulary (ids "
                                f"0..{vocab - 1})", param="logit_bias", code="invalid_token_id")
        return SamplingParams(max_tokens, req.temperature, req.top_p, req.top_k, req.repetition_penalty,
                              stop, req.seed, logprobs, bias).validate()

    def encode(self, text: str) -> list[int]:
        # An empty prompt starts from the document separator, as for GPT-style models.
        return self.llm.encode(text) or [self.llm.tokenizer.eos_token_id or 0]

    async def admit(self, req, tokenize, max_tokens: int | None, default_max: int | None, stop: list[str],
                    logprobs: int | None = None) -> Job:
        """Capacity, then tokens (on a worker thread: a long prompt must not stall the event loop), then a job."""
        self.check_room()
        self.admitting += 1
        try:
            prompts = await asyncio.to_thread(tokenize)
            params = self.sampling(req, prompts, max_tokens, default_max, stop, logprobs)
            job = Job(self, prompts, req.n, params)
        finally:
            self.admitting -= 1
        job.start()  # no await since the check above released its place: no other request took it
        if self.metrics is not None:
            self.metrics.prompt_tokens.inc(sum(len(p) for p in prompts))
        return job

    # -- endpoints --------------------------------------------------------------------------
    async def completions(self, request: Request):
        req: CompletionRequest = parse(CompletionRequest, await self.body(request))
        self.check_model(req.model)
        req.check_scoring()
        self.check_size(req, [p for p in req.prompts if isinstance(p, str)] or [""], "prompt",
                        prompts=len(req.prompts))

        def tokenize() -> list[list[int]]:
            prompts = [self.token_ids(p, i) if isinstance(p, list) else self.encode(p)
                       for i, p in enumerate(req.prompts)]
            if req.scoring:
                self.check_score_tokens(req, prompts)
            return prompts

        if req.echo or req.logprobs is not None:
            return await self._scored_completion(request, req, tokenize)
        job = await self.admit(req, tokenize, req.max_tokens, 16, req.stops)
        return await self._respond(request, req, job, chat=False)

    async def _scored_completion(self, request: Request, req: CompletionRequest, tokenize):
        """``echo`` and/or ``logprobs``: the prompt's scores (computed on the decode thread, a paced chunk at a
        time) and the new tokens'."""
        k = req.logprobs
        if req.max_tokens == 0:
            self.check_room()
            self.admitting += 1
            try:
                prompts = await asyncio.to_thread(tokenize)
                self.check_context(req, prompts)
                scores = await unless_gone(request, self._score(prompts, k))
            finally:
                self.admitting -= 1
            rows = {p * req.n + c: _Collected(finish="length") for p in range(len(prompts)) for c in range(req.n)}
        else:
            job = await self.admit(req, tokenize, req.max_tokens, 16, req.stops, logprobs=k)
            try:
                prompts = [r.prompt_ids for r in job.requests[::req.n]]
                scores = await unless_gone(request, self._score(prompts, k)) if req.echo else None
                rows = await unless_gone(request, self._collect(job))
            finally:
                job.cancel()
        # Thousands of tokens with their alternatives to decode and serialize: off the event loop, which
        # meanwhile sends the other clients' streamed tokens.
        body = await asyncio.to_thread(self._scored_body, req, prompts, scores, rows)
        return Response(body, media_type="application/json")

    def _scored_body(self, req: CompletionRequest, prompts: list[list[int]], scores, rows) -> bytes:
        k = req.logprobs
        decode = _DecodeCache(self.llm.decode)
        choices = []
        for i in sorted(rows):
            row, ids = rows[i], prompts[i // req.n]
            text = "".join(row.texts)
            tokens, lps, tops = row.ids, row.logprobs, row.tops
            if req.echo:
                prompt = req.prompts[i // req.n]
                text = (prompt if isinstance(prompt, str) else self.llm.decode(ids)) + text
                tokens, lps, tops = ids + tokens, scores[i // req.n][0] + lps, scores[i // req.n][1] + tops
            choices.append({"index": i, "text": text, "finish_reason": row.finish,
                            "logprobs": None if k is None else self._logprobs_body(tokens, lps, tops, decode)})
        generated = sum(len(r.ids) for r in rows.values())

        def dumps(value) -> str:
            return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))

        # A choice at a time: json.dumps holds the GIL for the whole of what it is given (3 MB, 200 ms for
        # 8 x 2,000 tokens), and the event loop needs it to send the other clients' tokens.
        head = dumps({"id": "cmpl-" + uuid.uuid4().hex[:24], "object": "text_completion", "created": int(time.time()),
                      "model": self.cfg.model_name})
        usage = dumps(self._usage(sum(len(p) for p in prompts), generated))
        return f'{head[:-1]},"choices":[{",".join(dumps(c) for c in choices)}],"usage":{usage}}}'.encode()

    async def _score(self, prompts: list[list[int]], k: int | None) -> list[tuple[list, list]]:
        if k is None:
            return [([None] * len(p), [None] * len(p)) for p in prompts]
        scorer = PromptScorer(self.llm.model, prompts, k, chunk=self.cfg.prefill_chunk or None)
        return await asyncio.wrap_future(self.scheduler.score(scorer))  # cancelled with it: the work is dropped

    @staticmethod
    def _logprobs_body(ids: list[int], lps: list, tops: list, decode) -> dict:
        """OpenAI's legacy shape: parallel lists of token strings, log-probabilities, top alternatives, offsets."""
        tokens = [decode(t) for t in ids]
        offsets, at = [], 0
        for t in tokens:
            offsets.append(at)
            at += len(t)
        return {"tokens": tokens, "token_logprobs": lps, "text_offset": offsets,
                "top_logprobs": [None if top is None else {decode(t): lp for t, lp in top} for top in tops]}

    async def _collect(self, job: Job) -> dict[int, _Collected]:
        """Every choice's updates, gathered (wrap it in :func:`unless_gone`: nothing here watches the client)."""
        rows = {r.key[1]: _Collected() for r in job.requests}
        try:
            async for u in job.updates():
                row = rows[u.key[1]]
                row.texts.append(u.text)
                if u.token_id is not None:
                    row.ids.append(u.token_id)
                    row.logprobs.append(u.logprob)
                    row.tops.append(u.top_logprobs)
                if u.finish_reason is not None:
                    row.finish = u.finish_reason
        finally:
            job.cancel()
        return rows

    async def chat_completions(self, request: Request):
        req: ChatCompletionRequest = parse(ChatCompletionRequest, await self.body(request))
        self.check_model(req.model)
        messages = [Message("system" if m.role == "developer" else m.role, m.text) for m in req.messages]
        self.check_size(req, ["".join(m.content for m in messages)], "messages")

        def tokenize() -> list[list[int]]:
            try:
                return [encode_prompt(messages, self.llm.tokenizer, self.llm.encode)]
            except ValueError as err:
                raise APIError(400, str(err), param="messages") from None

        job = await self.admit(req, tokenize, req.max_completion_tokens or req.max_tokens, None,
                               req.stops + [END_OF_TURN])
        return await self._respond(request, req, job, chat=True)

    async def _respond(self, request: Request, req, job: Job, chat: bool):
        prompt_tokens = sum(len(r.prompt_ids) for r in job.requests[::req.n])
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(self._sse(job, req, chat, prompt_tokens, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        rows = await unless_gone(request, self._collect(job))
        choices = []
        for i in sorted(rows):
            text, finish = "".join(rows[i].texts), rows[i].finish
            choice = ({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                       "finish_reason": finish} if chat else
                      {"index": i, "text": text, "logprobs": None, "finish_reason": finish})
            choices.append(choice)
        return JSONResponse({"id": ("chatcmpl-" if chat else "cmpl-") + job.id,
                             "object": "chat.completion" if chat else "text_completion", "created": job.created,
                             "model": self.cfg.model_name, "choices": choices,
                             "usage": self._usage(prompt_tokens, sum(len(r.ids) for r in rows.values()))})

    async def _sse(self, job: Job, req, chat: bool, prompt_tokens: int, include_usage: bool) -> AsyncIterator[str]:
        base = {"id": ("chatcmpl-" if chat else "cmpl-") + job.id,
                "object": "chat.completion.chunk" if chat else "text_completion", "created": job.created,
                "model": self.cfg.model_name}

        def event(choices: list[dict], **extra) -> str:
            return f"data: {json.dumps({**base, 'choices': choices, **extra}, ensure_ascii=False)}\n\n"

        completion_tokens = 0
        try:
            if chat:
                yield event([{"index": r.key[1], "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None} for r in job.requests])
            async for u in job.updates():
                completion_tokens += u.token_id is not None
                if not u.text and u.finish_reason is None:
                    continue
                if chat:
                    delta = {"content": u.text} if u.text else {}
                    choice = {"index": u.key[1], "delta": delta, "logprobs": None, "finish_reason": None}
                    if u.finish_reason is not None and u.text:
                        yield event([choice])
                        choice = {"index": u.key[1], "delta": {}, "logprobs": None, "finish_reason": None}
                else:
                    choice = {"index": u.key[1], "text": u.text, "logprobs": None, "finish_reason": None}
                choice["finish_reason"] = u.finish_reason
                yield event([choice])
            if include_usage:
                yield event([], usage=self._usage(prompt_tokens, completion_tokens))
        except APIError as err:
            yield f"data: {json.dumps(err.body())}\n\n"
        finally:  # also on client disconnect: the response task is cancelled and lands here
            job.cancel()
        yield "data: [DONE]\n\n"

    @staticmethod
    def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def health(self) -> dict:
        return {"status": "ok", "model": self.cfg.model_name, "requests_in_flight": len(self.jobs),
                "rows_running": self.scheduler.running, "rows_waiting": self.scheduler.waiting,
                "decode_steps": self.scheduler.steps}

    def drain(self) -> None:
        """SIGTERM: refuse new requests; running rows get ``shutdown_grace`` seconds to finish, then are cut."""
        self.draining = True
        if self.loop is not None:  # called from a signal handler: schedule on the event loop's own thread
            self.loop.call_soon_threadsafe(self.loop.call_later, self.cfg.shutdown_grace, self._cut_all)

    def _cut_all(self) -> None:
        for job in list(self.jobs):
            job.cut(f"the server is shutting down: generation was cut after the {self.cfg.shutdown_grace:g} s grace")

    def metrics_page(self) -> Response:
        if self.metrics is None:
            raise APIError(501, "metrics need prometheus-client: pip install 'mpt[serve]'")
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.cfg.model_name, "object": "model", "created": 0,
                                            "owned_by": "mpt", "max_model_len": self.cfg.context_length}]}


ROUTES = {"/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions"}


def create_app(llm: LLM, cfg: ServeConfig) -> FastAPI:
    """The FastAPI app; the decode thread runs while the app is being served (lifespan)."""
    from contextlib import asynccontextmanager

    from starlette.exceptions import HTTPException

    server = Server(llm, cfg)
    key = server.cfg.api_key

    @asynccontextmanager
    async def lifespan(app):
        server.loop = asyncio.get_running_loop()
        server.scheduler.start()
        yield
        server.scheduler.stop()

    # With a key, the schema pages would be the only unguarded view of the API, and a browser cannot send
    # the key to them: they are off. Without one they are as open as the API itself.
    docs = {} if not key else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="mpt serve", description="OpenAI-compatible API for an MPT model", lifespan=lifespan, **docs)
    app.state.server = server
    page = resources.files("mpt.infer").joinpath("static/chat.html").read_text(encoding="utf-8")

    def error(err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return error(err)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, err: ClientGone):
        return Response(status_code=499)  # nobody reads it; answering keeps the log free of a traceback

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return error(APIError(err.status_code, f"{request.method} {request.url.path}: {err.detail}", code=code))

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        try:
            if not key:  # (ServeConfig refuses an empty key; should one get here, it must not turn checks off)
                check_local_request(request, server.cfg.host, server.cfg.allow_origin)
            elif path.startswith("/v1") or path == "/metrics":
                scheme, _, given = request.headers.get("authorization", "").partition(" ")
                given = given.strip()
                if scheme.lower() != "bearer" or not given or not hmac.compare_digest(given.encode(), key.encode()):
                    msg = ("Incorrect API key provided" if given else
                           "Missing API key: send the header 'Authorization: Bearer YOUR_KEY'")
                    raise APIError(401, msg, code="invalid_api_key")
            response = await call_next(request)
        except APIError as err:
            response = error(err)
        if server.metrics is not None:
            server.metrics.requests.labels(path if path in ROUTES else "other", str(response.status_code)).inc()
        return response

    if cfg.allow_origin:  # the sites the user named may read answers too (they need CORS headers for that)
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.allow_origin, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    app.add_api_route("/", lambda: HTMLResponse(page), methods=["GET"], include_in_schema=False)
    app.add_api_route("/health", server.health, methods=["GET"])
    app.add_api_route("/metrics", server.metrics_page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v1/models", server.models, methods=["GET"])
    app.add_api_route("/v1/completions", server.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", server.chat_completions, methods=["POST"])
    return app


def bind(host: str, port: int) -> socket.socket:
    """The server's address, taken before the model loads: a busy port is a one-line error in a second, not
    one after the model loaded and the banner said it was serving. Not yet listening (uvicorn starts that)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ValueError(f"host={host!r} is not an address of this machine ({err.strerror}): use e.g. 127.0.0.1 "
                         "or 0.0.0.0") from None
    family, _, _, _, address = next((i for i in infos if i[0] == socket.AF_INET), infos[0])
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a just-closed port is free
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {err.strerror or err}; stop what uses port {port} or "
                      "choose another --port") from None
    return sock


def serve(cfg: ServeConfig) -> None:
    """Take the port, load the model, then serve until interrupted."""
    from .api import load

    cfg.validate()
    check_uvicorn()  # before the model loads: a uvicorn the header timeout cannot use is a one-line error
    sock = bind(cfg.host, cfg.port)
    try:
        llm = load(cfg.model, tokenizer=cfg.tokenizer, device=cfg.device, dtype=cfg.dtype, quantize=cfg.quantize)
        app = create_app(llm, cfg)
    except BaseException:
        sock.close()
        raise
    port = sock.getsockname()[1]  # --port 0: the one the system chose
    base = f"http://{cfg.host}:{port}"

    def banner() -> None:
        key = "required" if cfg.api_key else "not required"
        print(f"serving '{cfg.model_name}' at {base}/v1 (OpenAI API; key {key}), chat page at {base}/ ; context "
              f"{cfg.context_length} tokens, batch {cfg.max_batch_size}"
              + (f", {cfg.quantize} weights" if cfg.quantize else ""), flush=True)
        warning = cfg.exposure_warning()
        if warning:
            print(warning, file=sys.stderr, flush=True)

    uvicorn_server(app, cfg.host, port, cfg.log_level, on_listen=banner).run(sockets=[sock])
