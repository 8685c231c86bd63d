"""`mpt serve`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) and a web chat page.

Routes: ``GET /`` (chat page), ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (``stream: true`` gives server-sent events ending with
``data: [DONE]``). Every request becomes one engine row per choice; rows from all requests share
decode steps on the scheduler's thread (scheduler.py, batching.py). Errors use OpenAI's body
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from .api import LLM
from .batching import Row, Update
from .chat import END_OF_TURN, Message, render
from .protocol import APIError, ChatCompletionRequest, CompletionRequest, parse
from .sampling import SamplingParams
from .scheduler import Scheduler


@dataclass
class ServeConfig:
    model: str = ""
    tokenizer: str | None = None
    device: str | None = None
    dtype: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # None: $MPT_API_KEY, else no key required
    model_name: str | None = None  # default: the checkpoint folder's name
    context_length: int | None = None  # prompt + max_tokens; default: the model's max_seq_len
    max_tokens: int | None = None  # largest max_tokens a request may ask for; default: the context
    max_batch_size: int = 16  # rows decoded together
    max_concurrent: int = 64  # requests in flight, running or waiting; more get 429
    max_n: int = 8  # choices per request (n x prompts)
    log_level: str = "info"

    def validate(self) -> ServeConfig:
        """Check what can be checked before the model is loaded."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} is invalid: use 0..65535")
        for name in ("max_batch_size", "max_concurrent", "max_n", "context_length", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} is invalid: must be >= 1")
        if self.api_key is None:
            self.api_key = os.environ.get("MPT_API_KEY") or None
        return self

    def resolve(self, llm: LLM) -> ServeConfig:
        """Fill the defaults that come from the model."""
        self.validate()
        self.model_name = self.model_name or Path(str(self.model)).name or "mpt"
        self.context_length = self.context_length or llm.model.config.max_seq_len
        if self.context_length < 2:
            raise ValueError(f"context_length={self.context_length} is invalid: must be >= 2")
        self.max_tokens = min(self.max_tokens or self.context_length, self.context_length - 1)
        return self


class Job:
    """One HTTP request: its engine rows (one per choice) and the queue their updates arrive on."""

    def __init__(self, server: Server, prompts: list[list[int]], n: int, params: SamplingParams) -> None:
        self.server = server
        self.id = uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Update] = asyncio.Queue()
        device = server.llm.device
        self.requests = []
        for p, ids in enumerate(prompts):
            for c in range(n):
                index = p * n + c
                gen = None if params.seed is None else torch.Generator(device).manual_seed(params.seed + index)
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

    def cancel(self) -> None:
        """The client is gone: free its rows in the batch (they leave before the next step)."""
        if self.unfinished:
            self.server.scheduler.cancel(list(self.unfinished))
            self.unfinished.clear()
        self.server.jobs.discard(self)

    async def updates(self, request: Request | None = None) -> AsyncIterator[Update]:
        """Updates until every choice finished; polls for a client disconnect while waiting."""
        open_keys = {r.key for r in self.requests}
        while open_keys:
            try:
                u = await asyncio.wait_for(self.queue.get(), timeout=0.5)
            except TimeoutError:
                if request is not None and await request.is_disconnected():
                    self.cancel()
                    return
                continue
            if u.finish_reason == "error":
                self.cancel()
                raise APIError(500, f"generation failed: {u.error}")
            if u.finish_reason is not None:
                open_keys.discard(u.key)
            yield u


class Server:
    def __init__(self, llm: LLM, cfg: ServeConfig) -> None:
        self.llm = llm
        self.cfg = cfg.resolve(llm)
        self.scheduler = Scheduler(llm.engine(), cfg.max_batch_size)
        self.jobs: set[Job] = set()

    # -- request checks -------------------------------------------------------------------
    def check_model(self, name: str) -> None:
        if name != self.cfg.model_name:
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{self.cfg.model_name}'",
                           param="model", code="model_not_found")

    def check_room(self) -> None:
        if len(self.jobs) >= self.cfg.max_concurrent:
            raise APIError(429, f"too many requests in flight (limit {self.cfg.max_concurrent}); retry shortly",
                           code="rate_limit_exceeded", type="rate_limit_error")

    def sampling(self, req, prompt_ids: list[list[int]], max_tokens: int | None, default_max: int | None,
                 stop: list[str]) -> SamplingParams:
        cfg = self.cfg
        if req.n * len(prompt_ids) > cfg.max_n:
            raise APIError(400, f"n={req.n} x {len(prompt_ids)} prompt(s) is more than the limit of {cfg.max_n} "
                                "choices per request", param="n")
        longest = max(len(p) for p in prompt_ids)
        if longest >= cfg.context_length:
            raise APIError(400, f"This model's maximum context length is {cfg.context_length} tokens; the prompt "
                                f"has {longest}", param="messages" if hasattr(req, "messages") else "prompt",
                           code="context_length_exceeded")
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
        return SamplingParams(max_tokens, req.temperature, req.top_p, req.top_k, req.repetition_penalty,
                              stop, req.seed).validate()

    def encode(self, text: str) -> list[int]:
        # An empty prompt starts from the document separator, as for GPT-style models.
        return self.llm.encode(text) or [self.llm.tokenizer.eos_token_id or 0]

    # -- endpoints --------------------------------------------------------------------------
    async def completions(self, request: Request):
        req: CompletionRequest = parse(CompletionRequest, await request.body())
        self.check_model(req.model)
        prompts = [self.encode(p) for p in req.prompts]
        params = self.sampling(req, prompts, req.max_tokens, 16, req.stops)
        return await self._respond(request, req, prompts, params, chat=False)

    async def chat_completions(self, request: Request):
        req: ChatCompletionRequest = parse(ChatCompletionRequest, await request.body())
        self.check_model(req.model)
        messages = [Message("system" if m.role == "developer" else m.role, m.text) for m in req.messages]
        prompts = [self.encode(render(messages, self.llm.tokenizer))]
        params = self.sampling(req, prompts, req.max_completion_tokens or req.max_tokens, None,
                               req.stops + [END_OF_TURN])
        return await self._respond(request, req, prompts, params, chat=True)

    async def _respond(self, request: Request, req, prompts: list[list[int]], params: SamplingParams, chat: bool):
        self.check_room()
        job = Job(self, prompts, req.n, params)
        job.start()
        prompt_tokens = sum(len(p) for p in prompts)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(self._sse(job, req, chat, prompt_tokens, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        texts: dict[int, list[str]] = {r.key[1]: [] for r in job.requests}
        counts = dict.fromkeys(texts, 0)
        finish: dict[int, str] = {}
        try:
            async for u in job.updates(request):
                index = u.key[1]
                texts[index].append(u.text)
                counts[index] += u.token_id is not None
                if u.finish_reason is not None:
                    finish[index] = u.finish_reason
        finally:
            job.cancel()
        if len(finish) < len(texts):  # the client went away; nobody reads this
            return JSONResponse({"error": "client disconnected"}, status_code=499)
        choices = []
        for i in sorted(texts):
            text = "".join(texts[i])
            choice = ({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                       "finish_reason": finish[i]} if chat else
                      {"index": i, "text": text, "logprobs": None, "finish_reason": finish[i]})
            choices.append(choice)
        return JSONResponse({"id": ("chatcmpl-" if chat else "cmpl-") + job.id,
                             "object": "chat.completion" if chat else "text_completion", "created": job.created,
                             "model": self.cfg.model_name, "choices": choices,
                             "usage": self._usage(prompt_tokens, sum(counts.values()))})

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

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.cfg.model_name, "object": "model", "created": 0,
                                            "owned_by": "mpt", "max_model_len": self.cfg.context_length}]}


def create_app(llm: LLM, cfg: ServeConfig) -> FastAPI:
    """The FastAPI app; the decode thread runs while the app is being served (lifespan)."""
    from contextlib import asynccontextmanager

    from starlette.exceptions import HTTPException

    server = Server(llm, cfg)

    @asynccontextmanager
    async def lifespan(app):
        server.scheduler.start()
        yield
        server.scheduler.stop()

    app = FastAPI(title="mpt serve", description="OpenAI-compatible API for an MPT model", lifespan=lifespan)
    app.state.server = server
    page = resources.files("mpt.infer").joinpath("static/chat.html").read_text(encoding="utf-8")

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return JSONResponse(APIError(err.status_code, f"{request.method} {request.url.path}: {err.detail}",
                                     code=code).body(), status_code=err.status_code)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        key = server.cfg.api_key
        if key and request.url.path.startswith("/v1"):
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
                msg = ("Incorrect API key provided" if given else
                       "Missing API key: send the header 'Authorization: Bearer YOUR_KEY'")
                return JSONResponse(APIError(401, msg, code="invalid_api_key").body(), status_code=401)
        return await call_next(request)

    app.add_api_route("/", lambda: HTMLResponse(page), methods=["GET"], include_in_schema=False)
    app.add_api_route("/health", server.health, methods=["GET"])
    app.add_api_route("/v1/models", server.models, methods=["GET"])
    app.add_api_route("/v1/completions", server.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", server.chat_completions, methods=["POST"])
    return app


def serve(cfg: ServeConfig) -> None:
    """Load the model, then serve until interrupted."""
    import uvicorn

    from .api import load

    cfg.validate()
    llm = load(cfg.model, tokenizer=cfg.tokenizer, device=cfg.device, dtype=cfg.dtype)
    app = create_app(llm, cfg)
    base = f"http://{cfg.host}:{cfg.port}"
    print(f"serving '{cfg.model_name}' at {base}/v1 (OpenAI API; key {'required' if cfg.api_key else 'not required'})"
          f", chat page at {base}/ ; context {cfg.context_length} tokens, batch {cfg.max_batch_size}", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
