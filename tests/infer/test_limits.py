"""Limits checked before work: capacity before tokenizing, body time, quiet disconnects, the schema pages,
and a server without an API key answering only to local JSON requests. Innocents stream beside each probe."""

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


@pytest.fixture(scope="module")
def open_server(llm):
    """No API key: the local-only rules apply. body_timeout is short so a trickling upload is cut quickly."""
    s = RunningServer(llm, context_length=4096, max_concurrent=8, body_timeout=0.5)
    yield s
    s.close()


def test_capacity_is_checked_before_the_prompt_is_tokenized(llm):
    """A full server answers 429 to a prompt too long for the context: it never tokenized it to find out."""
    s = RunningServer(llm, max_concurrent=1, context_length=2048)
    try:
        # Under the character limit (so only tokenizing can tell), over the context in tokens.
        long_prompt = {"model": "tiny", "prompt": "Hello world! " * 1000, "max_tokens": 4}
        with Innocents(s, n=1, max_tokens=300) as innocents:
            r = httpx.post(s.url + "/v1/completions", json=long_prompt, timeout=60)
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded", r.text
            assert innocents.running()
        assert s.wait_idle()
        r = httpx.post(s.url + "/v1/completions", json=long_prompt, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
        assert "tokens; the prompt has" in r.json()["error"]["message"]
    finally:
        s.close()


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


def test_schema_pages_are_off_when_a_key_is_set(server, open_server):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(server.url + path, headers={"Authorization": "Bearer test-key"}).status_code == 404, path
    assert httpx.get(open_server.url + "/openapi.json").json()["info"]["title"] == "mpt serve"


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
