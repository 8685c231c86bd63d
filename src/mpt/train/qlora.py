"""QLoRA: the frozen base's block linear layers held in 4-bit NF4 by ``bitsandbytes``, LoRA on top.

The 4-bit layers are bitsandbytes' own ``Linear4bit`` (NF4 codes, double-quantized block scales);
peft recognises them and wraps them with its bnb-aware LoRA layer, so the adapters train in full
precision against the dequantized base. Embeddings, norms and the head stay as they are: they are a
small share of an MPT's weights and the head is tied to the embedding.

The quantized base is never saved: a checkpoint holds the adapters and their optimizer state, and
the base is rebuilt from ``model.init_from`` (quantization is deterministic) on resume and on export.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .lora import LoraError

INSTALL = "model.lora.quantize_base needs bitsandbytes: pip install 'mpt[qlora]'"


def require_bitsandbytes():
    try:
        import bitsandbytes
    except ImportError as err:
        raise LoraError(f"{INSTALL} ({err})") from err
    return bitsandbytes


@dataclass
class QuantizedBase:
    layers: int
    bytes_4bit: int    # codes plus their (double-quantized) scales
    bytes_fp32: int    # the same weights in fp32

    def describe(self, compute_dtype: torch.dtype) -> str:
        mib = 1024 ** 2
        return (f"QLoRA: {self.layers} block linear layers frozen in 4-bit NF4 (double quantization, compute "
                f"{str(compute_dtype).removeprefix('torch.')}): {self.bytes_4bit / mib:.2f} MiB instead of "
                f"{self.bytes_fp32 / mib:.2f} MiB in fp32 ({self.bytes_fp32 / self.bytes_4bit:.1f}x smaller)")


def _state_bytes(state) -> int:
    total = state.absmax.numel() * state.absmax.element_size() + state.code.numel() * state.code.element_size()
    if state.nested:
        total += _state_bytes(state.state2)
    return total


def _block_linears(model: nn.Module):
    """(parent, attribute name, layer) for every linear layer inside the transformer blocks."""
    for block in model.transformer.blocks:
        for parent in block.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.Linear):
                    yield parent, name, child


def quantize_base(model: nn.Module, compute_dtype: torch.dtype, device: torch.device) -> QuantizedBase:
    """Replace every block linear layer of ``model`` by a frozen NF4 ``Linear4bit`` on ``device``, in place.

    bitsandbytes quantizes a weight when it first moves to a device, so the codes are made on
    ``device``; the rest of the model stays where it is until the loop places it.
    """
    bnb = require_bitsandbytes()
    layers, bytes_4bit, bytes_fp32 = 0, 0, 0
    for parent, name, linear in list(_block_linears(model)):
        if isinstance(linear, bnb.nn.Linear4bit):
            raise LoraError(f"{name} is quantized already; quantize a full-precision model")
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                              device="meta")
        q.weight = bnb.nn.Params4bit(linear.weight.data.float(), requires_grad=False, compress_statistics=True,
                                     quant_type="nf4")
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.data.float(), requires_grad=False)
        # bitsandbytes repacks a CPU layer's codes in place on its first no-grad eval forward (on
        # AVX512-BF16 CPUs), which needs out_features % 32 == 0 and changes the layout that
        # checkpoints, dequantize_base and a resumed run rely on; keep the one layout throughout
        q.support_avx512bf16_for_cpu = False
        q = q.to(device)
        setattr(parent, name, q)
        layers += 1
        bytes_4bit += q.weight.numel() * q.weight.element_size() + _state_bytes(q.weight.quant_state)
        bytes_fp32 += linear.weight.numel() * 4
    if not layers:
        raise LoraError("model.lora.quantize_base: the model has no linear layers in its blocks")
    # peft picks its bnb-aware LoRA layer (4-bit merge, dtype handling) only for a model marked so
    model.is_loaded_in_4bit = True
    return QuantizedBase(layers, bytes_4bit, bytes_fp32)


def dequantize_base(model: nn.Module) -> int:
    """Each ``Linear4bit`` back to an ``nn.Linear`` holding the dequantized weight (fp32, on the CPU).

    The weight is exactly what the 4-bit forward computes with, so adapters trained against the
    4-bit base merge into it without a second rounding.
    """
    bnb = require_bitsandbytes()
    count = 0
    for parent, name, layer in list(_block_linears(model)):
        if not isinstance(layer, bnb.nn.Linear4bit):
            continue
        weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float().cpu()
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        plain.weight = nn.Parameter(weight, requires_grad=False)
        if layer.bias is not None:
            plain.bias = nn.Parameter(layer.bias.data.float().cpu(), requires_grad=False)
        setattr(parent, name, plain)
        count += 1
    model.is_loaded_in_4bit = False
    return count


def logical_numel(p: torch.Tensor) -> int:
    """Parameters a tensor stands for: a 4-bit tensor packs two per byte (its own numel is the packed size)."""
    state = getattr(p, "quant_state", None)
    return state.shape.numel() if state is not None else p.numel()
