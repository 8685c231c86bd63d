"""Connection limits: the one uvicorn internal the header timeout reads is still there (and its absence is
said plainly), and slow clients cannot hold sockets: real sockets that send their headers slowly (or nothing)
are cut off after ``header_timeout`` with a 408, while innocent requests are served."""

import socket
import threading
import time

import httpx
import pytest

from .conftest import RunningServer
from .innocents import Innocents

pytest.importorskip("uvicorn", reason="needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")


def test_this_uvicorn_has_what_the_header_timeout_reads():
    from mpt.infer.connections import check_uvicorn

    check_uvicorn()


def test_a_uvicorn_without_it_fails_loudly_naming_the_fix(monkeypatch):
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from mpt.infer.connections import check_uvicorn

    built = H11Protocol.__init__

    def without_conn(self, *args, **kwargs):
        built(self, *args, **kwargs)
        self.h11_connection = self.__dict__.pop("conn")  # as if a release renamed it

    monkeypatch.setattr(H11Protocol, "__init__", without_conn)
    with pytest.raises(RuntimeError, match=r"no longer keeps its h11.Connection in `conn`.*pyproject.toml"):
        check_uvicorn()


TIMEOUT = 1.0  # the servers' header_timeout here


CUT_WITHIN = TIMEOUT + 3.0  # generous: the event loop shares two busy cores with the decode thread


@pytest.fixture(scope="module")
def slow_server(llm):
    s = RunningServer(llm, header_timeout=TIMEOUT, max_connections=8, context_length=4096)
    yield s
    s.close()


def trickle(port: int, lines: list[bytes], every: float = 0.2, give_up: float = 15.0) -> tuple[float, bytes]:
    """Send ``lines`` one by one, ``every`` seconds apart, then keep sending a header line that never ends
    the headers; return (seconds until the server closed the socket, what it sent). Never ends the headers."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.settimeout(every)
        i = 0
        while time.monotonic() - start < give_up:
            line = lines[i] if i < len(lines) else b"X-Slow: %d\r\n" % i
            i += 1
            try:
                sock.sendall(line)
                got = sock.recv(65536)
            except TimeoutError:
                continue  # still open: the server waits
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start, b""
            rest = got
            while got:
                try:
                    got = sock.recv(65536)
                except (TimeoutError, ConnectionResetError):
                    break
                rest += got
            return time.monotonic() - start, rest
    return float("inf"), b""


def test_headers_sent_slowly_are_cut_off_while_innocents_are_served(slow_server):
    port = slow_server.port
    start_line = [b"POST /v1/completions HTTP/1.1\r\n", b"Host: 127.0.0.1:%d\r\n" % port]
    results = [None] * 3
    with Innocents(slow_server, n=2, max_tokens=200) as innocents:
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, trickle(port, start_line)))
                   for i in range(3)]
        for t in threads:
            t.start()
        # An innocent that arrives while the slow sockets are open is served.
        r = httpx.post(slow_server.url + "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 3},
                       timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3, r.text
        for t in threads:
            t.join(timeout=30)
        assert innocents.running() or all(out.get("status") == 200 for out in innocents.results)
    for took, answer in results:
        assert TIMEOUT * 0.9 <= took <= CUT_WITHIN, took
        assert answer.startswith(b"HTTP/1.1 408") and b'"code": "request_timeout"' in answer, answer


def test_a_connection_that_sends_nothing_is_closed(slow_server):
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=30) as sock:
        answer = sock.recv(65536)
        while chunk := sock.recv(65536):
            answer += chunk
    assert time.monotonic() - start <= CUT_WITHIN and answer.startswith(b"HTTP/1.1 408"), answer


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_a_kept_alive_connection_that_starts_a_request_and_stalls_is_closed(slow_server):
    """uvicorn's keep-alive timer stops at the next request's first byte; ours then starts."""
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")  # and nothing more
        start = time.monotonic()
        answer = sock.recv(65536)
        while chunk := sock.recv(65536):
            answer += chunk
    assert time.monotonic() - start <= CUT_WITHIN and answer.startswith(b"HTTP/1.1 408"), answer


def test_sockets_held_up_to_the_connection_limit_are_freed(llm):
    s = RunningServer(llm, header_timeout=TIMEOUT, max_connections=4)
    try:
        held = [socket.create_connection(("127.0.0.1", s.port), timeout=30) for _ in range(4)]
        for sock in held:
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # headers never finished
        time.sleep(0.2)
        # The limit is reached: refused with OpenAI's error body (it counts open connections)...
        refused = httpx.get(s.url + "/health", timeout=30)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "too_many_connections"
        # ... until the header timeout frees the held sockets.
        deadline = time.monotonic() + CUT_WITHIN
        while httpx.get(s.url + "/health", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "the held sockets were never freed"
            time.sleep(0.2)
        for sock in held:
            assert sock.recv(65536).startswith(b"HTTP/1.1 408")
            sock.close()
    finally:
        s.close()
