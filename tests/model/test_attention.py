import importlib.util

import pytest
import torch
from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

from mpt.model.attention import alibi_slopes, attend, prepare

from .helpers import reference_attention, reference_slopes


@pytest.mark.parametrize("n_heads", [1, 4, 6, 12, 20, 32, 56])
def test_alibi_slopes_match_the_paper_recipe(n_heads):
    assert torch.allclose(alibi_slopes(n_heads).double(), reference_slopes(n_heads), rtol=1e-6, atol=0)


@pytest.mark.parametrize("n_heads", [6, 12, 16])
def test_alibi_slopes_match_transformers(n_heads):
    # transformers stores slope * (j - (T-1)); the bias for the first key is -slope * (T-1).
    hf = build_mpt_alibi_tensor(n_heads, 2)[:, 0, 0]
    assert torch.allclose(alibi_slopes(n_heads), -hf, rtol=1e-6)


def test_alibi_bias_max_changes_slopes():
    assert torch.allclose(alibi_slopes(8, 16).double(), reference_slopes(8, 16), rtol=1e-6)
    assert not torch.allclose(alibi_slopes(8, 16), alibi_slopes(8, 8))


BACKENDS = ["torch", "flex"] + (["flash"] if importlib.util.find_spec("flash_attn") and torch.cuda.is_available()
                                else [])


def _inputs(B, H, T, S, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g)
    k = torch.randn(B, H, S, D, generator=g)
    v = torch.randn(B, H, S, D, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("impl", BACKENDS)
@pytest.mark.parametrize("alibi", [True, False])
@pytest.mark.parametrize("q_len,k_len", [(17, 17), (5, 23), (1, 30)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
def test_backends_agree_with_float64_reference(impl, alibi, q_len, k_len, dtype, tol):
    if impl == "flash" and dtype == torch.float32:
        pytest.skip("flash-attn computes in 16-bit only")
    device = "cuda" if impl == "flash" else "cpu"
    H = 6
    q, k, v = _inputs(2, H, q_len, k_len, 16, dtype)
    slopes = alibi_slopes(H, 8) if alibi else None
    inp = prepare(impl, 2, q_len, k_len, slopes, None, dtype, torch.device(device))
    out = attend(q.to(device), k.to(device), v.to(device), inp, scale=0.3).float().cpu()
    ref = reference_attention(q, k, v, slopes, 0.3)
    assert out.shape == ref.shape
    assert (out.double() - ref).abs().max().item() < tol


@pytest.mark.parametrize("impl", ["torch", "flex"])
def test_backends_honour_left_padding(impl):
    H, B, S = 4, 3, 12
    q, k, v = _inputs(B, H, S, S, 8, torch.float32, seed=1)
    key_mask = torch.ones(B, S, dtype=torch.bool)
    key_mask[1, :4] = False
    key_mask[2, :9] = False
    slopes = alibi_slopes(H)
    inp = prepare(impl, B, S, S, slopes, key_mask, torch.float32, torch.device("cpu"))
    out = attend(q, k, v, inp, scale=0.25)
    ref = reference_attention(q, k, v, slopes, 0.25, key_mask)
    valid = key_mask  # query rows that are real tokens
    diff = (out.double() - ref).abs().amax(dim=(1, 3))  # (B, S)
    assert diff[valid].max().item() < 2e-5
    assert torch.isfinite(out).all()  # padded query rows give finite values, not NaN


def test_flex_block_mask_skips_blocks_across_documents():
    T, B = 256, 1  # two 128-token blocks; one document each
    seq = torch.cat([torch.zeros(B, 128), torch.ones(B, 128)], dim=1).long()
    causal = prepare("flex", B, T, T, None, None, torch.float32, torch.device("cpu"))
    packed = prepare("flex", B, T, T, None, None, torch.float32, torch.device("cpu"), seq)
    # (query block 1, key block 0) is computed for one causal document and skipped for two
    assert causal.block_mask.to_dense()[0, 0, 1, 0] == 1
    assert packed.block_mask.to_dense()[0, 0].tolist() == [[1, 0], [0, 1]]
