"""The low-precision LayerNorm."""

import torch
import torch.nn.functional as F

from mpt.model.norm import LayerNorm


def test_low_precision_layernorm_runs_in_autocast_dtype():
    torch.manual_seed(0)
    x = torch.randn(4, 32)
    ln = LayerNorm(32, low_precision=True)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ln(x)
        plain = LayerNorm(32, low_precision=False).to(torch.float32)
        plain.load_state_dict(ln.state_dict())
        full = plain(x)
    assert low.dtype == torch.bfloat16
    assert torch.equal(low, F.layer_norm(x.bfloat16(), (32,), ln.weight.bfloat16(), None, 1e-5))
    assert full.dtype == torch.float32
    assert torch.allclose(ln(x), F.layer_norm(x, (32,), ln.weight, None, 1e-5))  # fp32 without autocast
