"""Low-precision LayerNorm: under autocast the norm runs in the autocast dtype.

MPT trained with this to save memory bandwidth; without autocast it is an ordinary LayerNorm,
so fp32 results equal ``torch.nn.LayerNorm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias; ``low_precision`` keeps it in the autocast dtype."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False, low_precision: bool = True,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.low_precision = low_precision
        self.weight = nn.Parameter(torch.ones(dim, device=device))
        self.bias = nn.Parameter(torch.zeros(dim, device=device)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.low_precision and torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            weight = self.weight.to(dtype)
            bias = self.bias.to(dtype) if self.bias is not None else None
            with torch.autocast(x.device.type, enabled=False):
                return F.layer_norm(x.to(dtype), weight.shape, weight, bias, self.eps)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, low_precision={self.low_precision}"
