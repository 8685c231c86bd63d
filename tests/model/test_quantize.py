"""int8 weights (``quantize="int8"``): logits close to float32, and greedy generation through the API,
``mpt generate --quantize int8`` and the server."""

import pytest
import torch

from mpt.model.quantize import Int8Embedding, Int8Linear, quantize_model, quantize_rows, weight_bytes
from tests.infer.conftest import INFER_FIELDS
from tests.tiny import tiny_model


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
    model = tiny_model(1, **INFER_FIELDS, tie_word_embeddings=tied)
    quant = quantize_model(tiny_model(1, **INFER_FIELDS, tie_word_embeddings=tied))
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
    quant = quantize_model(tiny_model(2, **INFER_FIELDS))
    ids = torch.randint(0, 416, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = quant(ids).logits[:, -1]
        out = quant(ids[:, :-1], use_cache=True)
        step = quant(ids[:, -1:], cache=out.past_key_values, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, full, atol=2e-4, rtol=1e-4)


def test_quantize_is_checked():
    from mpt.infer.serve_config import ServeConfig

    with pytest.raises(ValueError, match="quantize='int4' is invalid"):
        quantize_model(tiny_model(**INFER_FIELDS), "int4")
    with pytest.raises(ValueError, match="quantize='fp8' is invalid"):
        ServeConfig(model="x", quantize="fp8").validate()
