"""Long context on a GPU: The Great Gatsby (about 76k GPT-NeoX tokens) into an MPT-7B-shaped model.

Reports the prefill time of the whole book in one forward pass (FlexAttention: the 76k x 76k ALiBi
bias is never materialised; the release quoted about 20 s on A100s for StoryWriter) and the decode
speed of 64 tokens after it. Random weights (the shapes are what cost time). Prints a table, then one
JSON line.

    python benchmarks/bench_gatsby.py [--book ../shared/data/longcontext/great_gatsby.txt]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mpt import KVCache, MPTForCausalLM
from mpt.presets import load_model_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--book", default=str(SHARED / "data/longcontext/great_gatsby.txt"))
    parser.add_argument("--tokenizer", default=str(SHARED / "tokenizers/gpt-neox-20b/tokenizer.json"))
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gatsby.py needs a CUDA GPU (an MPT-7B-shaped model and a 76k-token prefill)")
    from tokenizers import Tokenizer

    text = Path(args.book).read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    ids = Tokenizer.from_file(args.tokenizer).encode(text).ids
    cfg = load_model_config("mpt-7b", max_seq_len=65536)
    cfg.attn_config["attn_impl"] = "flex"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = MPTForCausalLM(cfg).to(torch.bfloat16).eval()
    prompt = torch.tensor([ids], device="cuda")
    with torch.inference_mode():
        cache = KVCache(cfg.n_layers, capacity=len(ids) + args.new_tokens)
        model(prompt[:, :1024], cache=KVCache(cfg.n_layers), use_cache=True, logits_to_keep=1)  # compile warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = model(prompt, cache=cache, use_cache=True, logits_to_keep=1)
        torch.cuda.synchronize()
        prefill = time.perf_counter() - start
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(args.new_tokens):
            nxt = model(nxt, cache=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        decode = args.new_tokens / (time.perf_counter() - start)
    print(f"{'book tokens':>12} {'prefill s':>10} {'decode tok/s':>13}")
    print(f"{len(ids):>12,} {prefill:>10.2f} {decode:>13.1f}")
    print(json.dumps({"device": torch.cuda.get_device_name(), "tokens": len(ids), "prefill_s": prefill,
                      "decode_tok_s": decode, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}))


if __name__ == "__main__":
    main()
