"""Admission: the checks every request passes before the server works for it, the same for every route.

:meth:`Admission.check`, before tokenizing: the model's name, the choices (--max-n), the prompt's
characters. :meth:`Admission.admitted`: a place under --max-concurrent (429 when none is free, 503
while draining), held while the prompt is tokenized off the event loop and its tokens checked (ids in
the vocabulary, a scoring request within --max-score-tokens, the prompt within the context).
:meth:`Admission.sampling_within_limits`: max_tokens and logit_bias within the context and vocabulary.
Bytes and connections are limited before any of this (guard.py, connections.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from .api import LLM
from .chat import END_OF_TURN, Message, encode_prompt
from .protocol import APIError, ChatCompletionRequest, CompletionRequest
from .sampling import SamplingParams
from .serve_config import ServeConfig

Request = CompletionRequest | ChatCompletionRequest


def chat_messages(req: ChatCompletionRequest) -> list[Message]:
    return [Message("system" if m.role == "developer" else m.role, m.text) for m in req.messages]


class Admission:
    def __init__(self, llm: LLM, cfg: ServeConfig, running: Callable[[], int]) -> None:
        self.llm, self.cfg = llm, cfg
        self.vocab = llm.model.config.vocab_size
        self.running = running  # requests with a job on the scheduler
        self.holding = 0  # requests holding a place without a job: tokenizing, or scoring a prompt only
        self.draining = False  # SIGTERM arrived: new requests get 503

    @property
    def in_flight(self) -> int:
        return self.running() + self.holding

    def check(self, req: Request) -> None:
        """What can be refused before the text is tokenized: the model's name, the choices, the characters."""
        if req.model != self.cfg.model_name:
            raise APIError(404, f"The model '{req.model}' does not exist; this server serves '{self.cfg.model_name}'",
                           param="model", code="model_not_found")
        if isinstance(req, CompletionRequest):
            req.check_scoring()
            texts, param, prompts = [p for p in req.prompts if isinstance(p, str)] or [""], "prompt", len(req.prompts)
            scoring = req.scoring
        else:
            texts, param, prompts, scoring = ["".join(m.content for m in chat_messages(req))], "messages", 1, False
        # (scoring requests, lm-eval's batches of prompts, are limited by their tokens: _check_score_tokens)
        if req.n > self.cfg.max_n or (req.n * prompts > self.cfg.max_n and not scoring):
            raise APIError(400, f"n={req.n} x {prompts} prompt(s) is more than the limit of {self.cfg.max_n} "
                                "choices per request (--max-n)", param="n")
        chars = max(len(t) for t in texts)
        if chars > self.cfg.max_prompt_chars:
            raise APIError(400, f"the {param} has {chars} characters; this server accepts at most "
                                f"{self.cfg.max_prompt_chars} (--max-prompt-chars), more than its context of "
                                f"{self.cfg.context_length} tokens can hold", param=param,
                           code="context_length_exceeded")

    @asynccontextmanager
    async def admitted(self, req: Request) -> AsyncIterator[list[list[int]]]:
        """Inside: a place under --max-concurrent, and the prompts' token ids (tokenized on a worker thread: a
        long prompt must not stall the event loop), within the vocabulary and the context."""
        if self.draining:
            raise APIError(503, "the server is shutting down; retry on another instance", code="server_shutting_down")
        if self.in_flight >= self.cfg.max_concurrent:
            raise APIError(429, f"too many requests in flight (limit {self.cfg.max_concurrent}); retry shortly",
                           code="rate_limit_exceeded", type="rate_limit_error")
        self.holding += 1
        try:
            prompts = await asyncio.to_thread(self._tokenize, req)
            self._check_context(req, prompts)
            yield prompts
        finally:
            self.holding -= 1

    def _tokenize(self, req: Request) -> list[list[int]]:
        if isinstance(req, ChatCompletionRequest):
            try:
                return [encode_prompt(chat_messages(req), self.llm.tokenizer, self.llm.encode)]
            except ValueError as err:
                raise APIError(400, str(err), param="messages") from None
        prompts = [self.validate_token_ids(p, i) if isinstance(p, list) else self._encode(p)
                   for i, p in enumerate(req.prompts)]
        if req.scoring:
            self._check_score_tokens(req, prompts)
        return prompts

    def _encode(self, text: str) -> list[int]:
        # An empty prompt starts from the document separator, as for GPT-style models.
        return self.llm.encode(text) or [self.llm.tokenizer.eos_token_id or 0]

    def validate_token_ids(self, ids: list[int], index: int) -> list[int]:
        """A prompt sent as token ids, refused unless every id is in this model's vocabulary."""
        bad = next((t for t in ids if t >= self.vocab), None)
        if bad is not None:
            raise APIError(400, f"prompt {index} holds token id {bad}, outside this model's vocabulary "
                                f"(ids 0..{self.vocab - 1})", param="prompt", code="invalid_token_id")
        return ids

    def _check_score_tokens(self, req: CompletionRequest, prompts: list[list[int]]) -> None:
        """A scoring request's prompt tokens (times n), within --max-score-tokens."""
        total = req.n * sum(len(p) for p in prompts)
        if total > self.cfg.max_score_tokens:
            raise APIError(400, f"the {len(prompts)} prompt(s) x n={req.n} hold {total} tokens to score; this server "
                                f"scores at most {self.cfg.max_score_tokens} per request (--max-score-tokens): send "
                                "fewer prompts per request (e.g. a smaller lm-eval --batch_size)", param="prompt",
                           code="too_many_tokens")

    def _check_context(self, req: Request, prompts: list[list[int]]) -> None:
        """Refused unless there is room after the longest prompt."""
        longest = max(len(p) for p in prompts)
        if longest >= self.cfg.context_length:
            raise APIError(400, f"This model's maximum context length is {self.cfg.context_length} tokens; the "
                                f"prompt has {longest}", param="messages" if hasattr(req, "messages") else "prompt",
                           code="context_length_exceeded")

    def sampling_within_limits(self, req: Request, prompts: list[list[int]]) -> SamplingParams:
        """The request's sampling settings, refused unless max_tokens fits the server's limit and the context
        after the longest prompt, and logit_bias names tokens of the vocabulary."""
        cfg = self.cfg
        if isinstance(req, ChatCompletionRequest):
            max_tokens, default_max, stop, logprobs = (req.max_completion_tokens or req.max_tokens, None,
                                                       req.stops + [END_OF_TURN], None)
        else:
            max_tokens, default_max, stop, logprobs = req.max_tokens, 16, req.stops, req.logprobs
        longest = max(len(p) for p in prompts)
        if max_tokens is None:
            max_tokens = min(default_max or cfg.max_tokens, cfg.max_tokens, cfg.context_length - longest)
        if max_tokens > cfg.max_tokens:
            raise APIError(400, f"max_tokens={max_tokens} is above this server's limit of {cfg.max_tokens}",
                           param="max_tokens")
        if longest + max_tokens > cfg.context_length:
            raise APIError(400, f"This model's maximum context length is {cfg.context_length} tokens. However, "
                                f"you requested {longest + max_tokens} tokens ({longest} in the prompt, "
                                f"{max_tokens} for the completion)", param="max_tokens",
                           code="context_length_exceeded")
        bias = req.token_bias
        if bias and max(bias) >= self.vocab:
            raise APIError(400, f"logit_bias names token id {max(bias)}, outside this model's vocabulary (ids "
                                f"0..{self.vocab - 1})", param="logit_bias", code="invalid_token_id")
        return SamplingParams(max_tokens, req.temperature, req.top_p, req.top_k, req.repetition_penalty,
                              stop, req.seed, logprobs, bias).validate()
