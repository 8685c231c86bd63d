"""Finetuning data: instruction pairs and ChatML chats, tokenized with a loss mask.

:func:`load_finetune` reads one JSON object per line: ``{"prompt", "response"}`` (loss on the response
and the EOS appended to it) or ``{"messages": [{"role", "content"}, ...]}`` rendered in ChatML (ids equal
``apply_chat_template`` with :data:`~mpt.chatml.CHATML_TEMPLATE`; loss on each assistant turn's content
and its ``<|im_end|>``). Over-long examples follow ``FinetuneConfig.truncation`` (``truncate``, ``drop``,
``error``), counted in ``FinetuneStats``. Batches are padded (:func:`pad_collate`) or packed
(:func:`plan_packing`, :func:`collate_packed`): each packed token carries a ``sequence_id`` for the
model's ``attn_uses_sequence_id``, and a packed batch's loss equals the target-weighted mean of its
examples' losses alone. Long-context samples are pretraining-style: ``mpt prep --seq-len 65536``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

import torch

from ..chatml import CHATML_TEMPLATE as CHATML_TEMPLATE  # re-exported: callers that import it from here
from ..chatml import chatml_segments, render_chatml, special_strings, text_pieces
from .readers import DataInputError, read_json_lines

IGNORE = -100


@dataclass
class FinetuneConfig:
    max_seq_len: int = 2048
    # over-long examples: "truncate" (the first max_seq_len tokens; dropped if none is left to train on),
    # "drop" or "error"
    truncation: str = "truncate"

    def validate(self) -> None:
        if self.max_seq_len < 2:
            raise ValueError(f"max_seq_len={self.max_seq_len} must be >= 2")
        if self.truncation not in ("truncate", "drop", "error"):
            raise ValueError(f"truncation={self.truncation!r}; expected 'truncate', 'drop' or 'error'")


@dataclass
class FinetuneStats:
    examples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0        # truncation="drop", or nothing left to train on after truncation


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]                # IGNORE where no loss


def encode_chat(tokenizer, messages: list[dict]) -> Example:
    """``tokenizer`` is a ``tokenizers.Tokenizer``; ids equal ``apply_chat_template`` with CHATML_TEMPLATE, except
    that special-token strings inside message content stay plain text (:func:`mpt.chatml.text_pieces`): a
    chat that writes ``<|im_end|>`` in a message must not teach the model to end (or forge) turns with it.

    Trained: each assistant turn's content and its ``<|im_end|>``, not its role header or the newline after
    it. The mask comes from the tokens' character offsets into the rendered text, so it needs no special
    tokens."""
    turns = [(m["role"], m["content"]) for m in messages]
    text, spans = render_chatml(turns)
    pieces = text_pieces(chatml_segments(turns), special_strings(tokenizer))
    ids, offsets, at = [], [], 0
    for piece, enc in zip(pieces, tokenizer.encode_batch(pieces, add_special_tokens=False), strict=True):
        ids += enc.ids
        offsets += [(at + a, at + b) for a, b in enc.offsets]
        at += len(piece)
    labels = []
    for tid, (start, end) in zip(ids, offsets, strict=True):
        # a token is trained when it lies in a trained span; offsets may be trimmed of spaces, so use its start
        trained = any(a <= start < b or (start == end and a < start <= b) for a, b in spans)
        labels.append(tid if trained else IGNORE)
    return Example(ids, labels)


def encode_prompt_response(tokenizer, prompt: str, response: str, eos_id: int) -> Example:
    """Prompt and response tokenized separately, then joined with EOS appended; loss on the response and EOS."""
    p = tokenizer.encode(prompt, add_special_tokens=False).ids
    r = tokenizer.encode(response, add_special_tokens=False).ids + [eos_id]
    return Example(list(p) + r, [IGNORE] * len(p) + r)


def _check_record(record: object, where: str) -> str:
    if isinstance(record, dict) and "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataInputError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
        for i, m in enumerate(msgs):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise DataInputError(f"{where}: messages[{i}] = {str(m)[:80]!r} needs string fields 'role' and "
                                     "'content'")
        return "chat"
    if isinstance(record, dict) and isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str):
        return "prompt_response"
    fields = ", ".join(map(repr, record)) if isinstance(record, dict) else type(record).__name__
    raise DataInputError(f"{where}: expected string fields 'prompt' and 'response', or a 'messages' list; the "
                         f"record has {fields}. Convert the file to one of these two formats")


def load_finetune(path: str | Path, tokenizer, eos_id: int, cfg: FinetuneConfig | None = None
                  ) -> tuple[list[Example], FinetuneStats]:
    """Tokenize a jsonl file of prompt/response or chat records; over-long ones follow ``cfg.truncation``."""
    cfg = cfg or FinetuneConfig()
    cfg.validate()
    stats, out = FinetuneStats(), []
    for lineno, record in read_json_lines(path):
        where = f"{path}:{lineno}"
        stats.examples += 1
        if _check_record(record, where) == "chat":
            ex = encode_chat(tokenizer, record["messages"])
        else:
            ex = encode_prompt_response(tokenizer, record["prompt"], record["response"], eos_id)
        if len(ex.input_ids) > cfg.max_seq_len:
            if cfg.truncation == "error":
                raise DataInputError(f"{where}: {len(ex.input_ids)} tokens is more than max_seq_len="
                                     f"{cfg.max_seq_len}; raise max_seq_len or set truncation (data.truncation "
                                     "in a recipe) to 'truncate' or 'drop'")
            if cfg.truncation == "drop":
                stats.dropped_too_long += 1
                continue
            ex = Example(ex.input_ids[:cfg.max_seq_len], ex.labels[:cfg.max_seq_len])
            if all(label == IGNORE for label in ex.labels):
                stats.dropped_too_long += 1   # the prompt alone filled the window: nothing to learn
                continue
            stats.truncated += 1
        stats.kept += 1
        out.append(ex)
    return out, stats


def pad_collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, labels (IGNORE on padding), attention_mask."""
    n = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, :len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, :len(e.labels)] = torch.tensor(e.labels)
        mask[i, :len(e.input_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _check_fits(index: int, length: int, seq_len: int) -> None:
    if length > seq_len:
        raise ValueError(f"example {index} has {length} tokens, more than seq_len={seq_len}; "
                         "load it with FinetuneConfig(max_seq_len=seq_len) so it is truncated or dropped")


def plan_packing(lengths: list[int], seq_len: int) -> list[list[int]]:
    """Group example indices into rows of at most ``seq_len`` tokens (best-fit decreasing).

    Each example, longest first, goes to the row it fills most tightly; this wastes a few per cent
    of a row where packing in file order (next-fit) wastes far more. Deterministic for given lengths.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (tokens left, row), sorted so bisect finds the tightest fit
    for i in order:
        n = lengths[i]
        _check_fits(i, n, seq_len)
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            rows.append([i])
            left, row = seq_len - n, len(rows) - 1
        else:
            left, row = free.pop(k)
            rows[row].append(i)
            left -= n
        bisect.insort(free, (left, row))
    return rows


def collate_packed(rows: list[list[Example]], pad_id: int, width: int | None = None) -> dict[str, torch.Tensor]:
    """input_ids, labels and sequence_id (-1 on padding) for rows of examples, right-padded to ``width``
    (default: the longest row)."""
    width = width or max(sum(len(e.input_ids) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    seq_id = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        pos = 0
        for k, e in enumerate(row):
            n = len(e.input_ids)
            ids[r, pos:pos + n] = torch.tensor(e.input_ids)
            labels[r, pos:pos + n] = torch.tensor(e.labels)
            labels[r, pos] = IGNORE      # predicting it would use the previous example's last token
            seq_id[r, pos:pos + n] = k
            pos += n
    return {"input_ids": ids, "labels": labels, "sequence_id": seq_id}


def packed_attention_mask(sequence_id: torch.Tensor) -> torch.Tensor:
    """[B, T, T] boolean: query t may attend key s when s <= t and both belong to the same example."""
    same = sequence_id[:, :, None] == sequence_id[:, None, :]
    causal = torch.ones(sequence_id.shape[1], sequence_id.shape[1], dtype=torch.bool,
                        device=sequence_id.device).tril()
    return same & causal & (sequence_id[:, :, None] >= 0)
