"""ChatML, MPT-7B-Chat's conversation format, written out in one place.

``<|im_start|>role\\ncontent<|im_end|>\\n`` per message. Finetuning (finetune.py) renders chats
with it and trains on the character spans it reports; chat prompts (``mpt.infer.chat``) render with
it and add the assistant's header. :data:`CHATML_TEMPLATE` is the same format as a Jinja template
for tokenizers (tests check that both give the same text).

A leaf module (it imports nothing), beside the packages rather than in ``mpt.data``: ``mpt chat
--help`` imports the chat code, and ``mpt.data``'s package import would add numpy and the prep code.
"""

from __future__ import annotations

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
