"""Chat prompts: messages, rendering them for the assistant's next turn, fitting a history into the context.

A tokenizer that carries its own ``chat_template`` is rendered with it; otherwise ChatML
(MPT-7B-Chat's format) by :func:`mpt.chatml.render_chatml`, the renderer finetuning uses too,
which is what ``apply_chat_template`` gives with the ChatML template (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .. import chatml
from ..chatml import END_OF_TURN as END_OF_TURN  # re-exported: the server and the REPL stop on it

ROLES = ("system", "user", "assistant")


@dataclass
class Message:
    role: str
    content: str

    def validate(self) -> Message:
        if self.role not in ROLES:
            raise ValueError(f"message role {self.role!r} is invalid: use one of {', '.join(ROLES)}")
        if not isinstance(self.content, str):
            raise ValueError(f"message content must be a string, got {type(self.content).__name__}")
        return self


def render_chatml(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """ChatML text of these messages (by default with the assistant's header after them)."""
    return chatml.render_chatml(((m.role, m.content) for m in messages), add_generation_prompt)[0]


def render(messages: Sequence[Message], tokenizer=None) -> str:
    """The prompt for the assistant's next turn."""
    for m in messages:
        m.validate()
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                             tokenize=False, add_generation_prompt=True)
    return render_chatml(messages)


def fit_history(messages: list[Message], count_tokens: Callable[[str], int], budget: int,
                tokenizer=None) -> tuple[list[Message], int]:
    """Drop the oldest messages (never the system prompt or the last message) until the prompt fits ``budget``
    tokens; return the kept messages and how many were dropped. The kept conversation starts with a user
    message: an assistant reply without its question would confuse the model."""
    system = [m for m in messages[:1] if m.role == "system"]
    turns = messages[len(system):]
    dropped = 0
    while len(turns) > 1 and (count_tokens(render(system + turns, tokenizer)) > budget or turns[0].role != "user"):
        turns = turns[1:]
        dropped += 1
    return system + turns, dropped
