"""oneDNN-prepacked linear weights (``mpt.load``'s default on CPU): the same logits, greedy tokens and state
dict as the plain model, refused for training, and off where torch.compile is asked for; int8 models get
their int8 weights packed."""

import logging

import pytest
import torch

from mpt import MPTForCausalLM
from mpt.model.hf import save_pretrained
from mpt.model.load import cpu_has_bf16
from mpt.model.prepack import PackedLinear, can_prepack, prepack_model
from mpt.model.quantize import Int8Linear, quantize_model, weight_bytes
from tests.infer.conftest import INFER_FIELDS
from tests.model.helpers import count_packed_lookups
from tests.tiny import tiny_model

pytestmark = pytest.mark.skipif(not can_prepack(tiny_model(0)), reason="this torch build has no oneDNN prepacking")

IDS = torch.randint(0, 416, (3, 40), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("tied", [True, False])
def test_packed_logits_equal_the_plain_models_to_float32_rounding(tied):
    plain = tiny_model(2, **INFER_FIELDS, tie_word_embeddings=tied)
    packed = prepack_model(tiny_model(2, **INFER_FIELDS, tie_word_embeddings=tied))
    assert packed.prepacked and isinstance(packed.lm_head, PackedLinear)
    assert not any(isinstance(m, torch.nn.Linear) for m in packed.modules())
    assert isinstance(packed.transformer.wte, torch.nn.Embedding)  # the lookup keeps the plain table
    with torch.inference_mode():
        want = plain.double()(IDS).logits
        got = packed(IDS).logits.double()
        f32 = plain.float()(IDS).logits.double()
    # float32 summation order only: the packed model is as close to float64 as the plain float32 one
    assert float((got - want).abs().max()) < 4 * float((f32 - want).abs().max()) + 1e-6
    assert torch.equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bfloat16")
def test_packed_bfloat16_logits_stay_near_the_plain_bfloat16_ones():
    plain = tiny_model(3, **INFER_FIELDS).to(torch.bfloat16)
    packed = prepack_model(tiny_model(3, **INFER_FIELDS).to(torch.bfloat16))
    assert isinstance(packed.lm_head, PackedLinear)
    with torch.inference_mode():
        ref, got = tiny_model(3, **INFER_FIELDS)(IDS).logits, packed(IDS).logits.float()
        plain_err = float((plain(IDS).logits.float() - ref).norm() / ref.norm())
    assert float((got - ref).norm() / ref.norm()) < 2 * plain_err + 1e-3


def test_the_state_dict_is_the_plain_models_and_save_pretrained_round_trips(tmp_path):
    plain = tiny_model(4, **INFER_FIELDS)
    packed = prepack_model(tiny_model(4, **INFER_FIELDS))
    a, b = plain.state_dict(), packed.state_dict()
    assert a.keys() == b.keys()  # the tied head adds no key
    assert all(torch.equal(a[k], b[k]) for k in a)
    save_pretrained(packed, tmp_path / "m")
    again = MPTForCausalLM.from_pretrained(tmp_path / "m")
    assert all(torch.equal(a[k], v) for k, v in again.state_dict().items())
    fresh = prepack_model(tiny_model(5, **INFER_FIELDS))
    fresh.load_state_dict(a)  # repacks the loaded weights
    with torch.inference_mode():
        assert torch.equal(fresh(IDS).logits, packed(IDS).logits)


def test_training_a_packed_model_is_a_clear_error():
    packed = prepack_model(tiny_model(0, **INFER_FIELDS))
    x = packed.transformer.wte(IDS).detach().requires_grad_()
    with pytest.raises(RuntimeError, match="prepacked for CPU inference.*prepack=False"):
        packed.transformer.blocks[0].attn.Wqkv(x)


@pytest.mark.parametrize("tied", [True, False])
def test_int8_models_get_packed_int8_weights_with_the_same_logits(tied):
    """An int8 model's weights are packed for oneDNN's int8 matmul: each layer gives torch._int_mm's int32 sums,
    rescaled (float32 rounding apart), and the model's logits stay within a rounding flip of the plain ones."""
    plain = quantize_model(tiny_model(5, **INFER_FIELDS, tie_word_embeddings=tied))
    packed = prepack_model(quantize_model(tiny_model(5, **INFER_FIELDS, tie_word_embeddings=tied)))
    layers = [m for m in packed.modules() if isinstance(m, Int8Linear)]
    assert packed.prepacked and layers and all(m.packed is not None for m in layers)
    assert prepack_model(packed).prepacked  # a second call changes nothing
    # the plain int8 table stays only where the embedding lookup reads it (the tied head)
    assert [m for m in layers if m.weight is not None] == ([packed.lm_head] if tied else [])
    twins = dict(plain.named_modules())
    with torch.inference_mode():
        for name, layer in packed.named_modules():
            if isinstance(layer, Int8Linear):
                for rows in (1, 8):
                    x = torch.randn(rows, layer.in_features, generator=torch.Generator().manual_seed(rows))
                    want = twins[name](x)
                    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
        want, got = plain(IDS).logits, packed(IDS).logits
    # A 1e-7 difference can round a next layer's activation to the neighbouring int8 step (1/127 of its row's
    # largest value), so the whole model is compared by size: seed 5 tied measured 0.6 % (a wrong scale: ~100 %).
    assert float((got - want).norm() / want.norm()) < 0.02
    assert float((got.argmax(-1) == want.argmax(-1)).float().mean()) > 0.98
    # The packed weights replace the plain ones, except the tied table, which the lookup still reads.
    head = packed.lm_head
    assert weight_bytes(packed) == weight_bytes(plain) + (head.out_features * head.in_features if tied else 0)
    assert weight_bytes(packed) < 0.45 * weight_bytes(tiny_model(5, **INFER_FIELDS, tie_word_embeddings=tied))


def test_float16_is_left_alone():
    h = prepack_model(tiny_model(0, **INFER_FIELDS).half())
    assert not getattr(h, "prepacked", False) and isinstance(h.transformer.blocks[0].attn.Wqkv, torch.nn.Linear)


def test_a_compiled_decode_step_runs_over_packed_int8_weights(caplog, monkeypatch):
    """torch.compile takes packed int8 weights through mpt.model.packed_ops' ops: the compiled decode gives the eager
    greedy tokens, compiles (a graph it could not build would fall back to eager with a warning), and its steps
    call the ops for every packed layer. (Packed float weights: the compiled case of tests/infer/test_batching.py's
    fused-join test.)"""
    from mpt.infer.generate import generate_ids

    packed = prepack_model(quantize_model(tiny_model(0, **INFER_FIELDS)))
    assert packed.prepacked
    counted = count_packed_lookups(monkeypatch)
    layers = sum(getattr(m, "packed", None) is not None for m in packed.modules())
    with caplog.at_level(logging.WARNING):
        eager = generate_ids(packed, IDS[:2, :12], 8, compile=False)
        assert counted.lookups == 0
        compiled = generate_ids(packed, IDS[:2, :12], 8, compile=True)
    assert "compiled decode failed" not in caplog.text
    assert torch.equal(compiled, eager)
    assert layers == 4 * packed.config.n_layers + 1 and counted.lookups >= 7 * layers  # 7 compiled decode steps
