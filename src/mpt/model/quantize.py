"""int8 weights for inference: ``quantize_model(model, "int8")`` (``mpt.load(..., quantize="int8")``).

Every ``nn.Linear`` becomes an :class:`Int8Linear`: an int8 weight with one float32 scale per output row
(symmetric), a quarter of its float32 bytes. On GPU it is weight-only (cast inside the call: it saves
memory, not time); on CPU each call also rounds its input to int8 per token and runs an int8 x int8
matmul (oneDNN's over weights packed once, after ``prepack_model``). A tied embedding becomes one int8
table for ``lm_head`` and :class:`Int8Embedding`. Inference only: not trained, saved or exported.
Why not a library: torchao 0.18's weight-only int8 upcasts the whole weight on every CPU call (slower
than float32, compiled too), its int8 x int8 path is this one with no gain, and once installed
transformers imports it with every model (seconds and CUDA warnings per command, quantized or not).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from . import packed_ops

log = logging.getLogger("mpt.model")

QUANTIZE_METHODS = ("int8",)


def check_method(method: str | None) -> str | None:
    if method not in (None, *QUANTIZE_METHODS):
        raise ValueError(f"quantize={method!r} is invalid: use {', '.join(QUANTIZE_METHODS)} (or none)")
    return method


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, K)`` float -> int8 ``(N, K)`` and float32 scales ``(N,)``, symmetric per row: w ~ q * scale."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127  # an all-zero row keeps a positive scale
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """A linear layer with an int8 weight ``q`` and per-row scales: ``w ~ q * scale`` (see quantize_rows)."""

    packed = packed_ops.PackedWeight()  # oneDNN's blocked copy of ``weight`` (pack()): opaque, not a buffer

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        q, scale = quantize_rows(weight)
        self.out_features, self.in_features = q.shape
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.packed = None

    def pack(self, keep_plain: bool = False) -> None:
        """Reorder the weight once into oneDNN's int8 layout for CPU calls; ``keep_plain``: also keep the plain
        table (an :class:`Int8Embedding` reads its rows), else it is freed. torch._int_mm reorders it on every
        call: for a 50k-vocabulary head at 1 and 8 rows the packed matmul measured 2.0x and 2.2x faster
        (``benchmarks/bench_kernels.py``)."""
        self.packed = torch.ops.onednn.qlinear_prepack(self.weight, None)
        if not keep_plain:
            self.weight = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            y = self._int8_matmul(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
        else:
            # Weight-only: activations never lose precision. No fused kernel, so this saves memory, not time;
            # it has not yet run on a GPU in this project's tests.
            y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def _int8_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` rounded to int8 per token, an int8 x int8 -> int32 matmul (oneDNN's over the packed weight, else
        ``torch._int_mm``), then rescaled. PyTorch has no fast float x int8 matmul on CPU: casting the weight each
        call (the GPU path) or ``torch._weight_int8pack_mm`` with float32 inputs ran slower than float32,
        the int8 x int8 path faster (figures in BENCHMARKS.md, int8 weights; benchmarks/bench_int8.py)."""
        xf = x.float()
        # One scale per token: a row of large activations does not coarsen the others' rounding, and the added
        # error stays small (tests/model/test_quantize.py bounds the logits, benchmarks/bench_int8.py measures
        # perplexity against float32).
        x_scale = xf.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
        xq = torch.round(xf / x_scale).to(torch.int8)
        if self.packed is not None:
            # the int32 sums times the weight's row scales, in float32; x's per-token scales come after
            if torch.compiler.is_compiling():
                acc = torch.ops.mpt.packed_int8_linear(xq, self.key, self.scale)
            else:
                acc = packed_ops.int8_linear(xq, self.packed, self.scale)
            return (acc * x_scale).to(x.dtype)
        # The (N, K) weight passed transposed as a view: measured faster than a (K, N) copy here.
        acc = torch._int_mm(xq, self.weight.t())
        return (acc.float() * x_scale * self.scale).to(x.dtype)

    def extra_repr(self) -> str:
        packed = ", packed" if self.packed is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8{packed}"


def _packing_agrees(layer: Int8Linear) -> bool:
    """Whether oneDNN's packed int8 matmul is present and gives torch._int_mm's numbers on a probe (both sum
    int8 products exactly in int32); a build or CPU where it does not keeps torch._int_mm."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops, "onednn")
            and hasattr(torch.ops.onednn, "qlinear_prepack")):
        return False
    probe = Int8Linear(torch.zeros(1, 1), None)
    probe.weight, probe.scale, probe.out_features, probe.in_features = (
        layer.weight[:64], layer.scale[:64], min(64, layer.out_features), layer.in_features)
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            want = probe(x)
            probe.pack()
            got = probe(x)
    except (RuntimeError, NotImplementedError) as err:
        log.info("oneDNN's packed int8 matmul unavailable (%s): torch._int_mm it is", err)
        return False
    return bool(torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max().clamp(min=1))))


class Int8Embedding(nn.Module):
    """An embedding lookup in the int8 output projection's table (shared, not copied)."""

    def __init__(self, head: Int8Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.head = [head]  # a list: the head is the model's module, not registered twice here
        self.dtype = dtype
        self.num_embeddings, self.embedding_dim = head.weight.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        head = self.head[0]
        return (F.embedding(ids, head.weight).float() * head.scale[ids][..., None]).to(self.dtype)


def quantize_model(model: nn.Module, method: str | None = "int8") -> nn.Module:
    """Quantize ``model``'s linear layers (and its output projection) in place; returns it.

    Norm weights, biases and the KV cache keep the model's dtype.
    """
    if check_method(method) is None:
        return model
    model.requires_grad_(False)
    transformer = getattr(model, "transformer", None)
    wte = getattr(transformer, "wte", None)
    tied = getattr(model, "lm_head", "absent") is None and isinstance(wte, nn.Embedding)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear.from_linear(child))
    if tied:
        # MPT's output projection is its input embedding: quantized once, one int8 table serves both roles,
        # so the vocabulary's weights also shrink to a quarter (at d_model 1024 and a 50k vocabulary they are
        # a third of an 8-layer model).
        head = Int8Linear(wte.weight, None).to(wte.weight.device)
        model.lm_head = head
        transformer.wte = Int8Embedding(head, wte.weight.dtype)  # the float table is freed here
    model.quantized = method
    return model


def pack_int8(model: nn.Module) -> bool:
    """Pack a CPU int8 model's weights for oneDNN (``prepack_model`` calls this); False where it cannot."""
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    todo = [m for m in layers if m.packed is None]
    if not todo:
        return bool(layers)  # packed already
    if todo[0].weight.device.type != "cpu" or not _packing_agrees(todo[0]):
        return False
    shared = {id(m.head[0]) for m in model.modules() if isinstance(m, Int8Embedding)}
    for layer in todo:
        layer.pack(keep_plain=id(layer) in shared)
    return True


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters, buffers (each storage counted once) and packed weights."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    # and the packed weights (opaque oneDNN tensors, not buffers: Int8Linear's and prepack's PackedLinear's)
    packed = [m.packed for m in model.modules() if isinstance(getattr(m, "packed", None), torch.Tensor)]
    return total + sum(t.numel() * t.element_size() for t in packed)
