"""The quickstart's finetuning stage: the pretrained tiny model, chat-tuned with LoRA.

Instruction records (``{prompt, response}``, e.g. the Dolly / HH-RLHF sample, or ``{messages}``)
become ChatML conversations; one in ``HOLDOUT`` is held out. The stage measures what a user of a
chat finetune cares about: the perplexity of the held-out *responses* (the prompt tokens carry no
loss, as in training) before and after, and the replies to a few chat prompts.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .data.readers import read_json_lines

HOLDOUT = 20  # every 20th conversation is held out for the before / after perplexity
CHAT_PROMPTS = ["What is Python?", "Give me three tips for writing clear code.", "What is a list comprehension?"]
# the Dolly template: "...### Instruction:\n{instruction}\n\n### Response:\n" (with optional ### Input)
_DOLLY = re.compile(r"### Instruction:\s*(?P<instruction>.*?)\s*(?:### Input:\s*(?P<input>.*?)\s*)?### Response:\s*$",
                    re.S)


def as_messages(record: dict, where: str) -> list[dict]:
    """A record as a ChatML conversation; an instruction template around the prompt is removed."""
    if "messages" in record:
        return record["messages"]
    if not (isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str)):
        raise ValueError(f"{where}: expected string fields 'prompt' and 'response', or a 'messages' list")
    m = _DOLLY.search(record["prompt"])
    user = record["prompt"].strip()
    if m:
        user = m["instruction"] + (f"\n\n{m['input']}" if m["input"] else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": record["response"].strip()}]


def chat_data(src: str | Path, folder: Path, limit: int | None = None) -> dict[str, int]:
    """Write folder/train.jsonl and folder/validation.jsonl of ``{"messages": [...]}`` lines."""
    folder.mkdir(parents=True, exist_ok=True)
    n = {"train": 0, "validation": 0}
    with open(folder / "train.jsonl", "w") as train, open(folder / "validation.jsonl", "w") as val:
        for lineno, record in read_json_lines(src):
            if limit is not None and sum(n.values()) >= limit:
                break
            where = f"{src}:{lineno}"
            split = "validation" if sum(n.values()) % HOLDOUT == HOLDOUT - 1 else "train"
            (val if split == "validation" else train).write(json.dumps({"messages": as_messages(record, where)})
                                                            + "\n")
            n[split] += 1
    return n


def response_perplexity(model_dir: Path, tokenizer: Path, conversations: Path, max_seq_len: int) -> float:
    """exp(mean loss) over the assistant tokens of held-out conversations (the training loss's targets)."""
    import torch

    from .data.finetune import IGNORE, FinetuneConfig, load_finetune, pad_collate
    from .data.tokenize import load_token_encoder
    from .model.load import load_model

    tok = load_token_encoder(tokenizer)
    examples, _ = load_finetune(conversations, tok.tokenizer, tok.eos_id, FinetuneConfig(max_seq_len, "truncate"))
    model = load_model(model_dir, device="cpu", dtype="float32")
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), 8):
            batch = pad_collate(examples[start:start + 8], tok.eos_id)
            n = int((batch["labels"][:, 1:] != IGNORE).sum())
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"]).loss
            total += float(loss) * n
            count += n
    return math.exp(total / max(count, 1))


def chat_replies(model_dir: Path, prompts: list[str], max_new_tokens: int, seed: int) -> list[dict]:
    """Greedy-free, seeded replies to single-turn chats, rendered as `mpt chat` renders them."""
    from .chatml import END_OF_TURN
    from .infer import load
    from .infer.chat import Message, render

    llm = load(model_dir, device="cpu")
    texts = [render([Message("user", p)], llm.tokenizer) for p in prompts]
    outs = llm.generate(texts, max_new_tokens=max_new_tokens, temperature=0.7, top_k=40, stop=END_OF_TURN,
                        seed=seed)
    return [{"user": p, "assistant": o.text.strip()} for p, o in zip(prompts, outs, strict=True)]
