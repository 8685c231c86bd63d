"""``mpt serve``'s options: a dataclass that imports neither torch nor the web stack.

It lives apart from the server so that ``mpt serve --help`` (built from these fields) answers at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .api import LLM

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}

# Decode steps through torch.compile over a static cache: auto is on for CUDA (CUDA graphs), off on CPU,
# where each new batch shape costs a compile of tens of seconds for a 1.2-1.5x faster small-model step.
CompileMode = Literal["auto", "on", "off"]


def compile_flag(mode: CompileMode) -> bool | None:
    """The engine's ``compile`` argument: None lets it choose by device."""
    return {"auto": None, "on": True, "off": False}[mode]


@dataclass
class ServeConfig:
    model: str = ""
    tokenizer: str | None = None
    device: str | None = None
    dtype: str | None = None
    quantize: Literal["int8"] | None = None  # int8 weights for the linear layers (mpt.model.quantize)
    compile: CompileMode = "auto"  # compiled decode steps (auto: on CUDA only)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # None: $MPT_API_KEY, else no key required
    model_name: str | None = None  # default: the checkpoint folder's name
    context_length: int | None = None  # prompt + max_tokens; default: the model's max_seq_len
    max_tokens: int | None = None  # largest max_tokens a request may ask for; default: the context
    max_batch_size: int = 16  # rows decoded together
    max_concurrent: int = 64  # requests in flight, running or waiting; more get 429
    max_n: int = 8  # choices per request (n x prompts)
    # Prompt tokens (x n) a scoring request (echo with max_tokens 0 or 1: lm-eval's) may send; such requests
    # are not limited by max_n, so lm-eval's --batch_size 64 is one request. Default: 32 x context_length.
    max_score_tokens: int | None = None
    log_level: str = "info"
    # Limits checked before any work (CLI: --max-prompt-chars, --max-body-bytes, --max-connections).
    max_prompt_chars: int | None = None  # default: context_length x the longest token, in characters
    max_body_bytes: int = 8 * 2**20  # larger request bodies get 413 before they are read
    body_timeout: float = 30.0  # seconds a client may take to send its request body (then 408)
    header_timeout: float = 10.0  # seconds a client may take to send its request line and headers (then 408, closed)
    max_connections: int | None = None  # open connections; more get 503 from uvicorn (default: 2 x max_concurrent + 32)
    # Browser origins (e.g. http://localhost:3000) allowed to call a server that has no API key (--allow-origin).
    allow_origin: list[str] = field(default_factory=list)
    shutdown_grace: float = 10.0  # after SIGTERM, seconds running rows may finish before they are cut
    # Prompt tokens per prefill forward at most (0: no bound): bounds a long prompt's activations.
    prefill_chunk: int = 512
    # While rows decode, a joining prompt is prefilled in chunks each taking about this many decode steps,
    # so the running rows' inter-token gap stays near (1 + this) x a plain step (0: prefill_chunk-token chunks).
    prefill_stall: float = 1.0

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
