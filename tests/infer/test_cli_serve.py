"""`mpt serve` as a user runs it: a separate process on a loopback port, driven by the openai client."""

import os
import shutil
import signal
import subprocess
import time

import pytest

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


@pytest.mark.parametrize("mode,compiled", [("auto", False), ("on", True), ("off", False)])
def test_serve_compile_mode_reaches_the_engine(llm, mode, compiled):
    """--compile: auto leaves a CPU engine eager, on compiles its decode steps, off never does."""
    from mpt.infer.server import ServeConfig, create_app

    app = create_app(llm, ServeConfig(model="tiny", compile=mode))
    assert (app.state.server.scheduler.engine.decoder is not None) is compiled


def test_a_compiled_server_answers_with_the_eager_text(llm):
    """The compiled decode step runs (and compiles) on the server's decode thread: same greedy text."""
    from .conftest import RunningServer

    s = RunningServer(llm, compile="on", context_length=256)
    try:
        for prompt in ("Hello world", "The quick brown fox"):
            r = s.client().completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0)
            assert r.choices[0].text == llm.generate(prompt, max_new_tokens=8).text
        assert s.state.scheduler.engine.decoder is not None
    finally:
        s.close()


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

    from mpt.infer.server import ServeConfig, bind, create_app, uvicorn_server

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
