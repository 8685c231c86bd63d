"""Document masking: a packed row gives each document exactly what it gets alone."""

import pytest
import torch

from mpt import MPTForCausalLM
from tests.tiny import tiny_model

from .helpers import MODEL_FIELDS

IGNORE = -100
# Two rows of 24 tokens: documents of 5, 7 and 3 tokens then padding (-1); 9 then 15 tokens.
DOC_LENGTHS = [[5, 7, 3], [9, 15]]
POSITIONS = {"alibi": dict(attn_config={"alibi": True}),
             "learned-pos": dict(learned_pos_emb=True, attn_config={"alibi": False})}


def _model(impl: str, positions: str) -> MPTForCausalLM:
    fields = POSITIONS[positions]
    return tiny_model(0, **MODEL_FIELDS, **{**fields, "attn_config": {**fields["attn_config"], "attn_impl": impl,
                                                                      "attn_uses_sequence_id": True}})


def _packed_batch(vocab: int, T: int = 24):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, vocab, (len(DOC_LENGTHS), T), generator=g)
    seq = torch.full_like(ids, -1)
    labels = torch.full_like(ids, IGNORE)
    docs = []  # (row, start, length)
    for r, lengths in enumerate(DOC_LENGTHS):
        start = 0
        for k, n in enumerate(lengths):
            seq[r, start:start + n] = k
            labels[r, start + 1:start + n] = ids[r, start + 1:start + n]  # a document's first token is no target
            docs.append((r, start, n))
            start += n
    return ids, seq, labels, docs


def _alone(model: MPTForCausalLM, ids: torch.Tensor, labels: torch.Tensor | None = None):
    """The same document as a batch of its own, in float64 with the plain torch backend."""
    ref = MPTForCausalLM(model.config).double().eval()
    ref.load_state_dict(model.state_dict())
    ref.config.attn_config = {**ref.config.attn_config, "attn_impl": "torch"}
    return ref(ids[None], labels=None if labels is None else labels[None])


@pytest.mark.parametrize("impl", ["torch", "flex"])
@pytest.mark.parametrize("positions", list(POSITIONS))
def test_packed_row_gives_each_document_its_logits_alone(impl, positions):
    model = _model(impl, positions).eval()
    ids, seq, labels, docs = _packed_batch(model.config.vocab_size)
    with torch.no_grad():
        packed = model(ids, sequence_id=seq).logits
        unmasked = model(ids).logits
        for r, start, n in docs:
            alone = _alone(model, ids[r, start:start + n]).logits[0]
            assert (packed[r, start:start + n].double() - alone).abs().max() < 1e-4, (r, start, n)
            if start:  # without the mask, later documents would see the earlier ones
                assert (unmasked[r, start:start + n].double() - alone).abs().max() > 1e-3


@pytest.mark.parametrize("impl", ["torch", "flex"])
@pytest.mark.parametrize("positions", list(POSITIONS))
def test_packed_loss_is_the_target_weighted_mean_of_documents_alone(impl, positions):
    model = _model(impl, positions).eval()
    ids, seq, labels, docs = _packed_batch(model.config.vocab_size)
    total, count = 0.0, 0
    with torch.no_grad():
        packed = model(ids, sequence_id=seq, labels=labels).loss
        for r, start, n in docs:
            alone = _alone(model, ids[r, start:start + n], labels[r, start:start + n]).loss
            total, count = total + alone.item() * (n - 1), count + n - 1
    assert abs(packed.item() - total / count) < 1e-5


def test_packed_training_gradient_equals_the_sum_over_documents():
    # Training mode takes the fused loss (loss.py); the gradient, not only the value, must match.
    model = _model("torch", "learned-pos").train()
    ids, seq, labels, docs = _packed_batch(model.config.vocab_size)
    model(ids, sequence_id=seq, labels=labels).loss.backward()
    packed = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    count = sum(n - 1 for _, _, n in docs)
    for r, start, n in docs:
        loss = model(ids[r:r + 1, start:start + n], labels=labels[r:r + 1, start:start + n]).loss
        (loss * (n - 1) / count).backward()
    for k, p in model.named_parameters():
        assert torch.allclose(packed[k], p.grad, atol=1e-6, rtol=1e-4), k


def test_sequence_id_with_padding_ids_and_attention_mask_together():
    model = _model("torch", "alibi").eval()
    ids, seq, _, docs = _packed_batch(model.config.vocab_size)
    with torch.no_grad():
        a = model(ids, sequence_id=seq).logits
        b = model(ids, sequence_id=seq, attention_mask=(seq >= 0).long()).logits
    real = seq >= 0
    assert (a[real] - b[real]).abs().max() < 1e-5


@pytest.mark.parametrize("bad,message", [
    (torch.zeros(2, 23, dtype=torch.long), r"shape \(2, 23\); expected \(2, 24\)"),
    (torch.tensor([[0] * 12 + [2] * 6 + [1] * 6, [0] * 24]), r"row 0 = \[0, 0, .*position 18 \(value 1\)"),
    (torch.tensor([[0] * 24, [-2] + [0] * 23]), r"row 1 .* position 0 \(value -2\)"),
    (torch.zeros(2, 24), "dtype torch.float32"),
])
def test_bad_sequence_id_is_an_error_naming_the_value(bad, message):
    model = _model("torch", "alibi").eval()
    ids = torch.zeros(2, 24, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        model(ids, sequence_id=bad)


def test_sequence_id_without_the_config_flag_is_an_error():
    model = tiny_model(0, **MODEL_FIELDS)
    ids = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="attn_config.attn_uses_sequence_id"):
        model(ids, sequence_id=torch.zeros_like(ids))


def test_sequence_id_with_a_kv_cache_is_an_error():
    model = _model("torch", "alibi").eval()
    ids = torch.zeros(1, 8, dtype=torch.long)
    cache = model(ids, use_cache=True).past_key_values
    with pytest.raises(ValueError, match="KV cache holding 8 tokens"):
        model(ids[:, :1], cache=cache, use_cache=True, sequence_id=torch.zeros(1, 1, dtype=torch.long))
