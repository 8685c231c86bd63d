"""Checks a request passes before the server does any work for it.

Bytes before parsing: a body is read up to a size cap and a time limit, so a huge or a trickling
upload costs neither memory nor a handler forever. With no API key set, the server is meant for
this machine only, yet any web page the user visits can make the browser send it requests (a
"simple" ``text/plain`` POST needs no CORS preflight, and DNS rebinding makes a foreign name point
at 127.0.0.1). So without a key: POST bodies must be ``application/json`` (which forces a
preflight we do not answer), a browser's ``Origin`` must be this server itself or one the user
allowed, and a loopback-bound server answers only to loopback host names.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from starlette.requests import ClientDisconnect, Request

from .protocol import APIError
from .serve_config import LOOPBACK_NAMES


class ClientGone(Exception):
    """The client closed the connection before its request was complete: nobody is left to answer."""


async def read_body(request: Request, max_bytes: int, timeout: float) -> bytes:
    """The request body, refused (413) past ``max_bytes`` without reading the rest, and (408) past ``timeout``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(size, max_bytes)
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise APIError(408, f"the request body did not arrive within {timeout:g} s", code="request_timeout") from None
    except ClientDisconnect:
        raise ClientGone from None


def _too_large(size: int, max_bytes: int) -> APIError:
    return APIError(413, f"the request body has {size} or more bytes; this server accepts at most {max_bytes} "
                         "(--max-body-bytes)", code="request_too_large")


def _host_name(netloc: str) -> str:
    return (urlsplit("//" + netloc).hostname or "").lower()


def check_local_request(request: Request, bind_host: str, allowed_origins: list[str]) -> None:
    """The rules for a server without an API key (see the module docstring); raises 403 or 415."""
    host = request.headers.get("host", "")
    if bind_host in LOOPBACK_NAMES:
        allowed = LOOPBACK_NAMES | {_host_name(urlsplit(o).netloc) for o in allowed_origins}
        if _host_name(host) not in allowed:
            raise APIError(403, f"Host '{host}' is not this machine: a server without an API key answers only "
                                "to localhost (name the site with --allow-origin, or set --api-key)",
                           code="forbidden_host", type="permission_error")
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != host and origin.rstrip("/") not in allowed_origins:
        raise APIError(403, f"Origin '{origin}' is not allowed: a server without an API key accepts browser "
                            "requests only from its own page (allow a site with --allow-origin, or set --api-key)",
                       code="forbidden_origin", type="permission_error")
    if request.method == "POST":
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            raise APIError(415, f"Content-Type '{media_type or '(none)'}' is not accepted: send "
                                "'Content-Type: application/json'", code="unsupported_media_type")
