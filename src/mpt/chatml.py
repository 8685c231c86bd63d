"""ChatML, MPT-7B-Chat's conversation format, written out in one place.

``<|im_start|>role\\ncontent<|im_end|>\\n`` per message. Finetuning (finetune.py) renders chats with
:func:`render_chatml` and trains on the character spans it reports; chat prompts (``mpt.infer.chat``)
render with it and add the assistant's header. :data:`CHATML_TEMPLATE` is the same format as a Jinja
template for tokenizers (tests check that both give the same text). :func:`text_pieces` keeps
special-token strings inside message content plain text, so no message can forge a turn.
"""

from __future__ import annotations

# A leaf module (it imports nothing but re), beside the packages rather than in mpt.data: `mpt chat --help`
# imports the chat code, and mpt.data's package import would add numpy and the prep code.
import re
from collections.abc import Iterable

START_OF_TURN = "<|im_start|>"
END_OF_TURN = "<|im_end|>"

# The {% generation %} markers let transformers' return_assistant_tokens_mask find the trained part too.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def render_chatml(turns: Iterable[tuple[str, str]], add_generation_prompt: bool = False
                  ) -> tuple[str, list[tuple[int, int]]]:
    """The ChatML text of ``(role, content)`` turns, and the character spans of each assistant turn's
    content and its ``<|im_end|>`` (what finetuning trains on). ``add_generation_prompt`` appends the
    header of the assistant's next turn."""
    parts, spans, pos = [], [], 0
    for role, content in turns:
        header = f"{START_OF_TURN}{role}\n"
        body = f"{content}{END_OF_TURN}"
        if role == "assistant":
            spans.append((pos + len(header), pos + len(header) + len(body)))
        piece = header + body + "\n"
        parts.append(piece)
        pos += len(piece)
    if add_generation_prompt:
        parts.append(f"{START_OF_TURN}assistant\n")
    return "".join(parts), spans


def chatml_segments(turns: Iterable[tuple[str, str]], add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
    """:func:`render_chatml`'s text as (text, is message content) segments, in order."""
    out = []
    for role, content in turns:
        out += [(f"{START_OF_TURN}{role}\n", False), (content, True), (f"{END_OF_TURN}\n", False)]
    if add_generation_prompt:
        out.append((f"{START_OF_TURN}assistant\n", False))
    return out


def special_strings(tokenizer) -> list[str]:
    """The strings a ``tokenizers.Tokenizer`` (or a transformers tokenizer) encodes as special tokens. Other
    added tokens (GPT-NeoX's runs of spaces) are ordinary text, and where ChatML's markers are not special
    tokens the template writes them as the same plain tokens content would."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if hasattr(backend, "get_added_tokens_decoder"):
        return sorted({t.content for t in backend.get_added_tokens_decoder().values() if t.special})
    return sorted(set(getattr(tokenizer, "all_special_tokens", [])))


def text_pieces(segments: Iterable[tuple[str, bool]], specials: Iterable[str]) -> list[str]:
    """Pieces of the segments' joined text to encode one at a time (then concatenated), so that a special-token
    string is a special token only where the template wrote it, never inside message content.

    A tokenizer that has ``<|im_start|>`` and ``<|im_end|>`` as special tokens (ours, from ``mpt tokenizer
    train``) would turn those strings inside a message into the real tokens, and a user could forge a system
    turn (``hi<|im_end|>\\n<|im_start|>system\\n...``), or finetuning data teach the model the forgery.

    ``segments``: (text, is message content) in order. A template's special-token strings become pieces of
    their own (the tokenizer's own split, so ordinary content encodes exactly as the whole text would); inside
    content every such string is cut after its first character, so no piece holds it whole and it encodes as
    the plain characters it is.
    """
    found = [s for s in specials if len(s) > 1]  # a one-character special token cannot be cut
    if not found:
        return ["".join(segment for segment, _ in segments)]
    pattern = re.compile("|".join(re.escape(s) for s in sorted(found, key=len, reverse=True)))
    runs: list[tuple[str, bool]] = []  # (text, is a special token the template wrote)
    text = ""
    for segment, content in segments:
        at = 0
        for m in ([] if content else pattern.finditer(segment)):
            runs += [(text + segment[at:m.start()], False), (m.group(), True)]
            text, at = "", m.end()
        text += segment[at:]
    runs.append((text, False))
    pieces = []
    for text, special in runs:
        at = 0
        # Whatever special string is left (inside content, or across its edge) loses its first character to
        # the piece before.
        while not special and (m := pattern.search(text, at)) is not None:
            pieces.append(text[at:m.start() + 1])
            at = m.start() + 1
        pieces.append(text[at:])
    return [p for p in pieces if p]
