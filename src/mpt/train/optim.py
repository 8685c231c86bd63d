"""Decoupled Lion and decoupled AdamW, and the weight-decay parameter groups (:func:`param_groups`).

"Decoupled" (as in LLM Foundry / Composer): weight decay shrinks weights by ``wd * lr / initial_lr``
per step, so ``weight_decay`` is a fraction of the weight removed per step at the peak rate,
independent of the learning rate's scale. AdamW is ``torch.optim.AdamW`` itself
(:func:`decoupled_adamw`); torch has no Lion, so :class:`DecoupledLion` is written here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..model.norm import LayerNorm


class DecoupledLion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), with decoupled decay::

        update = sign(beta1 * m + (1 - beta1) * g);  p -= lr * update;  m = beta2 * m + (1 - beta2) * g

    It keeps one state buffer per parameter, half of AdamW's optimizer memory. Each operation is one
    ``torch._foreach_*`` kernel launch for all of a group's tensors, not one per parameter; they work on
    plain tensors and on FSDP2's DTensors.
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        if not lr > 0:
            raise ValueError(f"DecoupledLion lr={lr} must be > 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                if not self.state[p]:
                    self.state[p]["exp_avg"] = torch.zeros_like(p)
            momenta = [self.state[p]["exp_avg"] for p in params]
            beta1, beta2 = group["betas"]
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["weight_decay"] * group["lr"] / group["initial_lr"])
            updates = torch._foreach_lerp(momenta, grads, 1 - beta1)
            torch._foreach_sign_(updates)
            torch._foreach_add_(params, updates, alpha=-group["lr"])
            torch._foreach_lerp_(momenta, grads, 1 - beta2)
        return loss


def decoupled_adamw(groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                    fused: bool | None = None) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with each group's ``weight_decay`` made decoupled (see the module docstring).

    It is torch's own (its foreach and fused kernels, its state layout): torch shrinks weights by
    ``lr * weight_decay``, so each group is given ``weight_decay / initial_lr`` and the product is the
    decoupled rate at every point of the schedule.

    ``fused`` (one kernel for the whole step) is for CUDA; None lets torch choose (foreach on CUDA).
    """
    if not lr > 0:
        raise ValueError(f"AdamW lr={lr} must be > 0")
    groups = [{**g, "weight_decay": g.get("weight_decay", 0.0) / lr} for g in groups]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


def param_groups(model: nn.Module, weight_decay: float, decay_norms: bool = False,
                 decay_embeddings: bool = False) -> list[dict]:
    """Two groups: parameters that decay, and norms / embeddings / biases that (by default) do not.

    Frozen parameters (LoRA's base weights) are left out: the optimizer keeps no state for them.
    """
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, (LayerNorm, nn.LayerNorm)) and not decay_norms:
            no_decay.update(id(p) for p in module.parameters(recurse=False))
        if isinstance(module, nn.Embedding) and not decay_embeddings:
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            no_decay.add(id(p))
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if id(p) not in no_decay]
    rest = [p for p in trainable if id(p) in no_decay]
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0})
            if g["params"]]


def lr_multiplier(step: int, total: int, warmup: int, name: str, alpha_f: float) -> float:
    """The schedule at optimizer step ``step`` (0-based) of ``total``: linear warmup, then decay to alpha_f."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if name == "linear":
        return 1.0 - (1.0 - alpha_f) * progress
    if name == "cosine":
        return alpha_f + (1.0 - alpha_f) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"scheduler.name {name!r} is unknown; allowed: cosine, linear, constant")
