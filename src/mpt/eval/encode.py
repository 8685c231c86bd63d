"""Prompt strings -> token ids, as LLM Foundry tokenizes them, and fitting them in the window.

The preamble (prompt string + demonstrations) is tokenized with the tokenizer's special tokens,
the example's context and the scored continuation without, and the pieces are concatenated
(LLM Foundry's ``tokenize_example``). A prompt too long for the model's window first loses
demonstrations, then is cut from the left; the scored continuation is never cut. Both kinds of
truncation are counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .tasks import EvalTaskError, Prompt


def needs_prefix_space(tokenizer) -> bool:
    """GPT-style BPE (GPT-NeoX, GPT-2) encodes " a" as one token; SentencePiece does not."""
    return len(tokenizer(" a", add_special_tokens=False)["input_ids"]) == 1


@dataclass
class Encoded:
    """Token ids of one example: ``contexts[i] + continuations[j]`` are the sequences scored."""

    prompt: Prompt  # as finally used (fewer demonstrations if some were dropped)
    contexts: list[list[int]]
    continuations: list[list[int]]
    fewshot_dropped: int = 0
    context_cut: int = 0  # tokens removed from the left of the longest context


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _context_ids(tokenizer, prompt: Prompt) -> list[list[int]]:
    preamble = _ids(tokenizer, prompt.preamble, True)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and len(preamble) > 1 and preamble[-1] == eos:
        preamble = preamble[:-1]  # a tokenizer that appends EOS must not put it mid-prompt
    return [preamble + _ids(tokenizer, c, False) for c in prompt.contexts]


def encode_prompt(prompt: Prompt, tokenizer, max_len: int, rerender: Callable[[list[int]], Prompt],
                  reserve: int = 0, where: str = "") -> Encoded:
    """Tokenize ``prompt`` so that every sequence, plus ``reserve`` generated tokens, fits ``max_len``.

    ``rerender(shots)`` renders the same example with fewer demonstrations.
    """
    conts = [_ids(tokenizer, c, False) for c in prompt.continuations]
    need = max((len(c) for c in conts), default=0) + reserve
    if need >= max_len:
        raise EvalTaskError(f"{where}: the scored continuation plus generation ({need} tokens) does not fit the "
                            f"model's window of {max_len} tokens; raise --max-seq-len or drop this example")
    contexts = _context_ids(tokenizer, prompt)
    dropped = 0
    while max(len(c) for c in contexts) + need > max_len and prompt.fewshot:
        prompt = rerender(prompt.fewshot[:-1])
        dropped += 1
        contexts = _context_ids(tokenizer, prompt)
    room = max_len - need
    cut = max(0, max(len(c) for c in contexts) - room)
    if cut:
        contexts = [c[-room:] for c in contexts]
    if any(len(c) == 0 for c in contexts) and conts:
        raise EvalTaskError(f"{where}: the context is empty, so the first scored token has nothing to condition "
                            "on; give the example a context")
    return Encoded(prompt, contexts, conts, fewshot_dropped=dropped, context_cut=cut)
