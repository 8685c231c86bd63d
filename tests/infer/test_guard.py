"""Checks before the server works for a request: a body that trickles gets 408, a client gone mid-upload
leaves no traceback, and a server without an API key answers only to local JSON requests (or a named origin).
Innocents stream beside each probe."""

import logging
import socket
import time

import httpx
import pytest

from .conftest import RunningServer
from .innocents import Innocents

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")


def raw(port: int, data: bytes, close: bool = False) -> bytes:
    """Send ``data`` on a fresh connection; read the answer unless we hang up first (a client gone mid-upload)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        if close:
            return b""
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def partial_upload(port: int, key: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{auth}"
            "Connection: close\r\nContent-Length: 1000\r\n\r\n").encode() + b'{"model": "tiny", "prompt": "'


def test_a_body_that_trickles_gets_408(open_server):
    with Innocents(open_server, max_tokens=600) as innocents:  # decoding for longer than the body timeout
        answer = raw(open_server.port, partial_upload(open_server.port)).decode()
        assert answer.startswith("HTTP/1.1 408") and '"code":"request_timeout"' in answer.replace(" ", ""), answer
        assert innocents.running()


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_a_client_gone_mid_upload_leaves_no_traceback(server):
    records = Records()
    logging.getLogger("uvicorn.error").addHandler(records)
    try:
        gone = server.state.metrics.requests.labels("/v1/completions", "499")
        before = gone._value.get()
        with Innocents(server, key="test-key") as innocents:
            raw(server.port, partial_upload(server.port, key="test-key"), close=True)
            deadline = time.monotonic() + 20
            while gone._value.get() == before:  # the server noticed the client left and answered nobody
                assert time.monotonic() < deadline, "the disconnect was never handled"
                time.sleep(0.05)
            assert innocents.running()
    finally:
        logging.getLogger("uvicorn.error").removeHandler(records)
    assert not [r.getMessage() for r in records.records if r.levelno >= logging.ERROR]


def post(url: str, headers: dict, body: bytes = b'{"model": "tiny", "prompt": "Hi", "max_tokens": 2}'):
    return httpx.post(url + "/v1/completions", content=body, headers=headers, timeout=30)


def test_without_a_key_only_local_json_requests_are_served(open_server):
    url, port = open_server.url, open_server.port
    json_type = {"Content-Type": "application/json"}
    with Innocents(open_server) as innocents:
        # A web page can send text/plain without a CORS preflight: refused.
        r = post(url, {"Content-Type": "text/plain"})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text
        assert post(url, {}).status_code == 415
        r = post(url, {**json_type, "Origin": "http://evil.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin", r.text
        assert "http://evil.example" in r.json()["error"]["message"]
        # DNS rebinding: a foreign name that resolves to 127.0.0.1
        r = post(url, {**json_type, "Host": f"evil.example:{port}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_host", r.text
        r = httpx.get(url + "/health", headers={"Host": "evil.example"})
        assert r.status_code == 403
        assert innocents.running()
    # the server's own page, and clients that send no Origin, are served
    assert post(url, {**json_type, "Origin": f"http://127.0.0.1:{port}"}).status_code == 200
    assert post(url, {**json_type, "Host": f"localhost:{port}"}).status_code == 200
    assert post(url, json_type).json()["choices"]


def test_allow_origin_admits_the_named_site(llm):
    s = RunningServer(llm, allow_origin=["http://app.example:3000/"])
    try:
        headers = {"Content-Type": "application/json", "Origin": "http://app.example:3000"}
        r = post(s.url, headers)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example:3000"
        assert post(s.url, {**headers, "Host": "app.example:3000"}).status_code == 200
        assert post(s.url, {**headers, "Origin": "http://other.example:3000"}).status_code == 403
    finally:
        s.close()
