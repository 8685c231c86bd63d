"""A CI-sized StoryWriter end to end: a tiny ALiBi model pretrained at 128 tokens, then trained on at
1,024 tokens on The Great Gatsby by the recipe configs/train/mpt-tiny-storywriter.yaml (FSDP over 2
gloo ranks under real torchrun, activation checkpointing, micro-batch 1), scored on held-out text of
the novel at 1,024 tokens and at 2,048 (twice the new length: ALiBi extrapolates)."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from mpt.cli import main
from mpt.model.hf import load_pretrained
from mpt.train import load_recipe, train

from .torchrun import finish, torchrun

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "mpt" / "configs" / "train"
HELD_OUT = 0.15


def gatsby_split(book: Path) -> tuple[str, str]:
    """The novel's body (between the Project Gutenberg START and END lines), cut at a paragraph break
    into the training part and the held-out last ``HELD_OUT``."""
    text = book.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    body = text[text.index("*** START"):text.index("*** END")].split("\n", 1)[1].strip()
    cut = body.index("\n\n", int(len(body) * (1 - HELD_OUT)))
    return body[:cut], body[cut:].strip()


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, window: int) -> float:
    """exp(mean next-token loss) over the held-out tokens cut into non-overlapping windows."""
    model.config.max_seq_len = max(model.config.max_seq_len, window)   # ALiBi: no weights tied to the length
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(ids) - window + 1, window):
        chunk = ids[start:start + window][None]
        total += model(input_ids=chunk, labels=chunk).loss.item() * (window - 1)
        count += window - 1
    return math.exp(total / count)


def test_tiny_storywriter_gets_better_at_1024_and_2048_tokens(shared, tmp_path, monkeypatch):
    book = shared / "data" / "longcontext" / "great_gatsby.txt"
    arxiv = shared / "data" / "pretrain" / "arxiv_sample.jsonl"
    if not (book.is_file() and arxiv.is_file()):
        pytest.skip("shared Great Gatsby text or arXiv sample not found")
    monkeypatch.chdir(tmp_path)        # recipe paths are relative to where it runs, as for a user
    for name in ("mpt-tiny-storywriter-base.yaml", "mpt-tiny-storywriter.yaml"):
        shutil.copy(CONFIGS / name, tmp_path / name)

    # the data and a 4,096-token BPE over both corpora (what the recipes' comments say to run)
    Path("data").mkdir()
    Path("data/arxiv4.jsonl").write_text("".join(arxiv.read_text().splitlines(keepends=True)[:4]))
    train_text, held_out = gatsby_split(book)
    Path("data/gatsby-train.txt").write_text(train_text)
    tok = "data/storywriter-tokenizer"
    assert main(["tokenizer", "train", "data/arxiv4.jsonl", "data/gatsby-train.txt", "--out", tok,
                 "--vocab-size", "4096", "--no-progress"]) == 0
    assert main(["prep", "data/arxiv4.jsonl", "--out", "data/storywriter-base-128", "--tokenizer", tok,
                 "--seq-len", "128", "--no-progress"]) == 0
    assert main(["prep", "data/gatsby-train.txt", "--out", "data/gatsby-1024", "--tokenizer", tok,
                 "--seq-len", "1024", "--no-progress"]) == 0

    # stage 1: the base at 128 tokens (one process)
    base_run = train(load_recipe("mpt-tiny-storywriter-base.yaml", []), log=lambda *_: None)
    assert base_run.steps == 40

    # stage 2: the recipe, on 2 ranks under torchrun
    code, out = finish(torchrun(2, "-m", "mpt.cli", "train", "mpt-tiny-storywriter.yaml"), timeout=300)
    assert code == 0, out[-3000:]
    assert "on 2 rank(s)" in out and "1024 tokens" in out
    metrics = [json.loads(line) for line in Path("runs/mpt-tiny-storywriter/metrics.jsonl").read_text().splitlines()
               if line.strip()]
    assert any(m.get("step") == 12 for m in metrics)

    # held-out perplexity: the same tokens for both models, at the new length and past it
    ids = torch.tensor(Tokenizer.from_file(f"{tok}/tokenizer.json").encode(held_out).ids)
    assert len(ids) >= 3 * 2048
    base = load_pretrained("runs/mpt-tiny-storywriter-base/hf", dtype=torch.float32, attn_impl="torch")
    long = load_pretrained("runs/mpt-tiny-storywriter/hf", dtype=torch.float32, attn_impl="torch")
    assert (base.config.max_seq_len, long.config.max_seq_len) == (128, 1024)
    scores = {(name, n): perplexity(m, ids, n) for name, m in (("base", base), ("long", long)) for n in (1024, 2048)}
    print("held-out perplexity:", {f"{k[0]}@{k[1]}": round(v, 1) for k, v in scores.items()})
    for n in (1024, 2048):
        assert scores["long", n] < 0.8 * scores["base", n], scores
    # past the trained length the finetuned model does not fall apart (ALiBi extrapolation)
    assert scores["long", 2048] < 1.1 * scores["long", 1024], scores
