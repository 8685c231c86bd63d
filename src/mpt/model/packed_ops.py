"""oneDNN's packed-weight matmuls as ``torch.library`` ops, so a compiled decode step calls them as opaque kernels.

``torch.compile`` cannot trace the packed (opaque oneDNN) weight tensors themselves, so a compiled step passes
a key instead, and the op looks the weight up here. The table holds weak references: a packed weight lives as
long as the layer that owns it. Eager calls go to oneDNN directly (a custom op costs a few microseconds more).
"""

from __future__ import annotations

import functools
import itertools
import weakref

import torch

_WEIGHTS: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()
_KEYS = itertools.count()


def register(packed: torch.Tensor) -> int:
    """A key under which compiled code finds ``packed`` (while its owner keeps it alive)."""
    key = next(_KEYS)
    _WEIGHTS[key] = packed
    return key


class PackedWeight:
    """A module attribute holding an opaque packed weight (or None); setting it also registers the weight and
    puts its key in the module's ``key``, the one way both packed layers (float and int8) get their keys."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, module, owner=None):
        return self if module is None else getattr(module, self.slot, None)

    def __set__(self, module, packed: torch.Tensor | None) -> None:
        setattr(module, self.slot, packed)
        module.key = None if packed is None else register(packed)


def float_linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """``x`` (rows, in) times a weight packed by ``mkldnn._reorder_linear_weight``: (rows, out), x's dtype."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def int8_linear(xq: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 ``xq`` (rows, in) times an int8 weight packed by ``onednn.qlinear_prepack``, each output column times
    its row scale ``scale``: the int32 sums rescaled, in float32 (xq's own scale is applied by the caller)."""
    return torch.ops.onednn.qlinear_pointwise.tensor(
        xq, _ONE, _ZERO, packed, scale, _zeros(scale.shape[0]), None, 1.0, 0, torch.float32, "none", [], "")


_ONE, _ZERO = torch.ones(()), torch.zeros((), dtype=torch.int32)


@functools.cache
def _zeros(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.int32)  # the weight's zero points (symmetric rows)


@torch.library.custom_op("mpt::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, key: int, out_features: int) -> torch.Tensor:
    return float_linear(x, _WEIGHTS[key])


@packed_linear.register_fake
def _(x: torch.Tensor, key: int, out_features: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], out_features)


@torch.library.custom_op("mpt::packed_int8_linear", mutates_args=())
def packed_int8_linear(xq: torch.Tensor, key: int, scale: torch.Tensor) -> torch.Tensor:
    return int8_linear(xq, _WEIGHTS[key], scale)


@packed_int8_linear.register_fake
def _(xq: torch.Tensor, key: int, scale: torch.Tensor) -> torch.Tensor:
    return xq.new_empty(xq.shape[0], scale.shape[0], dtype=torch.float32)
