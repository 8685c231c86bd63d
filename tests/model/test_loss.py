import pytest
import torch
import torch.nn.functional as F

from mpt.model.loss import linear_cross_entropy
from tests.tiny import tiny_model

from .helpers import MODEL_FIELDS


@pytest.mark.parametrize("scale", [None, 0.7])
@pytest.mark.parametrize("chunk", [3, 64])
def test_fused_loss_and_gradients_equal_float64_reference(scale, chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, requires_grad=True)
    w = torch.randn(50, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 50, (37,), generator=g)
    t[[0, 5, 36]] = -100
    loss = linear_cross_entropy(h, w, t, scale, chunk_size=chunk)
    loss.backward()
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    logits = h64 @ w64.t() * (scale or 1.0)
    ref = F.cross_entropy(logits, t, ignore_index=-100)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(h.grad.double(), h64.grad, atol=1e-6)
    assert torch.allclose(w.grad.double(), w64.grad, atol=1e-6)


@pytest.mark.parametrize("tied", [True, False])
def test_training_forward_uses_fused_loss_with_the_same_gradients(tied):
    ids = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[1, :4] = -100
    grads = []
    for train in (True, False):
        model = tiny_model(0, **MODEL_FIELDS, tie_word_embeddings=tied, logit_scale=0.5)
        model.train(train)
        out = model(ids, labels=labels)
        assert (out.logits is None) == train  # training never builds the logits
        out.loss.backward()
        grads.append((out.loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    for name, g in grads[0][1].items():
        assert torch.allclose(g, grads[1][1][name], atol=1e-5), name


def test_fused_loss_under_bf16_autocast_is_close():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(40, 32, generator=g)
    w = torch.randn(300, 32, generator=g) * 0.2
    t = torch.randint(0, 300, (40,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, w, t)
    ref = F.cross_entropy((h.double() @ w.double().t()), t)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=2e-2)
