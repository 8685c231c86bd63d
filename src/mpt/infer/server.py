"""`mpt serve`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) and a web chat page; the HTTP layer.

The routes (:meth:`Server.routes`, also the metrics' route labels), their handlers, API-key and
local-only checks, error bodies, then uvicorn started on a port taken before the model loads. Every
request passes admission.py's checks, becomes a job of one engine row per choice (jobs.py) whose rows
share decode steps on the scheduler's thread (scheduler.py), and is answered in OpenAI's shapes
(protocol.py): ``stream: true`` gives server-sent events ending with ``data: [DONE]``. Slow or too
many connections are cut by connections.py. On SIGTERM the server stops accepting, gives running
rows ``shutdown_grace`` seconds, then ends them with a final error event.
"""

from __future__ import annotations

import asyncio
import hmac
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from . import protocol
from .admission import Admission
from .api import LLM
from .batching import run
from .connections import check_uvicorn, uvicorn_server
from .guard import ClientGone, check_local_request, read_body
from .jobs import Collected, Job, Jobs, unless_gone
from .logprobs import PromptScorer
from .metrics import create_metrics
from .protocol import APIError, ChatCompletionRequest, CompletionRequest, ResponseHead, parse
from .scheduler import Scheduler
from .serve_config import ServeConfig, serve_compiles

T = TypeVar("T")

__all__ = ["Server", "ServeConfig", "bind", "create_app", "serve", "uvicorn_server"]


@dataclass(frozen=True)
class Route:
    """One route of the app; its path is also its label in the request metrics."""

    path: str
    method: str
    handler: Callable
    in_schema: bool = True


class Server:
    """The app's state (scheduler, jobs, admission, metrics) and its route handlers."""

    def __init__(self, llm: LLM, cfg: ServeConfig) -> None:
        self.llm = llm
        self.cfg = cfg.resolve(llm)
        self.scheduler = Scheduler(llm.engine(serve_compiles(cfg.compile)), cfg.max_batch_size, cfg.prefill_chunk or None,
                                   cfg.prefill_stall)
        self.metrics = create_metrics(in_flight=lambda: self.admission.in_flight,
                                      running=lambda: self.scheduler.running, waiting=lambda: self.scheduler.waiting)
        if self.metrics is not None:
            self.scheduler.on_step = self.metrics.batch_size.observe
        self.jobs = Jobs(self.scheduler, llm.device, self.metrics)
        self.admission = Admission(llm, self.cfg, running=lambda: len(self.jobs))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.chat_page = resources.files("mpt.infer").joinpath("static/chat.html").read_text(encoding="utf-8")

    def routes(self) -> tuple[Route, ...]:
        return (Route("/", "GET", self.page, in_schema=False),
                Route("/health", "GET", self.health),
                Route("/metrics", "GET", self.metrics_page, in_schema=False),
                Route("/v1/models", "GET", self.models),
                Route("/v1/completions", "POST", self.completions),
                Route("/v1/chat/completions", "POST", self.chat_completions))

    # -- small routes ---------------------------------------------------------------------------
    def page(self) -> HTMLResponse:
        return HTMLResponse(self.chat_page)

    def health(self) -> dict:
        return {"status": "ok", "model": self.cfg.model_name, "requests_in_flight": len(self.jobs),
                "rows_running": self.scheduler.running, "rows_waiting": self.scheduler.waiting,
                "decode_steps": self.scheduler.steps}

    def metrics_page(self) -> Response:
        if self.metrics is None:
            raise APIError(501, "metrics need prometheus-client: pip install 'mpt[serve]'")
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.cfg.model_name, "object": "model", "created": 0,
                                            "owned_by": "mpt", "max_model_len": self.cfg.context_length}]}

    # -- generation -----------------------------------------------------------------------------
    async def admit(self, req: CompletionRequest | ChatCompletionRequest) -> Job:
        """Admission's checks, then a job on the scheduler."""
        async with self.admission.admitted(req) as prompts:
            return self.jobs.start(prompts, req.n, self.admission.sampling_within_limits(req, prompts))

    async def completions(self, request: Request):
        req: CompletionRequest = parse(CompletionRequest, await self._body(request))
        self.admission.check(req)
        if req.echo or req.logprobs is not None:
            return await self._scored_completion(request, req)
        return await self._respond(request, req, await self.admit(req))

    async def chat_completions(self, request: Request):
        req: ChatCompletionRequest = parse(ChatCompletionRequest, await self._body(request))
        self.admission.check(req)
        return await self._respond(request, req, await self.admit(req))

    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self.cfg.max_body_bytes, self.cfg.body_timeout)

    async def _respond(self, request: Request, req: CompletionRequest | ChatCompletionRequest, job: Job):
        head = ResponseHead.new(self.cfg.model_name, chat=isinstance(req, ChatCompletionRequest))
        prompt_tokens = sum(len(p) for p in job.prompts)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(self._events(job, head, prompt_tokens, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        rows = await unless_gone(request, job.collect())
        choices = [protocol.choice(head, i, "".join(rows[i].texts), rows[i].finish) for i in sorted(rows)]
        generated = sum(len(r.ids) for r in rows.values())
        return JSONResponse(protocol.response(head, choices, protocol.usage(prompt_tokens, generated)))

    async def _events(self, job: Job, head: ResponseHead, prompt_tokens: int,
                      include_usage: bool) -> AsyncIterator[str]:
        completion_tokens = 0
        try:
            for event in protocol.stream_start(head, [r.key[1] for r in job.rows]):
                yield event
            async for u in job.updates():
                completion_tokens += u.token_id is not None
                for event in protocol.stream_update(head, u.key[1], u.text, u.finish_reason):
                    yield event
            if include_usage:
                yield protocol.stream_event(head, [], usage=protocol.usage(prompt_tokens, completion_tokens))
        except APIError as err:
            yield protocol.stream_error(err)
        finally:  # also on client disconnect: the response task is cancelled and lands here
            job.release()
        yield protocol.STREAM_END

    # -- scoring (echo, logprobs) ---------------------------------------------------------------
    async def _scored_completion(self, request: Request, req: CompletionRequest):
        """``echo`` and/or ``logprobs``: the prompt's scores (computed on the decode thread, a paced chunk at a
        time) and the new tokens'."""
        if req.max_tokens == 0:  # the prompt's scores only: no job, the place held while scoring
            async with self.admission.admitted(req) as prompts:
                scores = await unless_gone(request, self._score(prompts, req.logprobs))
            rows = {p * req.n + c: Collected(finish="length") for p in range(len(prompts)) for c in range(req.n)}
        else:
            job = await self.admit(req)
            try:
                prompts = job.prompts
                scores = await unless_gone(request, self._score(prompts, req.logprobs)) if req.echo else None
                rows = await unless_gone(request, job.collect())
            finally:
                job.release()
        # Thousands of tokens with their alternatives to decode and serialize: off the event loop, which
        # meanwhile sends the other clients' streamed tokens.
        body = await asyncio.to_thread(self._scored_body, req, prompts, scores, rows)
        return Response(body, media_type="application/json")

    async def _score(self, prompts: list[list[int]], k: int | None) -> list[tuple[list, list]]:
        if k is None:
            return [([None] * len(p), [None] * len(p)) for p in prompts]
        scorer = PromptScorer(self.llm.model, prompts, k, chunk=self.cfg.prefill_chunk or None)
        return await asyncio.wrap_future(self.scheduler.score(scorer))  # cancelled with it: the work is dropped

    def _scored_body(self, req: CompletionRequest, prompts: list[list[int]], scores,
                     rows: dict[int, Collected]) -> bytes:
        head = ResponseHead.new(self.cfg.model_name, chat=False)
        text_of = protocol.TokenTexts(self.llm.decode)
        choices = []
        for i in sorted(rows):
            row, ids = rows[i], prompts[i // req.n]
            text, tokens, lps, tops = "".join(row.texts), row.ids, row.logprobs, row.tops
            if req.echo:
                prompt = req.prompts[i // req.n]
                text = (prompt if isinstance(prompt, str) else self.llm.decode(ids)) + text
                tokens, lps, tops = ids + tokens, scores[i // req.n][0] + lps, scores[i // req.n][1] + tops
            logprobs = None if req.logprobs is None else protocol.logprobs_body(tokens, lps, tops, text_of)
            choices.append(protocol.choice(head, i, text, row.finish, logprobs))
        generated = sum(len(r.ids) for r in rows.values())
        return protocol.response_bytes(head, choices, protocol.usage(sum(len(p) for p in prompts), generated))

    # -- stopping -------------------------------------------------------------------------------
    def drain(self) -> None:
        """SIGTERM: refuse new requests; running rows get ``shutdown_grace`` seconds to finish, then are cut."""
        self.admission.draining = True
        if self.loop is not None:  # called from a signal handler: schedule on the event loop's own thread
            self.loop.call_soon_threadsafe(self.loop.call_later, self.cfg.shutdown_grace, self._end_all)

    def _end_all(self) -> None:
        self.jobs.fail_unfinished(f"the server is shutting down: generation was cut after the "
                                  f"{self.cfg.shutdown_grace:g} s grace")


def _check_key(request: Request, key: str) -> None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given or not hmac.compare_digest(given.encode(), key.encode()):
        msg = "Incorrect API key provided" if given else "Missing API key: send the header 'Authorization: Bearer YOUR_KEY'"
        raise APIError(401, msg, code="invalid_api_key")


def _error(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def create_app(llm: LLM, cfg: ServeConfig) -> FastAPI:
    """The FastAPI app; the decode thread runs while the app is being served (lifespan)."""
    from contextlib import asynccontextmanager

    from starlette.exceptions import HTTPException

    server = Server(llm, cfg)
    key = server.cfg.api_key
    routes = server.routes()
    labels = {r.path for r in routes}

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

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return _error(err)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, err: ClientGone):
        return Response(status_code=499)  # nobody reads it; answering keeps the log free of a traceback

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return _error(APIError(err.status_code, f"{request.method} {request.url.path}: {err.detail}", code=code))

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        try:
            if not key:  # (ServeConfig refuses an empty key; should one get here, it must not turn checks off)
                check_local_request(request, server.cfg.host, server.cfg.allow_origin)
            elif path.startswith("/v1") or path == "/metrics":
                _check_key(request, key)
            response = await call_next(request)
        except APIError as err:
            response = _error(err)
        if server.metrics is not None:
            server.metrics.requests.labels(path if path in labels else "other", str(response.status_code)).inc()
        return response

    if cfg.allow_origin:  # the sites the user named may read answers too (they need CORS headers for that)
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.allow_origin, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    for r in routes:
        app.add_api_route(r.path, r.handler, methods=[r.method], include_in_schema=r.in_schema)
    return app


def bind(host: str, port: int) -> socket.socket:
    """The server's address, taken before the model loads: a busy port is a one-line error in a second, not
    one after the model loaded and the banner said it was serving. Not yet listening (uvicorn starts that)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ValueError(f"host={host!r} is not an address of this machine ({err.strerror}): use e.g. 127.0.0.1 "
                         "or 0.0.0.0") from None
    family, _, proto, _, address = next((i for i in infos if i[0] == socket.AF_INET), infos[0])
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only then. Without it every
    # response on a kept-alive connection waited 40 ms for the client's delayed ACK (Nagle), streams too.
    sock = socket.socket(family, socket.SOCK_STREAM, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a just-closed port is free
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {err.strerror or err}; stop what uses port {port} or "
                      "choose another --port") from None
    return sock


def on_a_passing_thread(work: Callable[[], T]) -> T:
    """``work()`` on a thread that then ends; its result (or its exception).

    The OpenMP threads a thread's torch work starts live as long as that thread. Left on the main thread (the
    event loop's) they share the cores with the decode thread's own, and OpenMP then stops spinning between
    parallel regions as it does on an oversubscribed machine: batch-1 decoding measured 25-30 % slower. The
    decode thread should be the only one holding OpenMP threads while the server runs.
    """
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = work()
        except BaseException as err:  # re-raised on the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, name="mpt-setup", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def warm_up(llm: LLM, cfg: ServeConfig) -> None:
    """Decode a few tokens at every row bucket the batch can reach, before the port listens: a compiled decode
    step compiles its shapes here (seconds per batch size on CPU), not in the first clients' requests, and oneDNN
    builds its kernels for them (CUDA graphs are recorded again on the decode thread: quick, beside the compile).
    The server answers /health only once this is done."""
    from ..model.decode import row_bucket
    from .sampling import SamplingParams

    sizes = sorted({min(row_bucket(n), cfg.max_batch_size) for n in range(1, cfg.max_batch_size + 1)})
    print(f"warming up: {len(sizes)} batch sizes ({', '.join(map(str, sizes))} rows)", end="", flush=True)
    start, engine = time.perf_counter(), llm.engine(serve_compiles(cfg.compile))
    for rows in sizes:
        for _ in run(engine, llm.requests([[llm.stop_token_ids[0] if llm.stop_token_ids else 0] * 4] * rows,
                                         SamplingParams(max_new_tokens=3)), rows):
            pass
        print(".", end="", flush=True)
    print(f" {time.perf_counter() - start:.1f} s", flush=True)


def serve(cfg: ServeConfig) -> None:
    """Take the port, load the model, then serve until interrupted."""
    from ..model.load import inference_dtype
    from .api import load

    cfg.validate()
    dtype = inference_dtype(cfg.dtype, cfg.device)  # bf16 on a CPU without it: refused before the port is taken
    name = str(dtype).removeprefix("torch.")
    weights = f"{cfg.quantize} weights, {name} activations" if cfg.quantize else f"{name} weights"
    check_uvicorn()  # before the model loads: a uvicorn the header timeout cannot use is a one-line error
    sock = bind(cfg.host, cfg.port)
    try:
        llm = on_a_passing_thread(lambda: load(
            cfg.model, tokenizer=cfg.tokenizer, device=cfg.device, dtype=dtype, quantize=cfg.quantize))
        app = create_app(llm, cfg)
        on_a_passing_thread(lambda: warm_up(llm, cfg))
    except BaseException:
        sock.close()
        raise
    port = sock.getsockname()[1]  # --port 0: the one the system chose
    base = f"http://{cfg.host}:{port}"

    def banner() -> None:
        key = "required" if cfg.api_key else "not required"
        print(f"serving '{cfg.model_name}' at {base}/v1 (OpenAI API; key {key}), chat page at {base}/ ; context "
              f"{cfg.context_length} tokens, batch {cfg.max_batch_size}, {weights}", flush=True)
        warning = cfg.exposure_warning()
        if warning:
            print(warning, file=sys.stderr, flush=True)

    uvicorn_server(app, cfg.host, port, cfg.log_level, on_listen=banner).run(sockets=[sock])
