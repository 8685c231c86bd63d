"""`mpt chat`: an interactive ChatML conversation in the terminal, replies streamed as they are generated."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from ..config import option
from . import options as opts
from .chat import END_OF_TURN, Message, fit_history, render

if TYPE_CHECKING:  # annotations only: `mpt chat --help` must not import torch
    from .api import LLM

HELP = "commands: /reset (forget the conversation), /exit (or Ctrl-D)"


@dataclass
class ChatConfig:
    system: str | None = option(None, "system prompt")
    max_new_tokens: int | None = option(None, "tokens per reply (default: 256, at most half the context)")
    temperature: float = option(0.7, opts.TEMPERATURE)
    top_p: float = option(0.95, opts.TOP_P)
    top_k: int = option(0, opts.TOP_K)
    repetition_penalty: float = option(1.0, opts.REPETITION_PENALTY)
    seed: int | None = option(None, opts.SEED)
    context_length: int | None = option(None, "prompt + reply tokens (default: max_seq_len)")

    def validate(self, llm: LLM) -> ChatConfig:
        self.context_length = self.context_length or llm.model.config.max_seq_len
        if self.max_new_tokens is None:
            self.max_new_tokens = min(256, self.context_length // 2)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.context_length <= self.max_new_tokens:
            raise ValueError(f"context_length={self.context_length} leaves no room for a prompt after "
                             f"max_new_tokens={self.max_new_tokens}: lower --max-new-tokens")
        return self


def _read_piped(out: TextIO) -> Callable[[str], str]:
    """Input from a pipe is not echoed: ``input("you> ")`` would leave the prompt on the reply's line, so the
    line read is written after the prompt instead, and the transcript reads as a typed session."""
    def read(prompt: str) -> str:
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        line = line.rstrip("\n")
        out.write(f"{prompt}{line}\n")
        return line

    return read


def run_chat(llm: LLM, cfg: ChatConfig, read: Callable[[str], str] | None = None, out: TextIO = sys.stdout,
             err: TextIO = sys.stderr) -> list[Message]:
    """Loop until /exit or end of input; return the final history."""
    cfg.validate(llm)
    if read is None:
        read = input if sys.stdin.isatty() else _read_piped(out)
    start = [Message("system", cfg.system)] if cfg.system else []
    history = list(start)
    print(HELP, file=err)
    turn = 0
    while True:
        try:
            line = read("you> ")
        except EOFError:
            break
        if line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            history = list(start)
            print("[conversation reset]", file=err)
            continue
        if not line.strip():
            continue
        history.append(Message("user", line))
        budget = cfg.context_length - cfg.max_new_tokens
        history, dropped = fit_history(history, lambda t: len(llm.encode(t)), budget, llm.tokenizer)
        if dropped:
            print(f"[context full: dropped the {dropped} oldest message(s) to fit {budget} prompt tokens]", file=err)
        prompt = render(history, llm.tokenizer)
        if len(llm.encode(prompt)) > budget:
            print(f"[your message alone is longer than the {budget} prompt tokens allowed: not sent]", file=err)
            history.pop()
            continue
        out.write("assistant> ")
        reply = []
        seed = None if cfg.seed is None else cfg.seed + turn
        for chunk in llm.stream(prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k,
                                cfg.repetition_penalty, stop=[END_OF_TURN], seed=seed):
            out.write(chunk.text)
            out.flush()
            reply.append(chunk.text)
        out.write("\n")
        history.append(Message("assistant", "".join(reply)))
        turn += 1
    return history
