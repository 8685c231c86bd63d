"""Log-probabilities for the legacy completions API: of each prompt token (``echo``) and each new one.

What lm-eval's ``local-completions`` model needs to score a continuation through the server: the
log-probability of every token given the ones before it, and the top alternatives at each position
(to tell whether the continuation is the greedy one). Scores come from the model's raw
distribution, before any sampling setting changes it (as OpenAI's and vLLM's do).
"""

from __future__ import annotations

import torch

from ..model import MPTForCausalLM

TopK = list[tuple[int, float]]


def top_logprobs(logprobs: torch.Tensor, k: int) -> list[TopK]:
    """The ``k`` best (token id, log-probability) per row of ``(T, V)`` log-probabilities."""
    if k == 0:
        return [[] for _ in range(logprobs.shape[0])]
    values, ids = logprobs.topk(k, dim=-1)
    return [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]


def token_logprob(logits: torch.Tensor, token: int, k: int) -> tuple[float, TopK]:
    """One sampled token's log-probability and the ``k`` best alternatives, from its row's ``(V,)`` logits."""
    lp = logits.float().log_softmax(-1)
    return float(lp[token]), top_logprobs(lp[None], k)[0]


@torch.inference_mode()
def prompt_logprobs(model: MPTForCausalLM, ids: list[int], k: int) -> tuple[list[float | None], list[TopK | None]]:
    """For each prompt token, its log-probability given the ones before it (None for the first) and the
    ``k`` best alternatives at its position."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    lp = model(x).logits[0, :-1].float().log_softmax(-1)
    scores = lp.gather(1, x[0, 1:, None])[:, 0].tolist()
    return [None, *scores], [None, *top_logprobs(lp, k)]
