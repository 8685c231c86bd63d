"""Whole-corpus near-dedup (measurements, not tests): ``python benchmarks/bench_near_dedup.py``.

On a generated corpus with planted near-duplicates (tests/data/planted.py: random-word documents,
copies edited to known Jaccard similarities, some within 0.05 of the threshold): precision and
recall of the staged pipeline (mpt.data.near_dedup) against exact Jaccard of 5-gram shingle sets
at the threshold (target: both >= 0.95), its agreement with datasketch's in-memory MinHashLSH at the
same threshold, num_perm and weights (streaming: query the kept documents; whole-corpus: the same
components), documents/s of the stages in this process at 1 and 4 partitions against datasketch's,
and the peak traced memory of each stage's largest call. A table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests.data.planted: the corpus and the truth

from mpt.data.dedup import DedupConfig  # noqa: E402
from mpt.data.near_dedup import (  # noqa: E402
    bucket_groups,
    candidates,
    confirm,
    lsh_params,
    route,
    signatures,
)
from tests.data.planted import (  # noqa: E402
    datasketch_decisions,
    exact_pairs,
    keep_earliest,
    planted_corpus,
    precision_recall,
)

LEVELS = (1.0, 0.95, 0.9, 0.85, 0.75, 0.7, 0.6, 0.4)


def staged(texts: list[str], cfg: DedupConfig, partitions: int, shards: int, peaks: dict | None = None):
    """The stages one call at a time, as an engine runs them; ``peaks`` collects each stage's largest
    traced allocation above what its call started with (tracemalloc must be on)."""
    def timed(stage, fn, *args):
        if peaks is None:
            return fn(*args)
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = fn(*args)
        peaks[stage] = max(peaks.get(stage, 0), tracemalloc.get_traced_memory()[1] - base)
        return out

    bounds = np.linspace(0, len(texts), partitions + 1).astype(int)
    routed, values = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        sigs = timed("signatures", signatures, texts[lo:hi], cfg)
        values.append(sigs.values)
        routed.append(timed("route", route, sigs.keys, np.arange(lo, hi), shards))
    groups = [timed("bucket_groups", bucket_groups, np.concatenate([r[s] for r in routed])) for s in range(shards)]
    docs = candidates(groups)
    return timed("confirm", confirm, groups, docs, np.concatenate(values)[docs], cfg.threshold)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", type=int, default=8000, help="base documents, each with 0-3 copies")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    args = ap.parse_args()
    cfg = DedupConfig(exact=False, near=True, threshold=args.threshold, num_perm=args.num_perm)
    texts, levels = planted_corpus(args.families, seed=0, levels=LEVELS)
    n = len(texts)
    truth = keep_earliest(n, exact_pairs(texts, cfg.threshold))
    margin = {i for i, lv in enumerate(levels) if lv is None or abs(lv - cfg.threshold) >= 0.1}

    # lsh_params imports datasketch (about 1 s, scipy) and caches the bands: outside every clock
    rows, result = [], {"docs": n, "truth_drop": len(truth), "bands_rows": lsh_params(cfg.threshold, cfg.num_perm)}
    for name, parts in (("stages, 1 partition, 1 shard", 1), ("stages, 4 partitions x 4 shards, in turn", 4)):
        start = time.perf_counter()
        drop = set(staged(texts, cfg, parts, parts).tolist())
        rows.append((name, n / (time.perf_counter() - start), drop))
    ours = rows[0][2]
    assert all(r[2] == ours for r in rows), "the answer depends on the partitioning"
    for name, streaming in (("datasketch MinHashLSH, streaming", True), ("datasketch MinHashLSH, whole corpus", False)):
        start = time.perf_counter()
        drop = datasketch_decisions(texts, cfg, streaming)
        rows.append((name, n / (time.perf_counter() - start), drop))

    tracemalloc.start()
    peaks = {parts: {} for parts in (1, 4)}
    for parts in peaks:
        staged(texts, cfg, parts, parts, peaks[parts])
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    datasketch_decisions(texts, cfg, streaming=True)
    index_peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()

    print(f"{n:,} documents ({args.families:,} bases + planted copies at Jaccard {LEVELS}), threshold "
          f"{cfg.threshold}, num_perm {cfg.num_perm}, bands x rows {result['bands_rows']}; exact answer drops "
          f"{len(truth):,}\n")
    print(f"{'method':38s} {'docs/s':>8s} {'precision':>9s} {'recall':>7s} {'P, margin':>9s} {'R, margin':>9s} "
          f"{'agree':>7s}")
    for name, rate, drop in rows:
        p, r = precision_recall(drop, truth)
        pm, rm = precision_recall(drop & margin, truth & margin)
        agree = sum((i in drop) == (i in ours) for i in range(n)) / n
        print(f"{name:38s} {rate:8.0f} {p:9.4f} {r:7.4f} {pm:9.4f} {rm:9.4f} {agree:7.4f}")
        result[name] = {"docs_per_s": round(rate, 1), "precision": round(p, 4), "recall": round(r, 4),
                        "precision_margin": round(pm, 4), "recall_margin": round(rm, 4), "agree_with_stages": round(agree, 4)}
    print("\n(margin: only the documents planted >= 0.1 from the threshold, and the bases; agree: share of documents with "
          "the stages' keep/drop decision)\n")
    print("copies by planted level: share whose keep/drop decision matches the exact answer")
    for lv in LEVELS:
        idx = [i for i, x in enumerate(levels) if x == lv]
        ok = sum((i in ours) == (i in truth) for i in idx) / max(1, len(idx))
        print(f"  {lv:4.2f}: {ok:.4f} of {len(idx)}")
        result[f"level_{lv}"] = round(ok, 4)
    print("\npeak traced memory of a stage's largest call (MiB), by partitions = shards:")
    print(f"  {'stage':34s} {'1':>7s} {'4':>7s}")
    for stage in peaks[1]:
        print(f"  {stage:34s} {peaks[1][stage] / 2**20:7.1f} {peaks[4][stage] / 2**20:7.1f}")
    print(f"  {'datasketch streaming, whole run':34s} {index_peak / 2**20:7.1f}")
    result["peak_mib"] = {f"{stage}_{parts}": round(v / 2**20, 1) for parts, d in peaks.items() for stage, v in d.items()}
    result["peak_mib"]["datasketch_streaming"] = round(index_peak / 2**20, 1)
    result["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(f"  process max RSS {result['max_rss_mib']} MiB (the whole benchmark: the exact answer, tracemalloc)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
