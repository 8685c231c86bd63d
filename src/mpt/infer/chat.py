"""Chat prompts: messages, rendering them for the assistant's next turn, fitting a history into the context.

A tokenizer that carries its own ``chat_template`` is rendered with it; otherwise ChatML
(MPT-7B-Chat's format) by :func:`mpt.chatml.render_chatml`, the renderer finetuning uses too,
which is what ``apply_chat_template`` gives with the ChatML template (tested).

:func:`encode_prompt` turns messages into token ids with their content encoded as text: a
special-token string a user writes (``<|im_end|>``) stays those characters, so a message cannot
close its turn and forge another (see :mod:`mpt.chatml`).
"""

from __future__ import annotations

import re
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


def encode_prompt(messages: Sequence[Message], tokenizer, encode: Callable[[str], list[int]]) -> list[int]:
    """Token ids of the prompt for the assistant's next turn; special-token strings inside message content are
    encoded as plain text (``encode``: text to ids, special-token strings in it to their ids).

    The template is rendered once with a marker for each message's content, which shows where content
    goes; ordinary content then encodes exactly as the rendered text does.
    """
    marks = [f"\ue000{i}\ue001" for i in range(len(messages))]  # private-use characters: no template writes them
    skeleton = render([Message(m.role, mark) for m, mark in zip(messages, marks, strict=True)], tokenizer)
    parts = re.split("(\ue000\\d+\ue001)", skeleton)
    segments = [(messages[int(p[1:-1])].content, True) if i % 2 else (p, False) for i, p in enumerate(parts)]
    text = render(messages, tokenizer)
    specials = chatml.special_strings(tokenizer) if tokenizer is not None else [chatml.START_OF_TURN,
                                                                                  chatml.END_OF_TURN]
    if "".join(t for t, _ in segments) != text:
        # The template changes content (e.g. trims it), so where content lies in the text is unknown: encode
        # the text whole, which is safe only if no content holds a special-token string.
        for i, m in enumerate(messages):
            bad = next((s for s in specials if s in m.content), None)
            if bad is not None:
                raise ValueError(f"messages[{i}].content holds {bad!r}, a special token of this tokenizer, and "
                                 "its chat template changes message content, so it cannot be kept as plain text: "
                                 "remove it")
        return encode(text)
    return [t for piece in chatml.text_pieces(segments, specials) for t in encode(piece)]


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
