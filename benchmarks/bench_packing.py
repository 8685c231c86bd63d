"""Packed against padded finetuning: real (non-pad) tokens trained per second.

Both runs read the shared Dolly/HH finetuning sample through the loop's own data path
(``FinetuneBatches``, GPT-NeoX tokenizer, examples truncated to 512 tokens, so both see the same
examples) and train the same tiny MPT (the mpt-tiny preset: d_model 128, 4 layers, vocab 50,432,
``attn_uses_sequence_id``) with AdamW, fp32, the torch attention backend:

* padded: 8 examples a step, padded to the longest of them (what finetuning did before packing);
* packed: 4 rows of 512 tokens a step, several examples per row, kept apart by ``sequence_id``.

With ``--pretrain`` the same comparison for pretraining on whole documents: the paragraphs of the
shared Great Gatsby text as documents in ``mpt prep --mode docs`` shards, read

* padded: 8 documents a step (the streaming order), each its own row, padded to the longest;
* packed: 4 rows of 512 tokens a step by ``PackedPretrainBatches`` (``data.packing: true``);

and it also times the packed loader alone (rows built per second, no model).

A step is forward, backward and optimizer step, as in the loop. Steps alternate padded / packed so
that load from other processes on a shared machine falls on both alike; the first step of each is
warm-up. Real tokens are the input tokens that belong to an example; padding is not counted.

    python benchmarks/bench_packing.py [--steps 10] [--threads 2] [--pretrain]

Needs ../shared (the sample and the tokenizer). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mpt import MPTForCausalLM
from mpt.presets import load_model_config
from mpt.train.data import FinetuneBatches, PackedPretrainBatches
from mpt.train.recipe import SourceSection

SHARED = Path(__file__).resolve().parents[2] / "shared"
SAMPLE = SHARED / "data" / "finetune" / "dolly_hhrlhf_small.jsonl"
TOKENIZER = SHARED / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
BOOK = SHARED / "data" / "longcontext" / "great_gatsby.txt"
SEQ, PADDED_BATCH, PACKED_ROWS = 512, 8, 4


class PaddedDocuments:
    """Whole documents of docs shards in the streaming order, one per row, padded to the batch's longest."""

    def __init__(self, packed: PackedPretrainBatches, batch: int):
        self.ds, self.batch, self.position = packed.dataset, batch, 0
        self.length, self.pad = self.ds.epoch_length(), packed.pad_id

    def samples_per_epoch(self) -> int:
        return self.length

    def next(self) -> dict[str, torch.Tensor]:
        docs = []
        for _ in range(self.batch):
            doc = self.ds.sample(*self.ds.locate(0, self.position % self.length))[:SEQ]
            docs.append(torch.from_numpy(doc.astype("int64")))
            self.position += 1
        width = max(len(d) for d in docs)
        ids = torch.full((len(docs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(docs), width), dtype=torch.long)
        for i, d in enumerate(docs):
            ids[i, :len(d)], mask[i, :len(d)] = d, 1
        return {"input_ids": ids, "labels": ids.masked_fill(mask == 0, -100), "attention_mask": mask}


def gatsby_docs(folder: Path) -> Path:
    """The novel's paragraphs as documents in docs shards (mpt prep --mode docs)."""
    from mpt.cli import main as mpt

    text = BOOK.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    body = text[text.index("*** START"):text.index("*** END")].split("\n", 1)[1]
    src = folder / "paragraphs.jsonl"
    src.write_text("".join(json.dumps({"text": " ".join(p.split())}) + "\n" for p in body.split("\n\n") if p.strip()))
    out = folder / "docs"
    if mpt(["prep", str(src), "--out", str(out), "--tokenizer", str(TOKENIZER), "--mode", "docs",
            "--no-exact-dedup", "--no-progress"]) != 0:
        raise SystemExit("mpt prep failed")
    return out


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    if "sequence_id" in batch:
        return int((batch["sequence_id"] >= 0).sum())
    return int(batch["attention_mask"].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each kind, after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pretrain", action="store_true", help="whole documents (docs shards) instead of finetuning")
    args = parser.parse_args()
    if not SAMPLE.is_file() or not TOKENIZER.is_file() or not BOOK.is_file():
        raise SystemExit(f"needs the shared finetuning sample, Great Gatsby and tokenizer: {SAMPLE}, {BOOK}, "
                         f"{TOKENIZER}")
    torch.set_num_threads(args.threads)

    def data(packing: bool, batch: int) -> FinetuneBatches:
        return FinetuneBatches(str(SAMPLE), str(TOKENIZER), SEQ, batch, seed=0, rank=0, world=1,
                               log=lambda *_: None, packing=packing, truncation="truncate")

    loader = None
    if args.pretrain:
        tmp = tempfile.TemporaryDirectory()
        docs = gatsby_docs(Path(tmp.name))
        packed = PackedPretrainBatches([SourceSection(str(docs))], SEQ, PACKED_ROWS, 0, 0, 1, log=print)
        start, rows = time.perf_counter(), 0
        while time.perf_counter() - start < 2:
            rows += len(packed.next()["input_ids"])
        loader = {"rows_s": rows / (time.perf_counter() - start)}
        loader["tok_s"] = loader["rows_s"] * SEQ
        print(f"packed loader alone: {loader['rows_s']:,.0f} rows/s ({loader['tok_s']:,.0f} tokens/s)")
        packed = PackedPretrainBatches([SourceSection(str(docs))], SEQ, PACKED_ROWS, 0, 0, 1, log=lambda *_: None)
        runs = {"padded": PaddedDocuments(packed, PADDED_BATCH), "packed": packed}
    else:
        runs = {"padded": data(False, PADDED_BATCH), "packed": data(True, PACKED_ROWS)}
    config = load_model_config("mpt-tiny", max_seq_len=SEQ, attn_config={"attn_uses_sequence_id": True})
    state = None
    models, optims = {}, {}
    for name in runs:
        torch.manual_seed(0)
        models[name] = MPTForCausalLM(config).train()
        state = state or models[name].state_dict()
        models[name].load_state_dict(state)  # the same starting weights
        optims[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4)

    totals = {name: {"seconds": 0.0, "real": 0, "slots": 0, "targets": 0} for name in runs}
    for step in range(args.steps + 1):
        for name, batches in runs.items():
            batch = batches.next()
            start = time.perf_counter()
            loss = models[name](**batch).loss
            loss.backward()
            optims[name].step()
            optims[name].zero_grad(set_to_none=True)
            seconds = time.perf_counter() - start
            if step:  # step 0 is warm-up
                t = totals[name]
                t["seconds"] += seconds
                t["real"] += real_tokens(batch)
                t["slots"] += batch["input_ids"].numel()
                t["targets"] += int((batch["labels"][:, 1:] != -100).sum())

    results = {}
    for name, t in totals.items():
        results[name] = {"real_tok_s": t["real"] / t["seconds"], "target_tok_s": t["targets"] / t["seconds"],
                         "real_fraction": t["real"] / t["slots"], "seconds": t["seconds"],
                         "samples_per_epoch": runs[name].samples_per_epoch()}
    ratio = results["packed"]["real_tok_s"] / results["padded"]["real_tok_s"]
    unit = "documents" if args.pretrain else "examples"
    rows = [(f"padded ({PADDED_BATCH} {unit}/step, to the longest)", results["padded"]),
            (f"packed ({PACKED_ROWS} rows x {SEQ} tokens/step)", results["packed"])]
    header = (f"{'pretrain' if args.pretrain else 'finetune'} step, mpt-tiny, CPU {args.threads} threads", "real tok/s", "trained tok/s",
              "real/slots", "steps/epoch")
    table = [header] + [(label, f"{r['real_tok_s']:,.0f}", f"{r['target_tok_s']:,.0f}", f"{r['real_fraction']:.1%}",
                         f"{r['samples_per_epoch'] // (PADDED_BATCH if 'padded' in label else PACKED_ROWS)}")
                        for label, r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in [table[0], tuple("-" * w for w in widths), *table[1:]]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(f"packed / padded real tokens per second: {ratio:.2f}x (target 1.8x)")
    print(json.dumps({"device": "cpu", "threads": args.threads, "torch": torch.__version__, "steps": args.steps,
                      "mode": "pretrain" if args.pretrain else "finetune", "seq_len": SEQ, "results": results,
                      "ratio": ratio, "packed_loader": loader}))


if __name__ == "__main__":
    main()
