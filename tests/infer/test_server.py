"""The OpenAI-compatible server through the official `openai` client, on a real loopback port; its schema
pages, --compile, and int8 weights."""

import httpx
import openai
import pytest
import torch

from mpt.infer.chat import Message, render

from .conftest import RunningServer

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")


def chat_reference(llm, messages, n):
    prompt = render([Message(m["role"], m["content"]) for m in messages], llm.tokenizer)
    return llm.generate(prompt, max_new_tokens=n, stop=["<|im_end|>"])


def test_models_and_health(server):
    assert [m.id for m in server.client().models.list().data] == ["tiny"]
    health = httpx.get(server.url + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["model"] == "tiny"


def test_completion_equals_generate(server, llm):
    r = server.client().completions.create(model="tiny", prompt="Hello world", max_tokens=12, temperature=0)
    ref = llm.generate("Hello world", max_new_tokens=12)
    assert r.choices[0].text == ref.text and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(llm.encode("Hello world")), 12)
    assert r.object == "text_completion" and r.model == "tiny"


def test_completion_prompt_list_and_stream(server, llm):
    prompts = ["The quick brown fox", "MPT"]
    r = server.client().completions.create(model="tiny", prompt=prompts, max_tokens=9, temperature=0)
    refs = llm.generate(prompts, max_new_tokens=9)
    assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == [x.text for x in refs]
    stream = server.client().completions.create(model="tiny", prompt=prompts, max_tokens=9, temperature=0,
                                                stream=True)
    texts, finish = ["", ""], [None, None]
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.text
            finish[c.index] = c.finish_reason or finish[c.index]
    assert texts == [x.text for x in refs] and finish == ["length", "length"]


def test_chat_equals_generate_on_the_rendered_template(server, llm):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    ref = chat_reference(llm, messages, 14)
    r = server.client().chat.completions.create(model="tiny", messages=messages, max_tokens=14, temperature=0)
    assert r.choices[0].message.content == ref.text and r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens == len(ref.token_ids) and r.object == "chat.completion"
    assert r.usage.prompt_tokens == len(llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                                           return_dict=False))


def test_chat_stream_chunks(server, llm):
    messages = [{"role": "user", "content": "Tell me about the fox"}]
    ref = chat_reference(llm, messages, 10)
    chunks = list(server.client().chat.completions.create(model="tiny", messages=messages, max_tokens=10,
                                                          temperature=0, stream=True,
                                                          stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == ref.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ref.token_ids)


def test_sse_wire_format_ends_with_done(server):
    body = {"model": "tiny", "prompt": "Hi", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30,
                      headers={"Authorization": "Bearer test-key"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_stop_seed_and_n(server, llm):
    c = server.client()
    full = llm.generate("Hello world", max_new_tokens=20).text
    r = c.completions.create(model="tiny", prompt="Hello world", max_tokens=20, temperature=0, stop=[full[6:9]])
    assert r.choices[0].text == full[:full.index(full[6:9])] and r.choices[0].finish_reason == "stop"
    kw = dict(model="tiny", prompt="The quick", max_tokens=12, temperature=1.0, n=3, seed=5)
    a, b = c.completions.create(**kw), c.completions.create(**kw)
    assert [x.text for x in a.choices] == [x.text for x in b.choices] and len(a.choices) == 3
    assert len({x.text for x in a.choices}) > 1  # each choice samples with its own seed
    # choice i uses seed + i, like llm.generate's prompt i
    assert a.choices[1].text == llm.generate(["The quick"] * 2, max_new_tokens=12, temperature=1.0, seed=5)[1].text


def test_api_key_is_required(server):
    with pytest.raises(openai.AuthenticationError) as err:
        server.client(key="wrong").completions.create(model="tiny", prompt="Hi", max_tokens=2)
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    r = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "Hi"}, timeout=10)
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]["message"]
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # health needs no key


@pytest.mark.parametrize("kw,param,code", [
    (dict(model="nope"), "model", "model_not_found"),
    (dict(max_tokens=0), "max_tokens", None),
    (dict(max_tokens=2048), "max_tokens", None),
    (dict(max_tokens=2040, prompt="Hello world " * 5), "max_tokens", "context_length_exceeded"),
    (dict(prompt="fox " * 2100), "prompt", "context_length_exceeded"),
    (dict(n=5), "n", None),
    (dict(temperature=-0.1), "temperature", None),
    (dict(top_p=0), "top_p", None),
    (dict(presence_penalty=1.0), None, None),
    (dict(extra_body={"logit_bias": {"fox": 5}}), "logit_bias", None),
    (dict(logit_bias={"1000000000": 5}), "logit_bias", "invalid_token_id"),
    (dict(logit_bias={"3": 100.5}), "logit_bias", None),
    (dict(logit_bias={str(i): 1 for i in range(301)}), "logit_bias", None),
    (dict(best_of=2), "best_of", None),
    (dict(extra_body={"response_format": {"type": "json_object"}}), "response_format", None),
])
def test_bad_requests_are_4xx_with_openai_errors(server, kw, param, code):
    args = {"model": "tiny", "prompt": "Hello", "max_tokens": 4, **kw}
    with pytest.raises(openai.APIStatusError) as err:
        server.client().completions.create(**args)
    assert 400 <= err.value.status_code < 500
    assert err.value.body["param"] == param and err.value.body["code"] == code
    assert err.value.body["message"] and err.value.body["type"] == "invalid_request_error"
    assert server.client().completions.create(model="tiny", prompt="Hi", max_tokens=2).choices  # still serving


def test_logit_bias_moves_the_scores_it_names(server, llm):
    """+100 on one token makes greedy decoding repeat it; -100 on the greedy choice leaves the runner-up,
    taken from the model's own scores."""

    ids = llm.encode("Hello world")
    with torch.no_grad():
        top2 = llm.model(torch.tensor([ids])).logits[0, -1].topk(2).indices.tolist()
    c = server.client()
    banned = c.completions.create(model="tiny", prompt="Hello world", max_tokens=1, temperature=0,
                                  logit_bias={str(top2[0]): -100})
    assert banned.choices[0].text == llm.decode([top2[1]])
    assert llm.generate("Hello world", max_new_tokens=1).text == llm.decode([top2[0]])  # the bias did it
    forced = llm.encode(" fox")[0]
    r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                  temperature=0, logit_bias={str(forced): 100})
    assert r.choices[0].message.content == llm.decode([forced] * 5)


def test_chat_functions_are_refused_not_ignored(server):
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=2, functions=[{"name": "f", "parameters": {}}])
    assert err.value.body["param"] == "functions"


def test_missing_messages_and_bad_roles(server):
    c = server.client()
    with pytest.raises(openai.BadRequestError, match="messages"):
        c.chat.completions.create(model="tiny", messages=[], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="role"):
        c.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "x"}], max_tokens=2)


def test_web_page_is_served(server):
    r = httpx.get(server.url + "/", timeout=10)
    assert r.status_code == 200 and "<html" in r.text.lower()


def test_server_with_int8_weights(llm8):
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")

    s = RunningServer(llm8, api_key="k", max_batch_size=4)
    try:
        client = s.client("k")
        out = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=10, temperature=0)
        assert out.choices[0].text == llm8.generate("The quick brown fox", max_new_tokens=10).text
        chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=5, temperature=0)
        assert chat.choices[0].finish_reason in ("stop", "length")
    finally:
        s.close()


@pytest.mark.parametrize("mode,compiled", [("auto", True), ("on", True), ("off", False)])
def test_serve_compile_mode_reaches_the_engine(llm, mode, compiled):
    """--compile: a server compiles its decode steps with auto (on CPU too) and on, never with off."""
    from mpt.infer.server import ServeConfig, create_app

    app = create_app(llm, ServeConfig(model="tiny", compile=mode))
    assert (app.state.server.scheduler.engine.decoder is not None) is compiled


def test_a_compiled_server_answers_with_the_eager_text(llm):
    """The compiled decode step runs (and compiles) on the server's decode thread over the prepacked weights
    `mpt serve --compile on` loads: the eager model's greedy text."""

    s = RunningServer(llm, compile="on", context_length=256)
    try:
        for prompt in ("Hello world", "The quick brown fox"):
            r = s.client().completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0)
            assert r.choices[0].text == llm.generate(prompt, max_new_tokens=8).text
        assert s.state.scheduler.engine.decoder is not None
    finally:
        s.close()


def test_schema_pages_are_off_when_a_key_is_set(server, open_server):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(server.url + path, headers={"Authorization": "Bearer test-key"}).status_code == 404, path
    assert httpx.get(open_server.url + "/openapi.json").json()["info"]["title"] == "mpt serve"


def test_accepted_connections_send_at_once():
    """The socket `bind` takes gives connections with TCP_NODELAY once asyncio serves it (as uvicorn does):
    without, a kept-alive connection's response waited 40 ms for the client's delayed ACK (Nagle's rule)."""
    import asyncio
    import socket

    from mpt.infer.server import bind

    async def nodelay_of_an_accepted_connection() -> int:
        accepted = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        sock = bind("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        try:
            return await asyncio.wait_for(accepted, 10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(nodelay_of_an_accepted_connection()) != 0
