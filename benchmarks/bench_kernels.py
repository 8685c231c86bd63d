"""Small CPU kernel choices the code makes, each timed against the obvious alternative in the same run.

1. Row selection of a 4-D KV buffer (``KVCache.select``, the eval runner's ``take``): advanced indexing
   ``buf[index]`` against ``buf.index_select(0, index)``.
2. Each row's best score and its index (``mpt.infer.sampling._row_max``, greedy decoding): the blocked
   ``amax`` against ``logits.max(dim=-1)``, 8 rows x 50,432.
3. Scoring positions through the vocabulary projection (``mpt.eval.runner._score_rows``): chunks of 128
   positions against one block of all of them.
4. Decode attention of a bfloat16 model on CPU (``mpt.model.cache.attention_dtype``): SDPA over bfloat16 caches
   against float32 ones, 8 rows x 8 heads x 1 query over 155 keys, 8 layers (each its own cache, as in a
   step); only where this CPU has native bfloat16 (elsewhere the code keeps float32 without asking).
5. An int8 vocabulary projection (``mpt.model.quantize.Int8Linear.pack``, after ``prepack_model``): oneDNN's
   int8 matmul over weights packed once against ``torch._int_mm`` over the plain ones, 1 and 8 rows x 512 ->
   50,432, the whole layer (rounding the input per token, rescaling the output).

    python benchmarks/bench_kernels.py [--threads 1] [--repeats 10]

Prints a table, then one JSON line. Medians of interleaved runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from mpt.eval.runner import _score_rows
from mpt.infer.sampling import _row_max
from mpt.model.load import cpu_has_bf16
from mpt.model.quantize import Int8Linear


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pair(ours, theirs, repeats: int) -> tuple[float, float]:
    """Median seconds of each, after a warm-up, measured interleaved so both see the same machine load."""
    ours(), theirs()
    a, b = zip(*[(seconds(ours), seconds(theirs)) for _ in range(repeats)], strict=True)
    return statistics.median(a), statistics.median(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []

    buf = torch.randn(16, 12, 512, 64)  # (rows, heads, cached positions, head_dim)
    index = torch.tensor([0, 2, 3, 5, 7, 8, 11, 13, 14, 15])
    rows.append(("KV buffer 16x12x512x64, keep 10 rows", "buf[index]", "index_select",
                 *pair(lambda: buf[index], lambda: buf.index_select(0, index), args.repeats)))

    logits = torch.randn(8, 50_432)
    rows.append(("best score + index, 8 x 50,432", "blocked amax", "max(dim=-1)",
                 *pair(lambda: _row_max(logits), lambda: logits.max(dim=-1), args.repeats)))

    n, d, vocab = 2048, 256, 50_432
    hidden, head = torch.randn(n, d), torch.nn.Linear(d, vocab, bias=False)
    targets, row_of = torch.randint(0, vocab, (n,)), torch.zeros(n, dtype=torch.long)
    with torch.inference_mode():
        rows.append((f"score {n} positions, d {d}, vocab 50,432", "chunks of 128", "one block",
                     *pair(lambda: _score_rows(hidden, targets, row_of, 1, head, chunk=128),
                           lambda: _score_rows(hidden, targets, row_of, 1, head, chunk=n), args.repeats)))

    if cpu_has_bf16():
        def attention(dtype):
            caches = [(torch.randn(8, 8, 310, 64).to(dtype)[:, :, :155], torch.randn(8, 8, 310, 64).to(dtype)[:, :, :155])
                      for _ in range(8)]
            q, bias = torch.randn(8, 8, 1, 64).to(dtype), torch.randn(1, 8, 1, 155).to(dtype)
            return lambda: [F.scaled_dot_product_attention(q, k, v, attn_mask=bias) for k, v in caches]
        rows.append(("decode attention 8x8x155x64, 8 layers", "bf16 cache", "float32 cache",
                     *pair(attention(torch.bfloat16), attention(torch.float32), args.repeats)))

    weight = torch.randn(50_432, 512)
    plain, packed = Int8Linear(weight, None), Int8Linear(weight, None)
    packed.pack()
    with torch.inference_mode():
        for n in (1, 8):
            x = torch.randn(n, 512)
            rows.append((f"int8 projection {n} x 512 -> 50,432", "packed", "torch._int_mm",
                         *pair(lambda x=x: packed(x), lambda x=x: plain(x), args.repeats)))

    print(f"{'case':42} {'ours':>14} {'ms':>8} {'alternative':>14} {'ms':>8} {'speed-up':>9}")
    for case, ours, theirs, a, b in rows:
        print(f"{case:42} {ours:>14} {a * 1e3:8.3f} {theirs:>14} {b * 1e3:8.3f} {b / a:8.2f}x")
    print(json.dumps({"threads": args.threads, "cases": [
        {"case": c, "ours": o, "ours_ms": a * 1e3, "alternative": t, "alternative_ms": b * 1e3, "speedup": b / a}
        for c, o, t, a, b in rows]}))


if __name__ == "__main__":
    main()
