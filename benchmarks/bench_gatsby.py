"""Long context: The Great Gatsby (about 76k GPT-NeoX tokens) into an MPT-7B-shaped model, then decode.

The book is read by the engine's chunked prefill (``BatchEngine.prefill(rows, chunk)``, the same code
the server and ``generate_ids(prefill_chunk=...)`` use): ``--chunk`` tokens per forward into one
preallocated cache, so the activations and the ALiBi bias of a forward stay bounded (one 76k-token
forward would need a 76k x 76k score matrix per head on the SDPA path); then ``--new-tokens`` greedy
tokens decode after it (compiled on CUDA). Random weights (the shapes are what cost time); bf16 on
CUDA. Reports the prefill time, decode tokens/s and the peak memory. Prints a table, then one JSON line.

    python benchmarks/bench_gatsby.py [--chunk 512] [--new-tokens 64] [--book ...]

benchmarks/bench_gpu.py runs this as its ``gatsby`` section (and at tiny size on CPU with ``--smoke``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def book_ids(book: str | Path, tokenizer: str | Path) -> list[int]:
    from tokenizers import Tokenizer

    text = Path(book).read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    return Tokenizer.from_file(str(tokenizer)).encode(text).ids


def prefill_and_decode(model, ids: list[int], chunk: int, new_tokens: int, compile: bool | None = None) -> dict:
    """Chunked prefill of ``ids`` through the engine, then greedy decode; seconds, tokens/s, peak GiB."""
    from mpt.infer.batching import BatchEngine, Row
    from mpt.infer.sampling import SamplingParams

    device = next(model.parameters()).device
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    engine = BatchEngine(model, None, [], compile=compile)
    row = Row(0, list(ids), SamplingParams(new_tokens))
    # Warm-up: one chunk-sized prompt through the same path, so the timing below holds no first-call costs.
    warm = BatchEngine(model, None, [], compile=compile)
    warm.add([Row(1, list(ids[:chunk]), SamplingParams(2))], reserve=2, chunk=chunk)
    while len(warm):
        warm.step()
    sync()
    start = time.perf_counter()
    prefill = engine.prefill([row], chunk, reserve=new_tokens)
    forwards = 1
    while not prefill.advance():
        forwards += 1
    sync()
    prefill_s = time.perf_counter() - start
    engine.join(prefill)
    engine.step()  # the first token (from the prefill's logits); the first compiled step at this size
    sync()
    start = time.perf_counter()
    while len(engine):
        engine.step()
    sync()
    decode_tok_s = (len(row.out_ids) - 1) / (time.perf_counter() - start)
    return {"tokens": len(ids), "chunk": chunk, "forwards": forwards, "prefill_s": prefill_s,
            "prefill_tok_s": len(ids) / prefill_s, "decode_tok_s": decode_tok_s, "new_tokens": len(row.out_ids),
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--book", default=str(SHARED / "data/longcontext/great_gatsby.txt"))
    parser.add_argument("--tokenizer", default=str(SHARED / "tokenizers/gpt-neox-20b/tokenizer.json"))
    parser.add_argument("--chunk", type=int, default=512, help="prompt tokens per prefill forward")
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gatsby.py needs a CUDA GPU (an MPT-7B-shaped model and a 76k-token prefill); "
                         "benchmarks/bench_gpu.py --smoke --only gatsby runs its path at tiny size on CPU")
    from mpt import MPTForCausalLM
    from mpt.presets import load_model_config

    ids = book_ids(args.book, args.tokenizer)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = MPTForCausalLM(load_model_config("mpt-7b")).to(torch.bfloat16).eval()
    r = prefill_and_decode(model, ids, args.chunk, args.new_tokens)
    print(f"{'book tokens':>12} {'chunk':>6} {'prefill s':>10} {'decode tok/s':>13} {'peak GiB':>9}")
    print(f"{r['tokens']:>12,} {r['chunk']:>6} {r['prefill_s']:>10.2f} {r['decode_tok_s']:>13.1f} "
          f"{r['peak_mem_gib']:>9.1f}")
    print(json.dumps({"device": torch.cuda.get_device_name(), **r}))


if __name__ == "__main__":
    main()
