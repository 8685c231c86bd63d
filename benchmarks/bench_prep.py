"""`mpt prep` (local engine with 1 and 2 workers; Ray with 1 and 2 workers) beside datatrove's local executor on one generated corpus.

The corpus: jsonl files of generated English-like documents (Zipf-distributed words in sentences and
paragraphs), 5 % exact copies and 5 % near-copies planted. Every contender reads it, applies C4/mC4-style
quality rules, computes MinHash signatures and tokenizes with the GPT-NeoX tokenizer (../shared; a BPE
trained here when absent): ours with `--mc4 --near-dedup` and 2048-token samples; datatrove with JsonlReader,
C4QualityFilter and JsonlWriter, then MinhashDedupSignature (its stage 1 of 4) and DocumentTokenizer, in its own
cached venv (~/.cache/mpt-peers/datatrove). Each runs as a fresh process on the same cores; reports
documents/s, tokens/s, the ratio to datatrove and the peak RSS of the job's largest process (wait4), also at
half the corpus (does it grow with the corpus?). Prints a table, then one JSON line.

    python benchmarks/bench_prep.py [--mb 200] [--workers 2] [--no-ray] [--no-peer]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEOX = REPO.parent / "shared" / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
PEER = Path.home() / ".cache" / "mpt-peers" / "datatrove"

DATATROVE = """
import sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.pipeline.filters import C4QualityFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.tokens import DocumentTokenizer
from datatrove.pipeline.writers import JsonlWriter
corpus, out, tokenizer, files, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
run = dict(tasks=files, workers=workers, skip_completed=False)
# MinhashDedupSignature ends a pipeline (it yields no documents): the filtered documents are written once and
# read by the signature and the tokenizer pipelines, as datatrove's own examples chain their stages.
kept = LocalPipelineExecutor([JsonlReader(corpus, glob_pattern="*.jsonl"), C4QualityFilter(
    filter_no_terminal_punct=False), JsonlWriter(out + "/kept")], logging_dir=out + "/logs-kept", **run)
sigs = LocalPipelineExecutor([JsonlReader(out + "/kept"), MinhashDedupSignature(
    output_folder=out + "/sigs", config=MinhashConfig(num_buckets=14, hashes_per_bucket=9))],
    logging_dir=out + "/logs-sigs", depends=kept, **run)
LocalPipelineExecutor([JsonlReader(out + "/kept"), DocumentTokenizer(
    output_folder=out + "/tokens", tokenizer_name_or_path=tokenizer, eos_token="<|endoftext|>",
    shuffle_documents=False)], logging_dir=out + "/logs-tokens", depends=sigs, **run).run()
"""


def make_corpus(folder: Path, megabytes: float, files: int = 8, seed: int = 0) -> int:
    """Write ``megabytes`` of jsonl over ``files`` files; return the number of documents."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mer", "tin", "sa", "ve", "dor", "an", "ri", "pel", "us", "ta", "gen", "ol", "bi"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(6000)]
    weights = [1 / (i + 1) for i in range(len(words))]
    folder.mkdir(parents=True)
    target, written, docs, recent = int(megabytes * 1e6), 0, 0, []
    outs = [open(folder / f"part-{i:02d}.jsonl", "w") for i in range(files)]
    try:
        while written < target:
            roll = rng.random()
            if recent and roll < 0.05:
                text = rng.choice(recent)  # an exact copy
            elif recent and roll < 0.10:
                toks = rng.choice(recent).split(" ")
                for _ in range(max(1, len(toks) // 50)):  # a few words changed: a near copy
                    toks[rng.randrange(len(toks))] = rng.choice(words)
                text = " ".join(toks)
            else:
                paragraphs = []
                for _ in range(rng.randint(2, 6)):
                    sentences = [" ".join(rng.choices(words, weights, k=rng.randint(6, 18))).capitalize() + "."
                                 for _ in range(rng.randint(3, 7))]
                    paragraphs.append(" ".join(sentences))
                text = "\n".join(paragraphs)
                recent = (recent + [text])[-200:]
            line = json.dumps({"id": str(docs), "text": text}) + "\n"
            outs[docs % files].write(line)
            written += len(line)
            docs += 1
    finally:
        for f in outs:
            f.close()
    return docs


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of the largest process ``cmd``'s process tree waited for."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr.read().decode()[-2000:]}")
    return took, usage.ru_maxrss / 1024


def ours(corpus: Path, out: Path, tokenizer: str, engine: str, workers: int) -> dict:
    cmd = [sys.executable, "-m", "mpt.cli", "prep", *map(str, sorted(corpus.glob("*.jsonl"))), "--out", str(out),
           "--tokenizer", tokenizer, "--seq-len", "2048", "--mc4", "--near-dedup", "--engine", engine,
           "--workers", str(workers), "--no-progress"]
    seconds, rss = timed(cmd)
    summary = json.loads((out / "summary.json").read_text())
    return {"seconds": seconds, "rss_mb": rss, "tokens": summary["document_tokens"],
            "docs_kept": summary["documents_written"]}


def datatrove(corpus: Path, out: Path, tokenizer: str, workers: int) -> dict:
    python = PEER / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "datatrove[processing]>=0.10,<1", "tokenizers", "orjson", "nltk", "spacy"],
                       check=True)
    files = len(list(corpus.glob("*.jsonl")))
    seconds, rss = timed([str(python), "-c", DATATROVE, str(corpus), str(out), tokenizer, str(files), str(workers)])
    tokens = sum(f.stat().st_size for f in (out / "tokens").rglob("*.ds")) // 2  # uint16 ids (vocab < 65,536)
    return {"seconds": seconds, "rss_mb": rss, "tokens": tokens, "docs_kept": None}


def tokenizer_path(work: Path) -> str:
    if NEOX.is_file():
        return str(NEOX.parent)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer, t.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    t.train_from_iterator((json.loads(line)["text"] for line in open(next(work.glob("corpus/*.jsonl")))),
                          trainers.BpeTrainer(vocab_size=8000, special_tokens=["<|endoftext|>"]))
    (work / "tok").mkdir()
    t.save(str(work / "tok" / "tokenizer.json"))
    return str(work / "tok")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=200, help="corpus size in MB (default 200; half of it also runs)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work, tok = Path(tmp), None
        for mb in (args.mb / 2, args.mb):
            corpus = work / f"corpus-{mb:g}"
            docs = make_corpus(corpus, mb)
            if tok is None:
                (work / "corpus").symlink_to(corpus)
                tok = tokenizer_path(work)
            runs = [("mpt prep, local", "local", args.workers)]
            if mb == args.mb and not args.no_ray:
                # the in-process engine (one worker: no pool) is what Ray at one worker is measured against
                runs += [("mpt prep, local, 1 worker", "local", 1)]
                runs += [(f"mpt prep, Ray {w} worker{'s' * (w > 1)}", "ray", w) for w in (1, args.workers)]
            if not args.no_peer:
                runs.append(("datatrove LocalPipelineExecutor", "datatrove", args.workers))
            for name, engine, workers in runs:
                out = work / f"out-{len(rows)}"
                r = (datatrove(corpus, out, str(Path(tok) / "tokenizer.json"), workers) if engine == "datatrove"
                     else ours(corpus, out, tok, engine, workers))
                rows.append({"contender": name, "mb": mb, "docs": docs, **r, "docs_per_s": docs / r["seconds"],
                             "tokens_per_s": (r["tokens"] or 0) / r["seconds"]})
                print(f"[{name}, {mb:g} MB: {r['seconds']:.1f} s]", flush=True)
    print(f"2 cores shared; {args.workers} workers each; mpt prep --mc4 --near-dedup --seq-len 2048 vs datatrove "
          "JsonlReader + C4QualityFilter + MinhashDedupSignature + DocumentTokenizer; GPT-NeoX-20B tokenizer")
    print(f"{'contender':<34} {'MB':>5} {'docs':>8} {'seconds':>8} {'docs/s':>8} {'tokens/s':>10} {'vs datatrove':>13} "
          f"{'peak RSS MB':>12}")
    for r in rows:
        peer = next((p for p in rows if p["contender"].startswith("datatrove") and p["mb"] == r["mb"]), None)
        ratio = f"{r['docs_per_s'] / peer['docs_per_s']:.2f}x" if peer and peer is not r else ""
        print(f"{r['contender']:<34} {r['mb']:>5g} {r['docs']:>8} {r['seconds']:>8.1f} {r['docs_per_s']:>8.0f} "
              f"{r['tokens_per_s']:>10.0f} {ratio:>13} {r['rss_mb']:>12.0f}")
    by = {r["contender"]: r for r in rows if r["mb"] == args.mb}
    ray_vs_local = None
    if "mpt prep, Ray 1 worker" in by:
        ray_vs_local = by["mpt prep, Ray 1 worker"]["seconds"] / by["mpt prep, local, 1 worker"]["seconds"]
        print(f"Ray at 1 worker takes {ray_vs_local:.2f}x the in-process engine's time (local, 1 worker; target <= 1.3x)")
    print(json.dumps({"bench": "prep", "workers": args.workers, "ray1_vs_local1": ray_vs_local, "rows": rows}))


if __name__ == "__main__":
    main()
