"""``mpt serve``'s options: a dataclass that imports neither torch nor the web stack.

It lives apart from the server so that ``mpt serve --help`` (built from these fields) answers at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..config import option
from . import options as opts

if TYPE_CHECKING:
    from .api import LLM

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}

# Decode steps through torch.compile over a static cache. For one-shot commands auto is on for CUDA (CUDA
# graphs) and off on CPU, where the compile takes longer than most short generations it speeds up; a server
# compiles in both cases, at start-up (warm_up), for every batch size: compiled steps over packed weights measured
# 1.06-1.40x eager at 1 and 8 clients on CPU (BENCHMARKS.md, compiled decode over packed weights).
CompileMode = Literal["auto", "on", "off"]


def compile_flag(mode: CompileMode) -> bool | None:
    """The engine's ``compile`` argument for one-shot commands: None lets it choose by device."""
    return {"auto": None, "on": True, "off": False}[mode]


def serve_compiles(mode: CompileMode) -> bool:
    """Whether the server's engine compiles its decode steps: auto and on do, on any device."""
    return mode != "off"


@dataclass
class ServeConfig:
    model: str = option("", opts.MODEL, positional=True, required=True)
    tokenizer: str | None = option(None, opts.TOKENIZER)
    device: str | None = option(None, opts.DEVICE)
    dtype: opts.Dtype | None = option(None, opts.DTYPE)
    quantize: Literal["int8"] | None = option(None, opts.QUANTIZE)  # mpt.model.quantize
    compile: CompileMode = option("auto", opts.SERVE_COMPILE)
    host: str = option("127.0.0.1", "address to bind (default: 127.0.0.1, this machine only)")
    port: int = option(8000, "port (0: any free one; the banner names it)")
    api_key: str | None = option(None, "require 'Authorization: Bearer KEY' on /v1 (default: $MPT_API_KEY, else no "
                                 "key; an empty key is refused)")
    model_name: str | None = option(None, "model id clients send (default: the folder name)")
    context_length: int | None = option(None, "prompt + max_tokens limit per request (default: the model's "
                                        "max_seq_len)")
    max_tokens: int | None = option(None, "largest max_tokens allowed (default: the context)")
    max_batch_size: int = option(16, "sequences decoded together")
    max_concurrent: int = option(64, "requests in flight (running or queued); more get HTTP 429")
    max_n: int = option(8, "largest n x prompts of a generating request")
    # lm-eval's scoring requests (echo with max_tokens 0 or 1) are limited by tokens, not by max_n, so its
    # --batch_size 64 is one request.
    max_score_tokens: int | None = option(None, "prompt tokens (x n) a scoring request (echo with max_tokens 0 or "
                                          "1, as lm-eval sends) may hold; not limited by --max-n (default: 32 x "
                                          "the context)")
    log_level: str = option("info", "uvicorn's log level")
    # Limits checked before any work is done.
    max_prompt_chars: int | None = option(None, "prompt characters at most, checked before tokenizing (default: "
                                          "the context x the longest token)")
    max_body_bytes: int = option(8 * 2**20, "largest request body; larger ones get HTTP 413 before they are read")
    body_timeout: float = option(30.0, "seconds a client may take to send its request body (then 408, closed)")
    header_timeout: float = option(10.0, "seconds a client may take to send its request headers (then 408, closed)")
    max_connections: int | None = option(None, "open connections at most; more get HTTP 503 (default: 2 x "
                                         "max_concurrent + 32)")
    allow_origin: list[str] = option(help="browser origin (e.g. http://localhost:3000) allowed to call a server "
                                     "without an API key (repeatable)", repeat=True, factory=list)
    shutdown_grace: float = option(10.0, "on SIGTERM, seconds running requests may take to finish before they are "
                                   "cut with a final event")
    prefill_chunk: int = option(512, "prompt tokens per prefill forward at most (bounds a long prompt's memory; 0: "
                                "no bound)")
    prefill_stall: float = option(1.0, "while rows decode, a joining prompt is read in chunks that each add at most "
                                  "about this many decode steps' time (run inside a decode step: a third), so "
                                  "streams "
                                  "keep flowing (0: chunks of --prefill-chunk tokens)")

    def validate(self) -> ServeConfig:
        """Check what can be checked before the model is loaded."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} is invalid: use 0..65535")
        for name in ("max_batch_size", "max_concurrent", "max_n", "context_length", "max_tokens",
                     "max_prompt_chars", "max_body_bytes", "max_connections", "max_score_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} is invalid: must be >= 1")
        if self.prefill_chunk < 0:
            raise ValueError(f"prefill_chunk={self.prefill_chunk} is invalid: must be >= 0 (0: no bound)")
        if not self.prefill_stall >= 0:
            raise ValueError(f"prefill_stall={self.prefill_stall} is invalid: must be >= 0 decode steps (0: fixed "
                             "prefill_chunk-token chunks)")
        if not self.header_timeout > 0:
            raise ValueError(f"header_timeout={self.header_timeout} is invalid: must be > 0 seconds")
        for name in ("body_timeout", "shutdown_grace"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)} is invalid: must be >= 0 seconds")
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"compile={self.compile!r} is invalid: use auto, on or off")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"quantize={self.quantize!r} is invalid: use int8 (or none)")
        self.allow_origin = [o.rstrip("/") for o in self.allow_origin]
        if self.api_key is not None and (not self.api_key or self.api_key != self.api_key.strip()):
            # An empty key once counted as "a key is set": the no-key protections were skipped, and an empty
            # bearer token matched it.
            raise ValueError(f"api_key={self.api_key!r} is invalid: a key must be non-empty, without leading or "
                             "trailing whitespace (leave --api-key out to serve without a key, this machine only)")
        if self.api_key is None:
            self.api_key = os.environ.get("MPT_API_KEY", "").strip() or None  # empty: no key, as if unset
        return self

    def resolve(self, llm: LLM) -> ServeConfig:
        """Fill the defaults that come from the model."""
        self.validate()
        self.model_name = self.model_name or Path(str(self.model)).name or "mpt"
        self.context_length = self.context_length or llm.model.config.max_seq_len
        if self.context_length < 2:
            raise ValueError(f"context_length={self.context_length} is invalid: must be >= 2")
        self.max_tokens = min(self.max_tokens or self.context_length, self.context_length - 1)
        self.max_score_tokens = self.max_score_tokens or 32 * self.context_length
        if self.max_prompt_chars is None:
            # No prompt with more characters than this can fit in the context, whatever it says.
            longest = max((len(t) for t in llm.tokenizer.get_vocab()), default=1)
            self.max_prompt_chars = self.context_length * max(longest, 1)
        return self

    def exposure_warning(self) -> str | None:
        """A warning when anyone on the network can use this server: bound beyond loopback with no key."""
        if self.api_key or self.host in LOOPBACK_NAMES:
            return None
        return (f"warning: serving on {self.host} without an API key: anyone who can reach this machine can use "
                "the model; set --api-key (or $MPT_API_KEY), or bind 127.0.0.1")
