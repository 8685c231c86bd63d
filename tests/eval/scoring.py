"""What the scoring tests share: an independent float64 computation of scores (a plain forward of each whole
sequence, one at a time, no cache, no batching, no prefix reuse) and a run of one task through evaluate."""

import torch

from mpt.eval import TaskConfig, evaluate
from mpt.eval.tasks import build_prompts, load_task_records

WORDS = "the cat sat on a mat while dogs ran far away from home and birds sang loudly".split()


def _text(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n))


def _ref_ids(tokenizer, p, ctx: str, cont: str):
    """LLM Foundry's recipe: preamble with special tokens, context and continuation without."""
    pre = tokenizer(p.preamble)["input_ids"]
    c = tokenizer(ctx, add_special_tokens=False)["input_ids"]
    return pre + c, tokenizer(cont, add_special_tokens=False)["input_ids"]


def _ref_logprob(ref, ctx_ids, cont_ids):
    ids = torch.tensor([ctx_ids + cont_ids])
    with torch.no_grad():
        logp = torch.log_softmax(ref(ids).logits[0].double(), -1)
    pos = range(len(ctx_ids) - 1, len(ctx_ids) + len(cont_ids) - 1)
    lp = sum(logp[p, t].item() for p, t in zip(pos, cont_ids, strict=True))
    greedy = all(logp[p].argmax().item() == t for p, t in zip(pos, cont_ids, strict=True))
    return lp, greedy


def _run(model, tokenizer, path, **settings):
    task = TaskConfig("t", str(path), **{k: v for k, v in settings.items() if k not in ("batch", "reuse", "window")})
    task.validate()
    out = evaluate(model, tokenizer, [task], batch_size=settings.get("batch", 5), keep_examples=True,
                   progress=False, prefix_reuse=settings.get("reuse", True), max_seq_len=settings.get("window"))
    task_type, recs = load_task_records(task, path)
    prompts = build_prompts(task, task_type, recs, task.num_fewshot[0], prefix_space=True)
    return out, prompts


def _greedy(ref, ids, n):
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = ref(torch.tensor([ids])).logits[0, -1].argmax().item()
            out.append(nxt)
            ids.append(nxt)
    return out
