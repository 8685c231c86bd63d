"""Log-probabilities for the legacy completions API: of each prompt token (``echo``) and each new one.

What lm-eval's ``local-completions`` model needs to score a continuation through the server: the
log-probability of every token given the ones before it, and the top alternatives at each position
(to tell whether the continuation is the greedy one). Scores come from the model's raw distribution,
before any sampling setting changes it (as OpenAI's and vLLM's do). :class:`PromptScorer` scores
prompts a chunk of positions at a time; :func:`token_logprob` scores one new token.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from ..model import KVCache, MPTForCausalLM

TopK = list[tuple[int, float]]

# fp32 log-probabilities held at once while a chunk is reduced: the bound on a scoring request's logits,
# whatever the vocabulary and the chunk (50k vocab: 167 positions per slice).
LOGITS_BYTES = 32 * 2**20


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


class PromptScorer:
    """Every prompt token's log-probability given the ones before it (None for the first) and the ``k`` best
    alternatives at its position, computed ``advance(tokens)`` positions at a time.

    The prompts are scored one after the other into a cache of one prompt's length; ``results`` holds,
    per prompt, the (log-probabilities, top-k lists) once :meth:`advance` returned True.

    Chunks let the server's decode thread run decode steps between them, as it does for prefill: scoring
    whole prompts in one forward stalls every stream meanwhile (benchmarks/bench_serve_harm.py measures it)
    and holds whole-prompt fp32 logits (2,000 tokens x 50k x 4 bytes = 400 MB per prompt). Each chunk's
    logits are reduced at once to the token's own log-probability and the top ``k``, a slice of rows at a
    time (:data:`LOGITS_BYTES`).
    """

    def __init__(self, model: MPTForCausalLM, prompts: list[list[int]], k: int, key: Hashable = None,
                 chunk: int | None = None) -> None:
        self.model, self.prompts, self.k, self.key, self.chunk = model, prompts, k, key, chunk
        self.device = next(model.parameters()).device
        self.results: list[tuple[list[float | None], list[TopK | None]]] = [([None], [None]) for _ in prompts]
        self.prompt = 0  # the prompt being scored
        self.done = 0  # its positions already in the cache
        self.cache: KVCache | None = None
        self.ran = 0

    @property
    def finished(self) -> bool:
        return self.prompt == len(self.prompts)

    @torch.inference_mode()
    def advance(self, tokens: int | None = None) -> bool:
        """Run the next ``tokens`` positions (at most ``chunk``; None: ``chunk``, or the whole prompt) forward;
        True once every prompt is scored. ``ran`` is then the positions this call ran."""
        ids = self.prompts[self.prompt]
        limit = min(x for x in (tokens, self.chunk, len(ids)) if x)
        end = min(self.done + limit, len(ids))
        if self.done == 0:
            self.cache = KVCache(self.model.config.n_layers, capacity=len(ids))
        x = torch.tensor([ids[self.done:end]], device=self.device)
        hidden = self.model.transformer(x, cache=self.cache, use_cache=True).last_hidden_state[0]
        # Position t scores token t + 1: the chunk's last position scores the next chunk's first token.
        targets = torch.tensor(ids[self.done + 1:end + 1], device=self.device)
        lps, tops = self.results[self.prompt]
        rows = max(1, LOGITS_BYTES // (4 * self.model.config.vocab_size))
        for start in range(0, len(targets), rows):
            lp = self.model.logits(hidden[start:start + rows]).float()
            lp = lp.sub_(lp.logsumexp(-1, keepdim=True))  # log_softmax without a second (rows, V) buffer
            lps.extend(lp.gather(1, targets[start:start + rows, None])[:, 0].tolist())
            tops.extend(top_logprobs(lp, self.k))
            del lp
        self.ran = end - self.done
        self.done = end
        if end == len(ids):
            self.prompt, self.done, self.cache = self.prompt + 1, 0, None
        return self.finished

