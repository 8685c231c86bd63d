"""`mpt serve` as a user runs it: a separate process on a loopback port, driven by the openai client, and
SIGTERM draining it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from mpt.infer.server import ServeConfig

from .conftest import free_port

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")


def test_mpt_serve_command(checkpoint, llm):
    from openai import OpenAI

    exe = shutil.which("mpt")
    assert exe, "the `mpt` console script is not installed"
    port = free_port()
    proc = subprocess.Popen([exe, "serve", str(checkpoint), "--port", str(port), "--model-name", "tiny",
                             "--api-key", "s3cret", "--max-tokens", "16", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="s3cret", max_retries=0, timeout=30)
        deadline = time.monotonic() + 90
        while True:
            try:
                assert [m.id for m in client.models.list().data] == ["tiny"]
                break
            except AssertionError:
                raise
            except Exception:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "mpt serve did not answer within 90 s"
                time.sleep(0.3)
        stream = client.completions.create(model="tiny", prompt="Hello world", max_tokens=10, temperature=0,
                                           stream=True)
        assert "".join(c.choices[0].text for c in stream) == llm.generate("Hello world", max_new_tokens=10).text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out = proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
    assert "serving 'tiny' at http://127.0.0.1" in out and "key required" in out
    # warmed up at every batch size the default batch (16 rows) reaches, before the port listened
    assert out.index("warming up: 5 batch sizes (1, 2, 4, 8, 16 rows).....") < out.index("serving 'tiny'")


def run_serve(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([shutil.which("mpt"), "serve", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc, time.monotonic() - start


def test_a_busy_port_is_a_one_line_error_before_the_model_loads():
    """The port is taken first: the model named here does not exist, and what the user hears is the port."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc, took = run_serve("/nonexistent/model", "--port", str(port))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"mpt serve: error: cannot listen on 127.0.0.1:{port}: Address already in "
                                        f"use; stop what uses port {port} or choose another --port"]
    assert "serving" not in proc.stdout and took < 60  # (the time is importing torch and the web stack)


def test_the_banner_comes_once_the_server_listens(llm):
    """``on_listen`` (the banner) runs once connections are accepted on the port taken before the model loaded."""
    import socket
    import threading

    from mpt.infer.server import bind, create_app, uvicorn_server

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):  # taken, not yet listening: nobody is told to connect yet
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    connected = []

    def on_listen():
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            connected.append(True)

    server = uvicorn_server(create_app(llm, ServeConfig(model="tiny")), "127.0.0.1", port, "warning", on_listen)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    server.should_exit = True
    thread.join(timeout=15)
    assert connected == [True]


def stream(port: int, max_tokens: int, events: list, started: threading.Event) -> None:
    # "MPT is": the tiny model writes no end-of-text for thousands of greedy tokens, so only the cut ends it
    body = {"model": "tiny", "prompt": "MPT is", "max_tokens": max_tokens, "temperature": 0, "stream": True}
    try:
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                    started.set()
    except Exception as err:  # checked by the test
        events.append(repr(err))
    finally:
        started.set()


def test_sigterm_finishes_short_rows_and_cuts_long_ones_with_a_final_event(checkpoint):
    port = free_port()
    code = ("import sys; from mpt.infer.server import ServeConfig, serve; serve(ServeConfig(model=sys.argv[1], "
            "port=int(sys.argv[2]), model_name='tiny', device='cpu', context_length=8192, shutdown_grace=2))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(checkpoint), str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        runs = {"short": 10, "long": 6000}
        events = {name: [] for name in runs}
        started = {name: threading.Event() for name in runs}
        threads = [threading.Thread(target=stream, args=(port, n, events[name], started[name]))
                   for name, n in runs.items()]
        for t in threads:
            t.start()
        for e in started.values():
            assert e.wait(60)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    short = [json.loads(e) for e in events["short"][:-1]]
    assert events["short"][-1] == "[DONE]" and short[-1]["choices"][0]["finish_reason"] == "length", events["short"]
    long = events["long"]
    assert long[-1] == "[DONE]", long[-3:]
    assert json.loads(long[-2])["error"]["code"] == "server_shutting_down", long[-3:]
    assert not any('"error"' in e for e in long[:-2])
    assert "Traceback" not in out, out
