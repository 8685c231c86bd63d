"""Decoupled Lion and decoupled AdamW, and the weight-decay parameter groups.

"Decoupled" (as in LLM Foundry / Composer): weight decay shrinks weights by ``wd * lr / initial_lr``
per step, so ``weight_decay`` is a fraction of the weight removed per step at the peak rate,
independent of the learning rate's scale. Both optimizers work on plain tensors and on FSDP2's
DTensors (only elementwise operations).

Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"):
    update = sign(beta1 * m + (1 - beta1) * g);  p -= lr * update;  m = beta2 * m + (1 - beta2) * g
It keeps one state buffer per parameter, half of AdamW's optimizer memory.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..model.norm import LayerNorm


def _decay(p: torch.Tensor, group: dict) -> None:
    wd = group["weight_decay"]
    if wd:
        p.mul_(1 - wd * group["lr"] / group["initial_lr"])


class _Decoupled(torch.optim.Optimizer):
    """Remembers each group's initial lr: decoupled weight decay is scaled by lr / initial_lr."""

    def __init__(self, params, defaults: dict) -> None:
        if not defaults["lr"] > 0:
            raise ValueError(f"{type(self).__name__} lr={defaults['lr']} must be > 0")
        super().__init__(params, defaults)
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def _params(self):
        """(group, parameter, its state) for every parameter with a gradient; decay already applied."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    _decay(p, group)
                    yield group, p, self.state[p]


class DecoupledLion(_Decoupled):
    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group, p, state in self._params():
            beta1, beta2 = group["betas"]
            if not state:
                state["exp_avg"] = torch.zeros_like(p)
            m = state["exp_avg"]
            p.add_(m.lerp(p.grad, 1 - beta1).sign_(), alpha=-group["lr"])
            m.lerp_(p.grad, 1 - beta2)
        return loss


class DecoupledAdamW(_Decoupled):
    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group, p, state in self._params():
            beta1, beta2 = group["betas"]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = int(state["step"].item())
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            step_size = group["lr"] / (1 - beta1**t)
            denom = (v / (1 - beta2**t)).sqrt_().add_(group["eps"])
            p.addcdiv_(m, denom, value=-step_size)
        return loss


def param_groups(model: nn.Module, weight_decay: float, decay_norms: bool = False,
                 decay_embeddings: bool = False) -> list[dict]:
    """Two groups: parameters that decay, and norms / embeddings / biases that (by default) do not."""
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, (LayerNorm, nn.LayerNorm)) and not decay_norms:
            no_decay.update(id(p) for p in module.parameters(recurse=False))
        if isinstance(module, nn.Embedding) and not decay_embeddings:
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            no_decay.add(id(p))
    decay = [p for p in model.parameters() if id(p) not in no_decay]
    rest = [p for p in model.parameters() if id(p) in no_decay]
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
