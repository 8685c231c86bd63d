"""Next-token cross-entropy fused with the output projection, in chunks of tokens.

With MPT's 50,432-token vocabulary the logits of a batch dwarf every activation in a small or
mid-sized model: 2,048 tokens give 103M logits (413 MB in fp32), which are written, read by
log-softmax, read again by its backward, zero-filled and copied. Here each chunk of tokens is
projected, its loss and its gradients (to the hidden states and to the output matrix) are
computed at once, and the chunk's logits are dropped. The matrix products are the same; the
memory traffic (and peak memory) falls by the vocabulary-sized factor. Liger-Kernel's
FusedLinearCrossEntropy does this with Triton on GPUs; we need it on CPUs too, so it is written
here in plain PyTorch.
"""

from __future__ import annotations

import math

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, scale, chunk_size):  # noqa: D401 - autograd signature
        n_valid = (targets != -100).sum().clamp(min=1)
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_grad else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]
            t = targets[start:start + chunk_size]
            logits = (h @ weight.t()).float()
            if scale is not None:
                logits.mul_(scale)
            valid = t != -100
            safe_t = t.clamp(min=0)
            # one fused pass (logsumexp would take five over the vocabulary)
            logp = torch.log_softmax(logits, dim=-1)
            del logits
            total -= (logp.gather(1, safe_t[:, None]).squeeze(1) * valid).sum()
            if needs_grad:
                # d loss / d logits = (softmax - one_hot) / n_valid on counted rows, 0 elsewhere
                probs = logp.exp_()
                probs[torch.arange(len(t), device=t.device), safe_t] -= 1
                probs.mul_((valid.float() / n_valid * (scale if scale is not None else 1.0))[:, None])
                g = probs.to(h.dtype)
                torch.mm(g, weight, out=grad_hidden[start:start + chunk_size])
                if g.dtype == torch.float32:
                    grad_weight.addmm_(g.t(), h)  # accumulate inside the matmul, no temporary
                else:
                    grad_weight += (g.t() @ h).float()
        if needs_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         scale: float | None = None, chunk_size: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``(hidden @ weight.T) * scale`` against ``targets`` (-100 = ignore).

    ``hidden``: (N, d); ``weight``: (V, d); ``targets``: (N,). Under autocast the products run in
    the autocast dtype and the softmax in float32, as an autocast ``F.linear`` + float loss would.
    ``chunk_size`` defaults to the power of two that keeps one chunk's fp32 logits near 128 MB.
    """
    if chunk_size is None:
        chunk_size = max(64, min(4096, 2 ** int(math.log2(max(1, 2**25 // weight.shape[0])))))
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, scale, chunk_size)
