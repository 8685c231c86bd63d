"""int8 weights (``quantize="int8"``): logits close to float32, and greedy generation through the API,
``mpt generate --quantize int8`` and the server."""

import pytest
import torch

from mpt.model.quantize import Int8Embedding, Int8Linear, quantize_model, quantize_rows, weight_bytes

from .conftest import tiny_model


def test_rows_round_trip_within_half_a_step():
    w = torch.randn(64, 48) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different sizes
    w[5] = 0  # an all-zero row must not divide by zero
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (64,)
    step = scale[:, None]
    assert ((q.float() * step - w).abs() <= step / 2 + 1e-7).all()
    assert (q[5] == 0).all() and int(q.abs().max()) == 127


@pytest.mark.parametrize("tied", [True, False])
def test_int8_logits_close_to_float32(tied):
    # Why 6 %: each int8 rounding (weights per row, activations per token on CPU) adds a uniform error of
    # at most half a step, 1/254 of the row's largest value: about 0.8 % of a Gaussian row's rms. A token
    # meets about 12 of them on its way (embedding, 4 linears per block x 2 blocks, the head, twice per
    # matmul), which add up like random errors to ~3 % (measured 3.0-3.4 % on three seeds). A wrong
    # scale, a transposed weight or a skipped layer gives 30-100 %.
    model = tiny_model(1, tie_word_embeddings=tied)
    quant = quantize_model(tiny_model(1, tie_word_embeddings=tied))
    assert not any(isinstance(m, torch.nn.Linear) for m in quant.modules())
    assert isinstance(quant.lm_head, Int8Linear)
    assert isinstance(quant.transformer.wte, Int8Embedding) == tied
    ids = torch.randint(0, 416, (4, 48), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref, got = model(ids).logits, quant(ids).logits
    rel = float((got - ref).norm() / ref.norm())
    assert rel < 0.06, rel
    assert float((got.argmax(-1) == ref.argmax(-1)).float().mean()) > 0.85
    # The linear weights are int8, the rest stays float32: well under half the float32 bytes.
    assert weight_bytes(quant) < 0.4 * weight_bytes(model)


def test_int8_cache_path_matches_full_forward():
    """Decoding with the KV cache gives the logits of one full forward (the quantized layers are stateless)."""
    quant = quantize_model(tiny_model(2))
    ids = torch.randint(0, 416, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = quant(ids).logits[:, -1]
        out = quant(ids[:, :-1], use_cache=True)
        step = quant(ids[:, -1:], cache=out.past_key_values, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, full, atol=2e-4, rtol=1e-4)


def test_quantize_is_checked():
    from mpt.infer.serve_config import ServeConfig

    with pytest.raises(ValueError, match="quantize='int4' is invalid"):
        quantize_model(tiny_model(), "int4")
    with pytest.raises(ValueError, match="quantize='fp8' is invalid"):
        ServeConfig(model="x", quantize="fp8").validate()


@pytest.fixture(scope="module")
def llm8(checkpoint):
    from mpt import load

    return load(checkpoint, device="cpu", quantize="int8")


def test_load_int8_generates_greedily(llm8, llm):
    assert getattr(llm8.model, "quantized", None) == "int8"
    a = llm8.generate(["Hello world", "MPT is"], max_new_tokens=12)
    assert [len(c.token_ids) for c in a] == [12, 12]
    # Greedy is deterministic: the batch and the lone prompt agree (padding and cache merging are exact).
    assert llm8.generate("MPT is", max_new_tokens=12).token_ids == a[1].token_ids
    # The first greedy token is the float model's top choice unless that choice was a near tie.
    ids = llm.encode("MPT is")
    with torch.inference_mode():
        ref = llm.model(torch.tensor([ids])).logits[0, -1]
    top2 = ref.topk(2).values
    if float(top2[0] - top2[1]) > 0.2:
        assert a[1].token_ids[0] == int(ref.argmax())


def test_generate_command_int8(llm8, checkpoint, capsys):
    from mpt.cli import main

    assert main(["generate", str(checkpoint), "Hello world", "--max-new-tokens", "8", "--device", "cpu",
                 "--quantize", "int8"]) == 0
    out, err = capsys.readouterr()
    assert out == llm8.generate("Hello world", max_new_tokens=8).text + "\n"
    assert "tokens/s" in err
    with pytest.raises(SystemExit):
        main(["generate", str(checkpoint), "Hi", "--quantize", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_server_with_int8_weights(llm8):
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
    from .conftest import RunningServer

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


def test_chat_command_int8(checkpoint, capsys, monkeypatch):
    import io
    import sys

    import mpt.infer.api as api
    import mpt.infer.chat_repl as chat_repl
    from mpt.cli import main

    loaded = []
    real_load = api.load

    def load(*args, **kwargs):
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(api, "load", load)
    # run_chat's out/err defaults are the sys.stdout/stderr of its first import (another test's capture,
    # closed by now): pass this test's streams.
    real_chat = chat_repl.run_chat
    monkeypatch.setattr(chat_repl, "run_chat", lambda llm, cfg: real_chat(llm, cfg, out=sys.stdout, err=sys.stderr))
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\n/exit\n"))
    code = main(["chat", str(checkpoint), "--quantize", "int8", "--max-new-tokens", "6", "--device", "cpu"])
    assert code == 0, capsys.readouterr()
    assert getattr(loaded[0].model, "quantized", None) == "int8"
    assert "assistant> " in capsys.readouterr().out
