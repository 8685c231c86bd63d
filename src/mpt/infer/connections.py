"""uvicorn for the app, with the limits on connections that an ASGI app cannot set itself.

A request's headers must arrive within ``header_timeout``, else 408 and the socket closes: uvicorn
times out only idle keep-alive connections, so a client trickling header lines would hold a socket
forever, and ASGI sees a request only once its headers are complete. That takes a small subclass of
uvicorn's h11 protocol (:func:`header_timeout_protocol`), the one place that reads a uvicorn internal:
its h11 connection, ``conn`` (:func:`check_uvicorn` fails loudly if that changes; pyproject bounds
uvicorn). Open connections and running requests are capped by :class:`ConnectionLimit` (ASGI), which
answers with OpenAI's error body where uvicorn's own limit_concurrency answers in plain text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from .protocol import APIError


@dataclass
class Load:
    """What the connection limit counts: connections open (the protocol's count) and requests running."""

    connections: int = 0
    requests: int = 0


class ConnectionLimit:
    """ASGI middleware: past ``limit`` open connections or running requests, a 503 in OpenAI's error shape."""

    def __init__(self, app, load: Load, limit: int) -> None:
        self.app, self.load, self.limit = app, load, limit
        self.body = json.dumps(APIError(503, "the server has too many open connections; retry shortly (raise "
                                             "--max-connections if this is expected load)",
                                        code="too_many_connections").body()).encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        load = self.load
        if load.connections > self.limit or load.requests >= self.limit:  # (this connection is counted already)
            logging.getLogger("mpt.serve").warning("refused a request: %d connections open, %d requests running "
                                                   "(limit %d)", load.connections, load.requests, self.limit)
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"connection", b"close"),
                (b"content-length", str(len(self.body)).encode()), (b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": self.body})
            return
        load.requests += 1
        try:
            await self.app(scope, receive, send)
        finally:
            load.requests -= 1


def _timeout_answer(seconds: float) -> bytes:
    body = json.dumps(APIError(408, f"the request headers did not arrive within {seconds:g} s",
                               code="request_timeout").body()).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body))


def header_timeout_protocol(seconds: float, load: Load) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, counting open connections into ``load`` and closing one whose request line
    and headers take over ``seconds``: the clock starts when a connection opens or a new request's first
    byte arrives (h11 is IDLE until a request's headers are complete), and stops when they are complete;
    the body has its own limit (guard.read_body)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    answer = _timeout_answer(seconds)

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _socket: asyncio.Transport

        def connection_made(self, transport) -> None:
            load.connections += 1
            self._socket = transport
            super().connection_made(transport)
            self._watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def connection_lost(self, exc) -> None:
            load.connections -= 1
            self._stop_clock()
            super().connection_lost(exc)

        def _waiting_for_headers(self) -> bool:
            return self.conn.their_state is h11.IDLE and not self._socket.is_closing()

        def _watch(self) -> None:
            if not self._waiting_for_headers():
                self._stop_clock()
            elif self._header_timer is None:
                self._header_timer = asyncio.get_running_loop().call_later(seconds, self._expired)

        def _stop_clock(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers():
                self._socket.write(answer)
                self._socket.close()

    return HeaderTimeoutProtocol


def check_uvicorn() -> None:
    """Fails loudly, naming the fix, when this uvicorn no longer has what :func:`header_timeout_protocol` reads."""
    import h11
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.server import ServerState

    async def built() -> H11Protocol:
        config = uvicorn.Config(lambda scope, receive, send: None, http="h11", ws="none", lifespan="off")
        return H11Protocol(config=config, server_state=ServerState(), app_state={})

    protocol = asyncio.run(built())
    conn = getattr(protocol, "conn", None)
    if not isinstance(conn, h11.Connection) or conn.their_state is not h11.IDLE:
        raise RuntimeError(f"uvicorn {uvicorn.__version__}'s H11Protocol no longer keeps its h11.Connection in "
                           f"`conn` (found {conn!r}): mpt.infer.connections.header_timeout_protocol reads it to tell "
                           "when a request's headers are complete. Install a uvicorn in the range pyproject.toml "
                           "names, or adapt header_timeout_protocol to this one.")


def uvicorn_server(app, host: str, port: int, log_level: str = "info", on_listen=None):
    """A uvicorn server with this app's limits, whose SIGTERM / Ctrl-C drains the running rows first.

    ``on_listen``: called once the server accepts connections (the banner)."""
    import uvicorn

    server = app.state.server
    cfg = server.cfg
    load = Load()

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            server.drain()
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if on_listen is not None and not self.should_exit:
                on_listen()

    config = uvicorn.Config(
        # Connections (and requests) past this get 503; with the header timeout, sockets held by slow clients
        # are freed within header_timeout seconds. (uvicorn's own limit_concurrency stays off: plain-text 503.)
        ConnectionLimit(app, load, cfg.max_connections or 2 * cfg.max_concurrent + 32),
        host=host, port=port, log_level=log_level,
        http=header_timeout_protocol(cfg.header_timeout, load),
        ws="none",  # an upgraded connection would leave the protocol without connection_lost: miscounted
        timeout_keep_alive=5,  # an idle keep-alive connection closes after this
        # uvicorn waits this long for open responses after SIGTERM; ours end at shutdown_grace, with a margin
        # for their final events to go out.
        timeout_graceful_shutdown=int(cfg.shutdown_grace) + 5,
        h11_max_incomplete_event_size=64 * 1024,  # request line and headers
    )
    return DrainingServer(config)
