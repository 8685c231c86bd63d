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
