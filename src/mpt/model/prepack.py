"""CPU inference with linear weights prepacked once for oneDNN: ``prepack_model(model)`` (``mpt.load`` does it).

Each ``nn.Linear`` (and a tied output projection) becomes a :class:`PackedLinear` whose weight is reordered
into oneDNN's blocked layout at load; every call then runs oneDNN's matmul on it, the kernel PyTorch's own
compiler emits for frozen CPU graphs (a compiled step calls it through :mod:`mpt.model.packed_ops`). Eager
``F.linear`` repacks or streams the plain weight on every call: 2-8x slower at decode shapes (BENCHMARKS.md).
No library fitted: intel-extension-for-pytorch does this but is discontinued, torchao has no float path.
The state dict still holds the dense weights (``save_pretrained`` works); the model cannot be trained.
Where the ops are missing or disagree with ``F.linear`` on a probe, the model is left as it is.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from . import packed_ops

log = logging.getLogger("mpt.model")

PACKABLE = (torch.float32, torch.bfloat16)


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_size=None)


class PackedLinear(nn.Module):
    """A bias-free linear layer over a oneDNN-packed copy of ``weight``; ``tied``: the weight belongs to another
    module (a tied embedding), so this one adds nothing to the state dict."""

    packed = packed_ops.PackedWeight()  # the opaque oneDNN copy: not a buffer; its key is what compiled code passes

    def __init__(self, weight: torch.Tensor, tied: bool = False) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.dtype, self.tied = weight.dtype, tied
        self.packed = _pack(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            raise RuntimeError("this model's linear weights are prepacked for CPU inference (mpt.load); "
                               "load it with prepack=False (or MPTForCausalLM.from_pretrained) to train it")
        x2 = x.reshape(-1, self.in_features)
        if torch.compiler.is_compiling():
            y = torch.ops.mpt.packed_linear(x2, self.key, self.out_features)
        else:
            y = packed_ops.float_linear(x2, self.packed)
        return y.reshape(*x.shape[:-1], self.out_features)

    @property
    def weight(self) -> torch.Tensor:
        return self.packed.to_dense()

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        if not self.tied:
            destination[prefix + "weight"] = self.weight

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key = prefix + "weight"
        if key in state_dict:
            self.packed = _pack(state_dict[key].to(self.dtype))
        elif strict and not self.tied:
            missing_keys.append(key)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, prepacked"


def can_prepack(model: nn.Module) -> bool:
    """CPU, float32 or bfloat16, not quantized, and oneDNN present."""
    p = next(model.parameters(), None)
    return (p is not None and p.device.type == "cpu" and p.dtype in PACKABLE and not getattr(model, "quantized", None)
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def _agrees(linear: nn.Linear) -> bool:
    """Whether the packed kernel gives ``F.linear``'s numbers on a probe (a build where it does not keeps F.linear)."""
    try:
        x = torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(0)).to(linear.weight.dtype)
        with torch.inference_mode():
            want = F.linear(x, linear.weight).float()
            got = PackedLinear(linear.weight)(x).float()
        tol = 1e-4 if linear.weight.dtype == torch.float32 else 2e-2
        return bool(torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max().clamp(min=1))))
    except (RuntimeError, AttributeError, NotImplementedError) as err:
        log.info("oneDNN prepacking unavailable (%s): linear layers stay as they are", err)
        return False


def prepack_model(model: nn.Module) -> nn.Module:
    """Prepack ``model``'s bias-free linear layers, and its tied output projection, in place; returns it.
    An int8 model (:mod:`mpt.model.quantize`) gets its int8 weights packed instead."""
    if getattr(model, "quantized", None):
        from .quantize import pack_int8

        model.prepacked = pack_int8(model)
        return model
    linears = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear) and child.bias is None]
    if not can_prepack(model) or not linears or not _agrees(linears[0][2]):
        return model
    model.requires_grad_(False)
    for parent, name, child in linears:
        setattr(parent, name, PackedLinear(child.weight))
    wte = getattr(getattr(model, "transformer", None), "wte", None)
    if getattr(model, "lm_head", "absent") is None and isinstance(wte, nn.Embedding):
        # Tied: the lookup keeps the plain table, the output projection gets a packed copy (vocab x d_model more
        # memory: a quarter of a 50k-vocabulary d_model-512 model, 3 % of MPT-7B).
        head = model.lm_head = PackedLinear(wte.weight, tied=True)
        model.register_load_state_dict_post_hook(lambda *_: setattr(head, "packed", _pack(wte.weight)))
    model.prepacked = True
    return model
