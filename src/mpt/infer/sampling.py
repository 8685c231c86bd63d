"""Per-request sampling settings, validated before any work starts, and picking each row's next token."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# Below this temperature the distribution is the argmax to float precision, and logits / temperature
# overflows float32 (1e-40 made every score inf and the probabilities NaN): decode greedily instead.
GREEDY_BELOW = 1e-3


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off; > 1 discourages tokens already in prompt or output
    stop: list[str] = field(default_factory=list)  # generation ends before the first of these strings
    seed: int | None = None
    logprobs: int | None = None  # report each new token's log-probability and this many top alternatives
    logit_bias: dict[int, float] | None = None  # added to these tokens' scores before picking (OpenAI's field)
    _bias: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    def bias_tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``logit_bias`` as (token ids, float32 values) on ``device``: made once, read at every token."""
        if self._bias is None or self._bias[0].device != device:
            self._bias = (torch.tensor(list(self.logit_bias), device=device),
                          torch.tensor(list(self.logit_bias.values()), device=device, dtype=torch.float32))
        return self._bias

    def validate(self) -> SamplingParams:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"{name}={getattr(self, name)!r} is invalid: {allowed}")

        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise bad("max_new_tokens", "must be an integer >= 1")
        if not self.temperature >= 0:
            raise bad("temperature", "must be >= 0 (0 is greedy)")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "must be in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", "must be an integer >= 0 (0 is off)")
        if not self.repetition_penalty > 0:
            raise bad("repetition_penalty", "must be > 0 (1 is off)")
        if not all(isinstance(s, str) for s in self.stop):
            raise bad("stop", "must be a string or a list of strings")
        if self.seed is not None and not isinstance(self.seed, int):
            raise bad("seed", "must be an integer or None")
        if self.logit_bias and not all(isinstance(t, int) and t >= 0 and math.isfinite(b)
                                       for t, b in self.logit_bias.items()):
            raise bad("logit_bias", "must map token ids (integers >= 0) to finite numbers")
        return self

    @property
    def greedy(self) -> bool:
        """The next token is the argmax of the scores plus ``logit_bias`` (no temperature or penalty), so rows
        with these settings can be picked together (:func:`greedy_tokens`)."""
        return self.temperature < GREEDY_BELOW and self.repetition_penalty == 1.0


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row from ``(B, V)`` logits: greedy at temperature 0."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def greedy_tokens(logits: torch.Tensor) -> list[int | None]:
    """The argmax of every row of ``(B, V)`` logits in one pass (one wait for the device, not one per row).

    None for a row whose best score is not finite (NaN, +inf or all -inf): :func:`pick_token` has the
    rules for those, and the plain argmax would differ from them there.
    """
    best, ids = _row_max(logits)
    return [i if math.isfinite(b) else None for b, i in zip(best.tolist(), ids.tolist(), strict=True)]


BLOCK = 64  # vocabularies are padded to a multiple of 64 (MPT: 50,432)


def _row_max(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits.max(dim=-1)``: each row's best score and the first index holding it.

    On CPU torch's max-with-index scans a long row one element at a time, while ``amax`` (no index) is
    vectorised: over blocks of 64 scores, the block maxima, then the best block, then the index within
    it, is several times faster at 8 rows x 50,432 (benchmarks/bench_kernels.py; BENCHMARKS.md).
    The first maximal block holds the first maximal index, so ties resolve as ``max`` does; a NaN
    anywhere makes its block's and its row's maximum NaN, as it does for ``max``.
    """
    rows, vocab = logits.shape
    if logits.device.type != "cpu" or vocab % BLOCK:
        return logits.max(dim=-1)
    blocks = logits.view(rows, vocab // BLOCK, BLOCK)
    best, block = blocks.amax(dim=-1).max(dim=-1)
    within = blocks[torch.arange(rows), block].argmax(dim=-1)
    return best, block * BLOCK + within


def pick_token(logits: torch.Tensor, params: SamplingParams, seen: list[int],
               generator: torch.Generator | None) -> int:
    """One token from one row's ``(V,)`` logits. ``seen``: prompt and output ids, for the repetition penalty."""
    logits = logits[None]
    if params.repetition_penalty != 1.0 and seen:
        # CTRL / transformers' rule: shrink a seen token's score towards "less likely" whatever its sign.
        idx = torch.tensor(seen, device=logits.device).unique()[None]
        score = logits.gather(1, idx)
        score = torch.where(score > 0, score / params.repetition_penalty, score * params.repetition_penalty)
        logits = logits.scatter(1, idx, score)
    if params.logit_bias:
        ids, bias = params.bias_tensors(logits.device)
        logits = logits.float().index_add(1, ids, bias[None])
    logits = _sanitised(logits)
    temperature = params.temperature if params.temperature >= GREEDY_BELOW else 0.0
    return int(sample_next(logits, temperature, params.top_k, params.top_p, generator)[0])


def _sanitised(logits: torch.Tensor) -> torch.Tensor:
    """float32 scores with NaN as "never" and +inf as the largest float, so softmax and multinomial cannot fail.

    Raises when no token has a finite score: then the model's output is broken and only this row should fail.
    """
    # neginf given too: by default nan_to_num turns -inf into a finite score, and a row of nothing but -inf
    # would yield token 0 instead of the error below
    logits = torch.nan_to_num(logits.float(), nan=float("-inf"), posinf=torch.finfo(torch.float32).max,
                              neginf=float("-inf"))
    top = logits.max()
    if not torch.isfinite(top):
        raise ValueError("the model gave no finite score for any token (NaN or -inf logits)")
    # Shifted so the best score is 0: dividing by a small temperature can no longer overflow to +inf.
    return logits - top
